#!/usr/bin/env node
// Compiles every native/*.cc for arm64 (aarch64-linux-gnu-g++) with the
// addon's flags plus -Wall -Wextra -Werror, to an object file that is thrown
// away: warnings, and the arm64-only code (the doorbell's `dmb oshst`), are
// checked on an x86 machine. Needs the cross compiler
// (`apt-get install g++-aarch64-linux-gnu`); without it, says so and exits 0
// unless --require is given (then 1).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const require = createRequire(join(root, 'package.json'));
const compiler = process.env.CXX_AARCH64 ?? 'aarch64-linux-gnu-g++';
const required = process.argv.includes('--require');

const probe = spawnSync(compiler, ['--version'], { encoding: 'utf8' });
if (probe.error !== undefined || probe.status !== 0) {
  console.log(
    `cross-check-arm64: SKIPPED — ${compiler} is not installed, so the addon was NOT checked for arm64. ` +
      'Install it with: apt-get install g++-aarch64-linux-gnu',
  );
  process.exit(required ? 1 : 0);
}

// Node's headers: next to this node binary (official builds), node-gyp's
// download cache, or the distribution's nodejs-dev package.
const version = process.version.slice(1);
const candidates = [
  resolve(dirname(process.execPath), '..', 'include', 'node'),
  join(process.env.HOME ?? '/root', '.cache', 'node-gyp', version, 'include', 'node'),
  '/usr/include/node',
];
const nodeHeaders = candidates.find((dir) => existsSync(join(dir, 'node_api.h')));
if (nodeHeaders === undefined) {
  console.error(
    `cross-check-arm64: no Node headers (node_api.h) in ${candidates.join(', ')}; run npx node-gyp install`,
  );
  process.exit(1);
}
const addonApi = require('node-addon-api').include_dir;

const sources = readdirSync(join(root, 'native'))
  .filter((name) => name.endsWith('.cc'))
  .sort();
const out = mkdtempSync(join(tmpdir(), 'vdpa-arm64-'));
let failed = 0;
try {
  for (const source of sources) {
    const args = [
      '-std=c++17',
      '-fexceptions',
      '-fPIC',
      '-O2',
      '-Wall',
      '-Wextra',
      '-Werror',
      '-Werror=return-type',
      '-DNAPI_VERSION=8',
      '-DNAPI_CPP_EXCEPTIONS',
      '-DNODE_ADDON_API_DISABLE_DEPRECATED',
      `-I${addonApi}`,
      `-I${nodeHeaders}`,
      '-c',
      join(root, 'native', source),
      '-o',
      join(out, `${source}.o`),
    ];
    const result = spawnSync(compiler, args, { encoding: 'utf8' });
    const output = `${result.stdout}${result.stderr}`.trim();
    if (result.status === 0 && output === '') {
      console.log(`ok    native/${source}`);
    } else {
      failed++;
      console.log(`FAIL  native/${source}\n${output}`);
    }
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
console.log(
  `cross-check-arm64: ${sources.length - failed}/${sources.length} files compile for arm64 with -Wall -Wextra -Werror ` +
    `(${probe.stdout.split('\n')[0]}; Node headers ${nodeHeaders})`,
);
process.exit(failed === 0 ? 0 : 1);
