#!/usr/bin/env node
// npm's `install` hook. In the published package: load the prebuilt addon for this platform
// (prebuilds/<platform>-<arch>/vhost-vdpa.<libc>.node) and stop there — no compiler needed. When none matches
// or it does not load (e.g. musl, or a glibc older than it needs), build from source with node-gyp, and when
// that cannot work either, say what was tried and what to install.
// In a git checkout (or with --build-from-source) it always builds from source: the developer's native/ wins.
// Plain CommonJS without dependencies other than node-gyp-build: it runs before TypeScript is compiled.
'use strict';
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
// node-gyp-build honours npm's --arch (npm_config_arch) when it picks a prebuild; so do our messages.
const ARCH = process.env.npm_config_arch || process.arch;

function libc() {
  const header = process.report?.getReport().header;
  return header?.glibcVersionRuntime ? `glibc ${header.glibcVersionRuntime}` : 'musl (no glibc)';
}

/** The prebuilt binaries this package ships, e.g. ['linux-x64/vhost-vdpa.glibc.node']. */
function shippedPrebuilds() {
  const dir = path.join(ROOT, 'prebuilds');
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir)
    .flatMap((tuple) => fs.readdirSync(path.join(dir, tuple)).map((f) => `${tuple}/${f}`));
}

/** Returns undefined when a prebuild loaded, or why it did not. */
function tryPrebuild() {
  process.env.PREBUILDS_ONLY = '1'; // read by node-gyp-build when it is loaded: skip build/
  let file;
  try {
    file = require('node-gyp-build').path(ROOT);
  } catch {
    return `none matches ${process.platform}-${ARCH} ${libc()}`;
  }
  try {
    const addon = require(file);
    if (typeof addon.pageSize !== 'function') return `${path.relative(ROOT, file)} is not this addon`;
    process.stdout.write(`vhost-vdpa: using the prebuilt addon ${path.relative(ROOT, file)}\n`);
    return undefined;
  } catch (error) {
    return `${path.relative(ROOT, file)} did not load: ${error.message.split('\n')[0]}`;
  }
}

function onPath(tool) {
  return spawnSync('sh', ['-c', `command -v "${tool}"`], { stdio: 'ignore' }).status === 0;
}

/** node-gyp: the one npm runs its hooks with, else ours (devDependency), else PATH. */
function nodeGypCommand() {
  const npmNodeGyp = process.env.npm_config_node_gyp;
  if (npmNodeGyp && fs.existsSync(npmNodeGyp)) return [process.execPath, npmNodeGyp];
  try {
    return [process.execPath, require.resolve('node-gyp/bin/node-gyp.js')];
  } catch {
    return ['node-gyp'];
  }
}

function sourceBuild(whyNotPrebuilt) {
  const cxx = process.env.CXX || 'g++';
  const missing = ['python3', 'make', cxx].filter((tool) => !onPath(tool.split(' ')[0]));
  let failure;
  if (missing.length > 0)
    failure = `needs python3, make and a C++17 compiler; missing: ${missing.join(', ')}`;
  else {
    const [cmd, ...args] = nodeGypCommand();
    const res = spawnSync(cmd, [...args, 'rebuild'], { cwd: ROOT, stdio: 'inherit' });
    if (res.status === 0) return 0;
    failure = `the source build (node-gyp rebuild) failed with ${res.status ?? res.signal}: see its output above`;
  }
  const shipped = shippedPrebuilds();
  process.stderr.write(
    [
      'vhost-vdpa: cannot install the native addon.',
      `  prebuilt binaries: ${shipped.length > 0 ? shipped.map((f) => `prebuilds/${f}`).join(', ') : 'none in this package'}`,
      `    for this machine (${process.platform}-${ARCH}, ${libc()}, Node ${process.version}): ${whyNotPrebuilt}`,
      `  source build: ${failure}`,
      '  Fix: install the build tools (Debian/Ubuntu: apt-get install python3 make g++; Alpine: apk add python3',
      '  make g++; Fedora/RHEL: dnf install python3 make gcc-c++) and run `npm install` again.',
      '',
    ].join('\n'),
  );
  return 1;
}

function main() {
  const fromSource =
    process.env.npm_config_build_from_source === 'true' || fs.existsSync(path.join(ROOT, '.git'));
  if (fromSource) return sourceBuild('not tried (a git checkout, or --build-from-source)');
  const whyNot = tryPrebuild();
  return whyNot === undefined ? 0 : sourceBuild(whyNot);
}

process.exitCode = main();
