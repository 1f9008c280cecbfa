/**
 * CLI output: aligned tables for people, JSON (bigints as "0x…" strings) for
 * scripts, and exit codes derived from error codes.
 * @module
 */
import { classifyErrorCode, ERROR_CATEGORIES } from '../error-categories';

/** Exit codes scripts can test (the statuses of the table in lib/error-categories.ts). */
export const ExitCode = {
  OK: 0,
  /** Any other failure. */
  FAILURE: ERROR_CATEGORIES.failure.exitStatus,
  /** Bad command line (unknown command/option, missing or invalid argument). */
  USAGE: ERROR_CATEGORIES.usage.exitStatus,
  /** The device, management device, driver or file does not exist (ENODEV, ENOENT, ENXIO). */
  NOT_FOUND: ERROR_CATEGORIES['not-found'].exitStatus,
  /** Not permitted (EPERM, EACCES): run as root. */
  PERMISSION: ERROR_CATEGORIES.permission.exitStatus,
  /** Busy or already exists (EBUSY, EEXIST): someone holds the device, or the name is taken. */
  BUSY: ERROR_CATEGORIES.busy.exitStatus,
  /** The kernel or a device node did not answer in time (ETIMEDOUT). */
  TIMEOUT: ERROR_CATEGORIES.timeout.exitStatus,
  /** The kernel or device does not support the operation (EOPNOTSUPP, ENOTSUPP, ENOTTY). */
  UNSUPPORTED: ERROR_CATEGORIES.unsupported.exitStatus,
  /** The device misbehaved or failed (EIO, ERR_QUEUE_CORRUPT, ERR_DEVICE_FAILED). */
  DEVICE: ERROR_CATEGORIES.device.exitStatus,
  /** Interrupted by a device reset (ERR_RESET): safe to retry. */
  RETRY: ERROR_CATEGORIES.retry.exitStatus,
} as const;

/** The exit code for an error code (the table in lib/error-categories.ts, shared with the service). */
export function exitCodeFor(code: string | undefined): number {
  return classifyErrorCode(code).exitStatus;
}

/** "0x1a" for a bigint. */
export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}

/** JSON with bigints as "0x…" strings and undefined fields left out. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? hex(v) : v), 2);
}

/** A left-aligned table with a header row; empty cells print as '-'. */
export function table(headers: string[], rows: (string | number | undefined | null)[][]): string {
  const cells = rows.map((r) => r.map((c) => (c === undefined || c === null || c === '' ? '-' : String(c))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...cells.map(line)].join('\n') + '\n';
}

/** "key: value" lines, keys aligned; undefined values are left out. */
export function keyValues(pairs: [string, string | number | boolean | undefined][], indent = ''): string {
  const shown = pairs.filter(([, v]) => v !== undefined) as [string, string | number | boolean][];
  const width = Math.max(0, ...shown.map(([k]) => k.length));
  return (
    shown.map(([k, v]) => `${indent}${`${k}:`.padEnd(width + 1)} ${String(v)}`.trimEnd()).join('\n') + '\n'
  );
}

/** Wraps a long list ("a b c …") to lines of at most `width` characters, indented. */
export function wrapWords(words: string[], indent: string, width = 100): string {
  const lines: string[] = [];
  let current = '';
  for (const w of words) {
    if (current.length > 0 && indent.length + current.length + 1 + w.length > width) {
      lines.push(indent + current);
      current = w;
    } else current = current.length > 0 ? `${current} ${w}` : w;
  }
  if (current.length > 0) lines.push(indent + current);
  return lines.join('\n');
}
