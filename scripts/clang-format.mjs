#!/usr/bin/env node
// Runs clang-format over native/ (C++), bench/ and test/fault-device/ (C): `--check` fails on any
// difference, `--write` rewrites in place.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const mode = process.argv[2] ?? '--check';
if (mode !== '--check' && mode !== '--write') {
  console.error('usage: clang-format.mjs --check|--write');
  process.exit(2);
}

function sources(dir) {
  let entries;
  try {
    entries = readdirSync(join(root, dir), { withFileTypes: true, recursive: true });
  } catch {
    return [];
  }
  return entries
    .filter((e) => e.isFile() && /\.(cc|h|c)$/.test(e.name))
    .map((e) => join(e.parentPath ?? e.path, e.name));
}

const files = [...sources('native'), ...sources('bench'), ...sources('test/fault-device')];
const args = mode === '--check' ? ['--dry-run', '--Werror', ...files] : ['-i', ...files];
const result = spawnSync('clang-format', args, { stdio: 'inherit' });
if (result.error) {
  console.error(`clang-format not found (${result.error.message}): apt-get install clang-format`);
  process.exit(1);
}
process.exit(result.status ?? 1);
