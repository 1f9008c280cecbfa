/**
 * The library's one Error class. Failures of system calls carry the
 * Node-core-shaped properties (`code`, `errno`, `syscall`, `path`); failures of
 * validation done in TypeScript carry an `ERR_*` code and no errno.
 */
export class VdpaError extends Error {
  /** `'EINVAL'`, `'EBUSY'`, `'ENOTSUPP'` (kernel errno 524) … or an `ERR_*` code for validation failures. */
  readonly code: string;
  /** The positive errno value, when the failure came from the kernel. */
  readonly errno?: number;
  /** The failed call, e.g. `ioctl(VHOST_VDPA_GET_CONFIG)` or `write(IOTLB)`. */
  readonly syscall?: string;
  /** The device (or other file) the call was made on. */
  readonly path?: string;

  constructor(
    message: string,
    options: { code: string; errno?: number; syscall?: string; path?: string; cause?: unknown },
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'VdpaError';
    this.code = options.code;
    if (options.errno !== undefined) this.errno = options.errno;
    if (options.syscall !== undefined) this.syscall = options.syscall;
    if (options.path !== undefined) this.path = options.path;
  }
}

/** Validation error codes raised before the kernel is asked anything. */
export const ErrorCodes = {
  /** An argument has the wrong type or value. */
  INVALID_ARG: 'ERR_INVALID_ARG',
  /** A value is outside the range the device or kernel accepts. */
  OUT_OF_RANGE: 'ERR_OUT_OF_RANGE',
  /** The object was closed or freed. */
  CLOSED: 'ERR_CLOSED',
  /** Memory that is not fd-backed shared memory was offered for DMA. */
  NOT_DMA_MEMORY: 'ERR_NOT_DMA_MEMORY',
  /** An IOVA range overlaps an existing mapping. */
  IOVA_OVERLAP: 'ERR_IOVA_OVERLAP',
  /** An address or size is not aligned as required. */
  MISALIGNED: 'ERR_MISALIGNED',
  /** The device refused a negotiation step (features, status). */
  NEGOTIATION: 'ERR_NEGOTIATION',
  /** The device lacks a feature or operation the caller needs. */
  UNSUPPORTED: 'ERR_UNSUPPORTED',
  /** The memlock budget (RLIMIT_MEMLOCK) would be exceeded. */
  MEMLOCK: 'ERR_MEMLOCK',
  /** A write-type request on a read-only device (VIRTIO_BLK_F_RO) or a device opened read-only. */
  READ_ONLY: 'ERR_READ_ONLY',
  /** The device wrote an impossible value into a used ring (id, length or index). */
  QUEUE_CORRUPT: 'ERR_QUEUE_CORRUPT',
  /** The device answered a request with VIRTIO_BLK_S_UNSUPP. */
  DEVICE_UNSUPP: 'ERR_DEVICE_UNSUPP',
  /**
   * The request was in flight or queued when the driver reset the device to
   * recover (after another request's deadline, a corrupt ring or NEEDS_RESET).
   * It did not complete; it is safe to retry.
   */
  RESET: 'ERR_RESET',
  /** The driver could not bring the device back after a reset: every request rejects with this code. */
  DEVICE_FAILED: 'ERR_DEVICE_FAILED',
  /** A resource is still in use (e.g. a DMA buffer that a queued or in-flight request uses). */
  BUSY: 'ERR_BUSY',
  /** The request's deadline passed (`requestTimeoutMs`); Node-core-shaped errno code. */
  TIMEOUT: 'ETIMEDOUT',
  /** Command-line usage error (CLI). */
  USAGE: 'ERR_USAGE',
  /** The native addon could not be loaded. */
  ADDON_LOAD: 'ERR_ADDON_LOAD',
  /** A netlink answer could not be decoded. */
  NETLINK_PROTOCOL: 'ERR_NETLINK_PROTOCOL',
  /** A netlink operation failed without a more specific errno. */
  NETLINK: 'ERR_NETLINK',
  /** A vdpa device is bound to another bus driver than the operation needs. */
  WRONG_DRIVER: 'ERR_WRONG_DRIVER',
  /** A conformance check (`vhost-vdpa check`) found the device misbehaving. */
  CHECK_FAILED: 'ERR_CHECK_FAILED',
  /** The request's AbortSignal fired (Node's own code for AbortError). */
  ABORTED: 'ABORT_ERR',
  /** An exception that is not a VdpaError reached the CLI (a bug); `--json` output reports it with this code. */
  UNEXPECTED: 'ERR_UNEXPECTED',
  /** An object was used in the wrong state (a VMM backend activated twice, paused when not active …). */
  INVALID_STATE: 'ERR_INVALID_STATE',
  /** A saved device state does not fit the device it is restored on (device type, features, queues, config). */
  STATE_MISMATCH: 'ERR_STATE_MISMATCH',
} as const;

/** True when `error` is a VdpaError (or error-like object) with this `code`. */
export function hasCode(error: unknown, ...codes: string[]): boolean {
  return (
    typeof error === 'object' &&
    error !== null &&
    codes.includes((error as { code?: unknown }).code as string)
  );
}

/**
 * The error a request rejects with when its AbortSignal fires: shaped like
 * Node's own (`name` 'AbortError', `code` 'ABORT_ERR', the signal's reason as
 * `cause`), as `fs.readFile(…, { signal })` rejects.
 */
export function abortError(reason: unknown, what: string): Error {
  const error = new Error(`${what} was aborted`, { cause: reason });
  error.name = 'AbortError';
  (error as Error & { code: string }).code = ErrorCodes.ABORTED;
  return error;
}
