/**
 * Helpers of the management device suites: iproute2 and sysfs as the
 * reference, the in-process CLI, and temporary devices that are always deleted.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { defaultContext, type CliContext } from '../../lib/cli/context';
import { runCli } from '../../lib/cli/run';
import { VdpaManager } from '../../lib/mgmt/vdpa';
import { testDevices } from './helpers';

/** Fails (never skips) when the lab's devices are not there. */
export function requireLab(): void {
  if (testDevices().length === 0) {
    throw new Error(
      'no lab devices (VDPA_LAB_DEVICES / /run/vdpa-lab.json): run these tests with `npm test` or scripts/lab.mjs',
    );
  }
}

/** `vdpa -j ARGS` (iproute2), parsed. */
export function iproute2<T>(...args: string[]): T {
  return JSON.parse(execFileSync('vdpa', ['-j', ...args], { encoding: 'utf8' })) as T;
}

/** Runs the CLI in this process; returns exit code and output. */
export async function cli(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const ctx: CliContext = {
    ...defaultContext(),
    stdout: (t) => {
      out += t;
    },
    stderr: (t) => {
      err += t;
    },
  };
  const code = await runCli(argv, ctx);
  return { code, out, err };
}

/** Runs the built executable (dist-test/lib/cli/main.js) as a separate process. */
export function cliProcess(
  prefix: string[],
  ...argv: string[]
): { status: number | null; stdout: string; stderr: string } {
  const main = path.join(__dirname, '..', '..', 'lib', 'cli', 'main.js');
  const command = [...prefix, process.execPath, main, ...argv];
  const r = spawnSync(command[0] as string, command.slice(1), { encoding: 'utf8', timeout: 120000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Entries of a sysfs/dev directory matching a pattern. */
export function entries(dir: string, pattern: RegExp): string[] {
  return fs
    .readdirSync(dir)
    .filter((e) => pattern.test(e))
    .sort();
}

/** Open file descriptors of this process. */
export function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Deletes a temporary device if it exists (ignoring "not found"). */
export async function removeIfPresent(manager: VdpaManager, name: string): Promise<void> {
  if (fs.existsSync(`/sys/bus/vdpa/devices/${name}`)) await manager.deleteDevice(name);
}
