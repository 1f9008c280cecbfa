/** MAC addresses: parsing what callers pass, formatting what the device reports. */
import { ErrorCodes, VdpaError } from '../errors';
import { MAC_BYTES } from './protocol';

const MAC_PATTERN = /^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$/i;

/**
 * Parses `aa:bb:cc:dd:ee:ff` (or with `-`) or 6 bytes into a new 6-byte array.
 * @throws VdpaError `ERR_INVALID_ARG` naming `what` and the value.
 */
export function parseMac(value: unknown, what: string): Uint8Array {
  if (value instanceof Uint8Array) {
    if (value.length === MAC_BYTES) return Uint8Array.from(value);
    throw new VdpaError(`${what}: a MAC address has ${MAC_BYTES} bytes, got ${value.length}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  if (typeof value !== 'string' || !MAC_PATTERN.test(value)) {
    throw new VdpaError(
      `${what}: ${JSON.stringify(value) ?? String(value)} is not a MAC address; write it as aa:bb:cc:dd:ee:ff`,
      { code: ErrorCodes.INVALID_ARG },
    );
  }
  return Uint8Array.from(value.split(/[:-]/), (byte) => parseInt(byte, 16));
}

/** `aa:bb:cc:dd:ee:ff`. */
export function formatMac(bytes: Uint8Array): string {
  return Array.from(bytes.subarray(0, MAC_BYTES), (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** The group bit (I/G): multicast and broadcast addresses have it. */
export function isMulticast(mac: Uint8Array): boolean {
  return (mac[0] & 1) !== 0;
}
