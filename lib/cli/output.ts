/**
 * CLI output: aligned tables for people, JSON (bigints as "0x…" strings) for
 * scripts, and exit codes derived from error codes.
 * @module
 */

/** Exit codes scripts can test. */
export const ExitCode = {
  OK: 0,
  /** Any other failure. */
  FAILURE: 1,
  /** Bad command line (unknown command/option, missing or invalid argument). */
  USAGE: 2,
  /** The device, management device, driver or file does not exist (ENODEV, ENOENT). */
  NOT_FOUND: 3,
  /** Not permitted (EPERM, EACCES): run as root. */
  PERMISSION: 4,
  /** Busy or already exists (EBUSY, EEXIST): someone holds the device, or the name is taken. */
  BUSY: 5,
  /** The kernel or a device node did not answer in time (ETIMEDOUT). */
  TIMEOUT: 6,
  /** The kernel or device does not support the operation (EOPNOTSUPP, ENOTSUPP, ENOTTY). */
  UNSUPPORTED: 7,
} as const;

/** The exit code for an error code. */
export function exitCodeFor(code: string | undefined): number {
  switch (code) {
    case 'ERR_USAGE':
    case 'ERR_INVALID_ARG':
    case 'ERR_OUT_OF_RANGE':
      return ExitCode.USAGE;
    case 'ENODEV':
    case 'ENOENT':
    case 'ENXIO':
      return ExitCode.NOT_FOUND;
    case 'EPERM':
    case 'EACCES':
      return ExitCode.PERMISSION;
    case 'EBUSY':
    case 'EEXIST':
      return ExitCode.BUSY;
    case 'ETIMEDOUT':
      return ExitCode.TIMEOUT;
    case 'EOPNOTSUPP':
    case 'ENOTSUPP':
    case 'ENOTTY':
      return ExitCode.UNSUPPORTED;
    default:
      return ExitCode.FAILURE;
  }
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
