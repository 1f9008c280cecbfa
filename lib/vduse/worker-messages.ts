/**
 * Messages between {@link VduseBlockDevice} (the caller's thread) and the
 * Worker that serves the device (lib/vduse/blk-worker.ts).
 * @module
 * @internal
 */
import { ErrorCodes, VdpaError } from '../errors';

/** What the worker needs to create and serve the device (workerData). */
export interface BlkWorkerConfig {
  name: string;
  /** RAM disk size in bytes, or undefined for a file. */
  ramBytes?: number;
  /** RAM disk content (default zeros). */
  fill?: 'zero' | 'sectors';
  file?: string;
  /** Create or grow the file to this size. */
  fileSize?: number;
  queues: number;
  queueSize: number;
  readOnly: boolean;
  packed: boolean;
  serial: string;
  blkSize: number;
  faults: string[];
  vendorId: number;
  /** Destroy a device of the same name left by a daemon that died. */
  replaceStale: boolean;
}

/** Caller → worker. */
export type ToWorker = { type: 'stop' } | { type: 'resize'; bytes: number } | { type: 'stats'; id: number };

/** A VdpaError flattened for postMessage. */
export interface ErrorData {
  message: string;
  code?: string;
  errno?: number;
  syscall?: string;
  path?: string;
}

/** Worker → caller. */
export type FromWorker =
  | {
      type: 'ready';
      features: string;
      capacity: number;
      store: string;
      /** What start-up did about a stale device of this name, if there was one. */
      staleRecovered?: string;
    }
  | { type: 'failed'; error: ErrorData }
  | { type: 'log'; line: string }
  | { type: 'broken'; error: ErrorData }
  | { type: 'stats'; id: number; stats: Record<string, number> }
  | { type: 'resized'; capacity: number }
  | { type: 'stopped'; error?: ErrorData };

export function errorData(error: unknown): ErrorData {
  const e = error as Partial<VdpaError>;
  const out: ErrorData = { message: e.message ?? String(error) };
  if (typeof e.code === 'string') out.code = e.code;
  if (typeof e.errno === 'number') out.errno = e.errno;
  if (typeof e.syscall === 'string') out.syscall = e.syscall;
  if (typeof e.path === 'string') out.path = e.path;
  return out;
}

export function toError(data: ErrorData): VdpaError {
  return new VdpaError(data.message, {
    code: data.code ?? ErrorCodes.UNEXPECTED,
    ...(data.errno === undefined ? {} : { errno: data.errno }),
    ...(data.syscall === undefined ? {} : { syscall: data.syscall }),
    ...(data.path === undefined ? {} : { path: data.path }),
  });
}
