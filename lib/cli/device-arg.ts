/**
 * The `DEV` argument shared by commands that open a device (`net …`, `check`),
 * and integer options.
 * @module
 */
import { join } from 'node:path';
import { ErrorCodes, VdpaError } from '../errors';
import { findCharDevName } from '../mgmt/sysfs';
import { stringOption, UsageError, type ParsedArgs } from './args';
import type { CliContext } from './context';

/** DEV: a /dev/vhost-vdpa-N path, or a vdpa device name (net0). */
export function devicePath(dev: string, ctx: CliContext): string {
  if (dev.includes('/')) return dev;
  const chardev = findCharDevName(dev, ctx.paths);
  if (chardev === null) {
    throw new VdpaError(
      `"${dev}" has no vhost-vdpa char device: bind it with \`vhost-vdpa dev bind ${dev} vhost_vdpa\``,
      {
        code: ErrorCodes.WRONG_DRIVER,
      },
    );
  }
  return join(ctx.paths.dev, chardev);
}

/** An integer option in [min, max], or `fallback` when absent. */
export function intOption(
  args: ParsedArgs,
  name: string,
  fallback: number,
  min: number,
  max: number,
): number {
  const raw = stringOption(args, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(raw)}`);
  }
  return n;
}
