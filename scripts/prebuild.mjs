#!/usr/bin/env node
// `npm run prebuild` (and `npm pack`/`npm publish` through `prepack`): builds the addon for every target the
// tarball ships, into prebuilds/<platform>-<arch>/vhost-vdpa.<libc>.node, where node-gyp-build finds it at load
// time. One binary per target serves every Node.js release: the addon uses Node-API only (NAPI_VERSION=8 in
// binding.gyp; Node 20, 22 and 24 all provide it), never V8 or libuv symbols that change between majors.
//
// Targets: linux-x64 glibc (native) and linux-arm64 glibc (Debian's cross toolchain, g++-aarch64-linux-gnu).
// No musl target: Debian packages musl-gcc for C only (musl-tools), and the addon is C++ — musl users build
// from source (the install script does it when no prebuild loads).
//
// Each target builds in a scratch copy of binding.gyp + native/ so that build/ (the developer's own build,
// which node-gyp-build prefers over prebuilds/) is never overwritten with a foreign architecture.
// VHOST_VDPA_PREBUILD_TARGETS=linux-x64 limits the targets (e.g. on a machine without the cross compiler).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** What each target needs besides node-gyp: a compiler (and strip) for that architecture. */
const TARGETS = {
  'linux-x64': { arch: 'x64', cross: undefined, aptPackage: 'g++' },
  'linux-arm64': { arch: 'arm64', cross: 'aarch64-linux-gnu-', aptPackage: 'g++-aarch64-linux-gnu' },
};

function onPath(tool) {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

function fail(message) {
  process.stderr.write(`prebuild: ${message}\n`);
  process.exit(1);
}

function selectedTargets() {
  const wanted = process.env.VHOST_VDPA_PREBUILD_TARGETS?.split(',').filter(Boolean) ?? Object.keys(TARGETS);
  for (const name of wanted)
    if (!(name in TARGETS)) fail(`unknown target ${name} (known: ${Object.keys(TARGETS).join(', ')})`);
  return wanted;
}

function buildTarget(name) {
  const { arch, cross, aptPackage } = TARGETS[name];
  const cxx = `${cross ?? ''}g++`;
  if (!onPath(cxx))
    fail(
      `${name} needs ${cxx}: apt-get install ${aptPackage} ` +
        `(or VHOST_VDPA_PREBUILD_TARGETS=${
          Object.keys(TARGETS)
            .filter((t) => t !== name && onPath(`${TARGETS[t].cross ?? ''}g++`))
            .join(',') || 'linux-x64'
        } to skip it)`,
    );
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), `vhost-vdpa-prebuild-${name}-`));
  try {
    for (const entry of ['binding.gyp', 'native', 'package.json'])
      fs.cpSync(path.join(ROOT, entry), path.join(scratch, entry), { recursive: true });
    // binding.gyp finds node-addon-api's headers with require() from the build directory.
    fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(scratch, 'node_modules'));
    const env = { ...process.env };
    // Node's own headers are the same for every architecture. Use the running node's installed headers
    // (<prefix>/include/node, as official tarballs and Debian's nodejs-dev lay them out) rather than have
    // node-gyp download them; npm's `nodedir` setting, when set, wins.
    const prefix = path.resolve(path.dirname(process.execPath), '..');
    if (!env.npm_config_nodedir && fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')))
      env.npm_config_nodedir = prefix;
    if (cross !== undefined) {
      Object.assign(env, {
        CC: `${cross}gcc`,
        CXX: `${cross}g++`,
        LINK: `${cross}g++`,
        AR: `${cross}ar`,
        PREBUILD_STRIP_BIN: `${cross}strip`,
      });
    }
    const t0 = Date.now();
    const prebuildify = path.join(ROOT, 'node_modules', 'prebuildify', 'bin.js');
    const args = [prebuildify, '--napi', '--strip', '--tag-libc', '--arch', arch];
    args.push('--target', `node@${process.versions.node}`);
    const res = spawnSync(process.execPath, args, {
      cwd: scratch,
      env,
      stdio: ['ignore', 2, 'inherit'], // build logs on stderr: npm pack --json reads stdout
    });
    if (res.status !== 0) fail(`${name}: prebuildify exited with ${res.status ?? res.signal}`);
    const outDir = path.join(scratch, 'prebuilds', name);
    const files = fs.readdirSync(outDir);
    fs.mkdirSync(path.join(ROOT, 'prebuilds', name), { recursive: true });
    for (const file of files) {
      fs.copyFileSync(path.join(outDir, file), path.join(ROOT, 'prebuilds', name, file));
      const size = fs.statSync(path.join(outDir, file)).size;
      process.stderr.write(
        `prebuild: prebuilds/${name}/${file} (${(size / 1024).toFixed(0)} KiB, ${((Date.now() - t0) / 1000).toFixed(1)}s)\n`,
      );
    }
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

fs.rmSync(path.join(ROOT, 'prebuilds'), { recursive: true, force: true });
for (const name of selectedTargets()) buildTarget(name);
