/**
 * Validation of BlockDevice requests, before the device sees anything: every
 * failure is a VdpaError naming the request and what to do.
 * @module
 */
import { abortError, ErrorCodes, VdpaError } from '../errors';
import { hasBit } from '../features';
import type { BlkConfig } from '../virtio-config';
import type { RequestOptions } from './options';

/** What range checks read from the device (a BlockDevice: no object is built per request). */
export interface RangeTarget {
  readonly path: string;
  readonly logicalBlockSize: number;
  readonly capacity: number;
  readonly readOnly: boolean;
  readonly config: BlkConfig;
  readonly features: bigint;
}

/** `data` must be a Uint8Array (a Buffer is one). */
export function checkBuffer(data: unknown): VdpaError | undefined {
  if (!(data instanceof Uint8Array)) {
    return new VdpaError('data must be a Buffer or Uint8Array', { code: ErrorCodes.INVALID_ARG });
  }
  return undefined;
}

/** An AbortSignal, if given, must be one; an aborted one fails the request at once (Node's AbortError). */
export function checkSignal(what: string, options: RequestOptions | undefined): Error | undefined {
  const signal = options?.signal;
  if (signal === undefined) return undefined;
  if (!(signal instanceof AbortSignal)) {
    return new VdpaError(`${what}: signal must be an AbortSignal`, { code: ErrorCodes.INVALID_ARG });
  }
  return signal.aborted ? abortError(signal.reason, what) : undefined;
}

/** Offset and length: integers, block-aligned, inside the capacity; writes not on a read-only device. */
export function checkRange(
  device: RangeTarget,
  kind: string,
  offset: number,
  length: number,
  writes: boolean,
): VdpaError | undefined {
  // The hot path is one small test (inlined into every request); the messages are built out of line.
  const block = device.logicalBlockSize;
  if (
    Number.isSafeInteger(offset) &&
    offset >= 0 &&
    Number.isSafeInteger(length) &&
    length > 0 &&
    offset % block === 0 &&
    length % block === 0 &&
    offset + length <= device.capacity &&
    !(writes && device.readOnly)
  ) {
    return undefined;
  }
  return rangeError(device, kind, offset, length);
}

/** Why {@link checkRange} refused a request. */
function rangeError(device: RangeTarget, kind: string, offset: number, length: number): VdpaError {
  const path = device.path;
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) {
    return new VdpaError(
      `${kind}: offset must be a non-negative integer and length a positive integer (got offset ${String(offset)}, ` +
        `length ${String(length)})`,
      { code: ErrorCodes.INVALID_ARG, path },
    );
  }
  const block = device.logicalBlockSize;
  if (offset % block !== 0 || length % block !== 0) {
    return new VdpaError(
      `${kind} of ${length} bytes at offset ${offset} is not aligned to the ${block}-byte logical block size`,
      { code: ErrorCodes.MISALIGNED, path },
    );
  }
  const capacity = device.capacity;
  if (offset + length > capacity) {
    return new VdpaError(
      `${kind} of ${length} bytes at offset ${offset} ends beyond the device capacity of ${capacity} bytes`,
      { code: ErrorCodes.OUT_OF_RANGE, path },
    );
  }
  return new VdpaError(
    `${kind} of ${length} bytes at offset ${offset} refused: ${path} is read-only` +
      (device.config.readOnly ? ' (VIRTIO_BLK_F_RO)' : ' (opened with readOnly)'),
    { code: ErrorCodes.READ_ONLY, path },
  );
}

/** A request type that needs a feature the device did not negotiate. */
export function requireFeature(
  device: RangeTarget,
  kind: string,
  feature: number,
  name: string,
): VdpaError | undefined {
  if (hasBit(device.features, feature)) return undefined;
  return new VdpaError(`${kind} is not supported by ${device.path}: ${name} was not negotiated`, {
    code: ErrorCodes.UNSUPPORTED,
    path: device.path,
  });
}
