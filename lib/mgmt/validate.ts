/**
 * Argument validation shared by the management client, the CLI and the
 * service: every check throws a VdpaError with code ERR_INVALID_ARG that
 * names the argument and the accepted form.
 * @module
 */
import { ErrorCodes, VdpaError } from '../errors';
import { VDPA_MIN_MTU, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX } from './vdpa-uapi';

function invalid(message: string): VdpaError {
  return new VdpaError(message, { code: ErrorCodes.INVALID_ARG });
}

/**
 * A vdpa device name: it becomes a sysfs directory name, so 1–64 printable
 * characters without '/', whitespace or NUL, and not '.' or '..'.
 */
export function validateDeviceName(name: unknown, what = 'device name'): string {
  if (typeof name !== 'string' || name.length === 0) throw invalid(`${what} must be a non-empty string`);
  if (name.length > 64) throw invalid(`${what} "${name.slice(0, 20)}…" is longer than 64 characters`);
  // eslint-disable-next-line no-control-regex
  if (/[/\s\x00-\x1f\x7f]/.test(name) || name === '.' || name === '..') {
    throw invalid(`${what} ${JSON.stringify(name)} may not contain '/', whitespace or control characters`);
  }
  return name;
}

/** A management device handle: "name" (bus-less, e.g. vdpasim_blk) or "bus/name" (e.g. pci/0000:01:00.2). */
export function parseMgmtdevHandle(handle: unknown): { bus?: string; name: string } {
  if (typeof handle !== 'string' || handle.length === 0) {
    throw invalid('mgmtdev must be a non-empty string such as "vdpasim_blk" or "pci/0000:01:00.2"');
  }
  const parts = handle.split('/');
  // eslint-disable-next-line no-control-regex
  if (parts.length > 2 || parts.some((p) => p.length === 0 || /[\s\x00-\x1f]/.test(p))) {
    throw invalid(`mgmtdev ${JSON.stringify(handle)} must be "name" or "bus/name"`);
  }
  return parts.length === 2
    ? { bus: parts[0] as string, name: parts[1] as string }
    : { name: parts[0] as string };
}

/** A unicast MAC address "xx:xx:xx:xx:xx:xx" → 6 bytes. */
export function parseMac(mac: unknown): Buffer {
  if (typeof mac !== 'string' || !/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(mac)) {
    throw invalid(`mac ${JSON.stringify(mac)} must look like 52:54:00:12:34:56`);
  }
  const bytes = Buffer.from(mac.split(':').map((h) => parseInt(h, 16)));
  if (((bytes[0] as number) & 1) !== 0) throw invalid(`mac ${mac} is a multicast address; use a unicast one`);
  if (bytes.every((b) => b === 0)) throw invalid('mac 00:00:00:00:00:00 is not a valid address');
  return bytes;
}

/** Formats 6 bytes as "xx:xx:xx:xx:xx:xx". */
export function formatMac(bytes: Buffer): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** An integer in [min, max] (accepts decimal or 0x strings, as a CLI passes them). */
export function parseInteger(value: unknown, what: string, min: number, max: number): number {
  let n: number;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'string' && /^(0x[0-9a-fA-F]+|\d+)$/.test(value.trim())) n = Number(value.trim());
  else throw invalid(`${what} must be an integer between ${min} and ${max}, not ${JSON.stringify(value)}`);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw invalid(`${what} must be an integer between ${min} and ${max}, not ${String(value)}`);
  }
  return n;
}

/** MTU for a net device: 68..65535 (the kernel's policy minimum is 68). */
export function parseMtu(value: unknown): number {
  return parseInteger(value, 'mtu', VDPA_MIN_MTU, 0xffff);
}

/** Maximum virtqueue pairs: 1..0x8000. */
export function parseMaxVqPairs(value: unknown): number {
  return parseInteger(value, 'max VQ pairs', 1, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX);
}

/** A 64-bit feature mask (bigint, safe integer, or "0x…"/decimal string). */
export function parseFeatures(value: unknown, what = 'device features'): bigint {
  let n: bigint;
  if (typeof value === 'bigint') n = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) n = BigInt(value);
  else if (typeof value === 'string' && /^(0x[0-9a-fA-F]+|\d+)$/.test(value.trim())) n = BigInt(value.trim());
  else
    throw invalid(`${what} must be a 64-bit mask such as 0x300000000, not ${JSON.stringify(String(value))}`);
  if (n < 0n || n >= 1n << 64n) throw invalid(`${what} ${String(value)} does not fit in 64 bits`);
  return n;
}
