/**
 * One table from an error `code` to what a caller should make of it: a
 * category, the CLI's exit status and the JSON-RPC service's error code. The
 * CLI (lib/cli/output.ts) and the service (lib/service/server.ts) both answer
 * from here, so a failure means the same thing to a script whichever way it
 * reached the library. docs/cli.md lists the table.
 * @module
 */
import { ErrorCodes } from './errors';

/** What kind of failure a code is, from the caller's side. */
export type ErrorCategory =
  | 'usage'
  | 'not-found'
  | 'permission'
  | 'busy'
  | 'timeout'
  | 'unsupported'
  | 'device'
  | 'retry'
  | 'internal'
  | 'failure';

/** What one category means to the CLI and to the service. */
export interface ErrorCategoryInfo {
  /** Exit status of the `vhost-vdpa` command. */
  readonly exitStatus: number;
  /** `error.code` of a JSON-RPC answer (the service's own range, -32000…-32099, or -32602). */
  readonly jsonRpcCode: number;
  /** One line for people (docs, `--help`). */
  readonly meaning: string;
}

/** Every category, with its exit status and JSON-RPC code. Exit statuses and codes are public API: only add. */
export const ERROR_CATEGORIES: Readonly<Record<ErrorCategory, ErrorCategoryInfo>> = {
  failure: { exitStatus: 1, jsonRpcCode: -32000, meaning: 'any other failure' },
  usage: {
    exitStatus: 2,
    jsonRpcCode: -32602,
    meaning: 'bad command line or arguments (unknown option, missing or invalid value)',
  },
  'not-found': {
    exitStatus: 3,
    jsonRpcCode: -32001,
    meaning: 'the device, management device, driver module, file or vdpa family does not exist',
  },
  permission: {
    exitStatus: 4,
    jsonRpcCode: -32003,
    meaning: 'not permitted: needs CAP_NET_ADMIN / root, or the device is read-only',
  },
  busy: {
    exitStatus: 5,
    jsonRpcCode: -32002,
    meaning: 'busy or exists: held open by someone, the name is taken, or a buffer is still in use',
  },
  timeout: { exitStatus: 6, jsonRpcCode: -32004, meaning: 'the kernel or the device did not answer in time' },
  unsupported: {
    exitStatus: 7,
    jsonRpcCode: -32005,
    meaning: 'the kernel, management device or device does not support the operation',
  },
  device: {
    exitStatus: 8,
    jsonRpcCode: -32007,
    meaning: 'the device misbehaved or failed (I/O error, corrupt ring, could not be brought back)',
  },
  retry: {
    exitStatus: 9,
    jsonRpcCode: -32008,
    meaning: 'did not complete because the device was reset to recover; safe to retry',
  },
  internal: {
    exitStatus: 1,
    jsonRpcCode: -32603,
    meaning: 'a bug in this library: an exception that is not a VdpaError',
  },
};

/**
 * The category of every code the library throws (`ErrorCodes`) and of the
 * errno codes that need one; any other code is a `failure`. Every
 * `ErrorCodes` value is listed, so adding a code means deciding its category.
 */
export const ERROR_CODE_CATEGORIES: Readonly<Record<string, ErrorCategory>> = {
  // Validation (thrown before the kernel is asked anything)
  [ErrorCodes.USAGE]: 'usage',
  [ErrorCodes.INVALID_ARG]: 'usage',
  [ErrorCodes.OUT_OF_RANGE]: 'usage',
  [ErrorCodes.MISALIGNED]: 'usage',
  [ErrorCodes.NOT_DMA_MEMORY]: 'usage',
  [ErrorCodes.IOVA_OVERLAP]: 'usage',
  [ErrorCodes.CLOSED]: 'failure',
  [ErrorCodes.MEMLOCK]: 'failure',
  [ErrorCodes.READ_ONLY]: 'permission',
  [ErrorCodes.BUSY]: 'busy',
  [ErrorCodes.WRONG_DRIVER]: 'busy',
  [ErrorCodes.UNSUPPORTED]: 'unsupported',
  [ErrorCodes.DEVICE_UNSUPP]: 'unsupported',
  // The device and the driver core
  [ErrorCodes.NEGOTIATION]: 'device',
  [ErrorCodes.QUEUE_CORRUPT]: 'device',
  [ErrorCodes.DEVICE_FAILED]: 'device',
  [ErrorCodes.RESET]: 'retry',
  [ErrorCodes.TIMEOUT]: 'timeout',
  [ErrorCodes.CHECK_FAILED]: 'device',
  [ErrorCodes.ABORTED]: 'failure',
  // The library itself
  [ErrorCodes.ADDON_LOAD]: 'failure',
  [ErrorCodes.NETLINK_PROTOCOL]: 'failure',
  [ErrorCodes.NETLINK]: 'failure',
  [ErrorCodes.UNEXPECTED]: 'internal',
  // VMM building blocks (lib/vmm)
  [ErrorCodes.INVALID_STATE]: 'usage',
  [ErrorCodes.STATE_MISMATCH]: 'usage',
  // errno codes (from the kernel, or named after one)
  ENODEV: 'not-found',
  ENOENT: 'not-found',
  ENXIO: 'not-found',
  EPERM: 'permission',
  EACCES: 'permission',
  EBUSY: 'busy',
  EEXIST: 'busy',
  EADDRINUSE: 'busy',
  EOPNOTSUPP: 'unsupported',
  ENOTSUPP: 'unsupported',
  ENOTTY: 'unsupported',
  EIO: 'device',
};

/** The category of an error code (`failure` for a code not in the table, or none). */
export function errorCategoryOf(code: string | undefined): ErrorCategory {
  if (code === undefined || !Object.prototype.hasOwnProperty.call(ERROR_CODE_CATEGORIES, code)) {
    return 'failure';
  }
  return ERROR_CODE_CATEGORIES[code] as ErrorCategory;
}

/** The category, exit status and JSON-RPC code of an error code. */
export function classifyErrorCode(code: string | undefined): ErrorCategoryInfo & { category: ErrorCategory } {
  const category = errorCategoryOf(code);
  return { category, ...ERROR_CATEGORIES[category] };
}
