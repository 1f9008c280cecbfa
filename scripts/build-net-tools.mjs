#!/usr/bin/env node
// Builds the two C programs of the net benchmark and the kernel cross-check (see docs/net.md, docs/bench.md):
// bench/c-baseline/vdpa-net-bench.c (the C loopback driver over vhost-vdpa) and bench/c-baseline/af-packet-net.c
// (frames through the kernel's virtio-net with an AF_PACKET socket) → build/. The lab guest runs this host's
// userland, so binaries built here run there. Skips a binary that is newer than its source.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const SOURCES = join(root, 'bench', 'c-baseline');
export const NET_BENCH_BINARY = join(root, 'build', 'vdpa-net-bench');
export const AF_PACKET_BINARY = join(root, 'build', 'af-packet-net');

/** Compiles what is missing or stale; returns true when both binaries are there. */
export function buildNetTools({
  force = false,
  log = (m) => process.stderr.write(`[net-tools] ${m}\n`),
} = {}) {
  mkdirSync(join(root, 'build'), { recursive: true });
  for (const [source, binary] of [
    [join(SOURCES, 'vdpa-net-bench.c'), NET_BENCH_BINARY],
    [join(SOURCES, 'af-packet-net.c'), AF_PACKET_BINARY],
  ]) {
    if (!force && existsSync(binary) && statSync(binary).mtimeMs >= statSync(source).mtimeMs) continue;
    const args = ['-O2', '-Wall', '-Wextra', '-Werror', '-std=gnu11', '-o', binary, source];
    log(`gcc ${args.join(' ')}`);
    const result = spawnSync('gcc', args, { stdio: 'inherit' });
    if (result.error) log(`cannot run gcc: ${result.error.message} (apt-get install gcc)`);
    if (result.status !== 0) {
      log(`FAILED to build ${binary}`);
      return false;
    }
  }
  return true;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exit(buildNetTools({ force: process.argv.includes('--force') }) ? 0 : 1);
}
