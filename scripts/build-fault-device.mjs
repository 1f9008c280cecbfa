#!/usr/bin/env node
// Builds the fault-injecting VDUSE block device the hostile-device suite runs in the lab
// (test/fault-device/faulty-blk.c → build/faulty-blk; see docs/hostile.md). The lab guest's root filesystem is
// this host's, so the binary built here runs there. Skips the build when the binary is newer than the source.
// Exit status 1 (with the compiler's messages) when it does not build: the device suite would fail without it.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
export const FAULT_DEVICE_SOURCE = join(root, 'test', 'fault-device', 'faulty-blk.c');
export const FAULT_DEVICE_BINARY = join(root, 'build', 'faulty-blk');

/** Compiles the fault device if needed; returns true on success. */
export function buildFaultDevice({
  force = false,
  log = (m) => process.stderr.write(`[fault-device] ${m}\n`),
} = {}) {
  if (
    !force &&
    existsSync(FAULT_DEVICE_BINARY) &&
    statSync(FAULT_DEVICE_BINARY).mtimeMs >= statSync(FAULT_DEVICE_SOURCE).mtimeMs
  )
    return true;
  mkdirSync(dirname(FAULT_DEVICE_BINARY), { recursive: true });
  const args = ['-O2', '-Wall', '-Wextra', '-Werror', '-o', FAULT_DEVICE_BINARY, FAULT_DEVICE_SOURCE];
  log(`gcc ${args.join(' ')}`);
  const result = spawnSync('gcc', args, { stdio: 'inherit' });
  if (result.error) log(`cannot run gcc: ${result.error.message} (apt-get install gcc)`);
  if (result.status !== 0) {
    log('FAILED to build the fault device: the hostile-device tests cannot run');
    return false;
  }
  return true;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exit(buildFaultDevice({ force: process.argv.includes('--force') }) ? 0 : 1);
}
