#!/usr/bin/env node
// `npm run pack:check` (CI, after lint): what a user gets from `npm i vhost-vdpa`, checked end to end.
//   1. `npm pack` (prepack builds the prebuilt addons and dist/), then list the tarball's contents and size.
//   2. Install the tarball into an empty directory with no build tools on PATH (only node, npm and sh), so the
//      install must use a prebuilt addon; `require('vhost-vdpa')` there and run its CLI.
//   3. The same install with npm_config_arch=riscv64 (no prebuild matches, no compiler): must fail with the
//      install script's explanation.
//   4. In the lab: examples/blk.js and the CLI from that install, against a real vhost-vdpa device.
// The install lives in .lab/pack-check/ inside the project: the lab guest sees the project read-write at the
// same path, while the host's /tmp is hidden by the guest's own tmpfs /tmp.
// --no-lab skips step 4. --also-node PATH (repeatable) also require()s the install with another node binary,
// e.g. Node 22/24, or an arm64 node (run under qemu-aarch64-static with Debian's arm64 libc in
// /usr/aarch64-linux-gnu, from libc6-arm64-cross): the prebuilt linux-arm64 addon then loads and is called.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.join(ROOT, '.lab', 'pack-check');
const t0 = Date.now();

function log(message) {
  process.stderr.write(`[pack-check] ${((Date.now() - t0) / 1000).toFixed(1)}s ${message}\n`);
}

function fail(message) {
  log(`FAILED: ${message}`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  const res = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  if (res.error) fail(`cannot run ${cmd}: ${res.error.message}`);
  return res;
}

function npmCli() {
  // npm's own entry point, so that npm runs without the directory that holds it (/usr/bin: compilers too).
  const candidates = [
    process.env.npm_execpath,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'),
  ];
  const found = candidates.find((c) => c !== undefined && c.endsWith('.js') && fs.existsSync(c));
  if (found === undefined) fail('cannot find npm-cli.js next to node');
  return found;
}

/** A directory with node and sh only: the PATH of a machine without python3, make or a C/C++ compiler. */
function toolsWithoutCompiler() {
  const dir = path.join(WORK, 'bin');
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, target] of [
    ['node', process.execPath],
    ['sh', '/bin/sh'],
  ]) {
    fs.rmSync(path.join(dir, name), { force: true });
    fs.symlinkSync(target, path.join(dir, name));
  }
  const env = { ...process.env, PATH: dir };
  for (const tool of ['gcc', 'g++', 'cc', 'c++', 'make', 'python3']) {
    if (run('/bin/sh', ['-c', `command -v ${tool}`], { env }).status === 0)
      fail(`${tool} is on the stripped PATH`);
  }
  return env;
}

function pack() {
  log('npm pack (prepack: prebuilt addons for linux-x64 and linux-arm64, TypeScript)');
  const res = run(process.execPath, [npmCli(), 'pack', '--json', '--pack-destination', WORK], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  if (res.status !== 0) fail(`npm pack exited with ${res.status}`);
  const [info] = JSON.parse(res.stdout);
  const tarball = path.join(WORK, info.filename);
  process.stdout.write(
    `${info.filename}: ${info.entryCount} files, ${(info.size / 1024).toFixed(0)} KiB packed, ` +
      `${(info.unpackedSize / 1024).toFixed(0)} KiB unpacked\n`,
  );
  const byTop = new Map();
  for (const f of info.files) {
    const top = f.path.includes('/') ? `${f.path.split('/')[0]}/` : f.path;
    const entry = byTop.get(top) ?? { count: 0, size: 0 };
    byTop.set(top, { count: entry.count + 1, size: entry.size + f.size });
  }
  for (const [top, { count, size }] of byTop)
    process.stdout.write(
      `  ${top.padEnd(16)} ${String(count).padStart(4)} files ${(size / 1024).toFixed(1).padStart(8)} KiB\n`,
    );
  for (const f of info.files.filter((x) => x.path.startsWith('prebuilds/')))
    process.stdout.write(`  ${f.path} (${(f.size / 1024).toFixed(0)} KiB)\n`);
  const paths = new Set(info.files.map((f) => f.path));
  for (const required of [
    'LICENSE',
    'README.md',
    'docs/api/README.md',
    'dist/index.d.ts',
    'prebuilds/linux-x64/vhost-vdpa.glibc.node',
    'prebuilds/linux-arm64/vhost-vdpa.glibc.node',
    'scripts/install.cjs',
    'examples/blk.js',
  ])
    if (!paths.has(required)) fail(`the tarball lacks ${required}`);
  const maps = info.files.filter((f) => f.path.endsWith('.map'));
  if (maps.length > 0) fail(`the tarball has source maps without their sources: ${maps[0].path}…`);
  return tarball;
}

/** The ELF machine of a binary: 'x64', 'arm64' or undefined. */
function elfArch(file) {
  const header = Buffer.alloc(20);
  const fd = fs.openSync(fs.realpathSync(file), 'r');
  fs.readSync(fd, header, 0, 20, 0);
  fs.closeSync(fd);
  return { 0x3e: 'x64', 0xb7: 'arm64' }[header.readUInt16LE(18)];
}

/** require('vhost-vdpa') from `app` with another node (under qemu-user when it is for another architecture). */
function requireWith(nodeBin, app, env) {
  const arch = elfArch(nodeBin);
  const argv = [nodeBin];
  if (arch === 'arm64' && process.arch !== 'arm64')
    argv.unshift('qemu-aarch64-static', '-L', '/usr/aarch64-linux-gnu');
  const script =
    "const v = require('vhost-vdpa'); const n = require('vhost-vdpa/package.json');" +
    'console.log(`${process.version} ${process.arch} (Node-API ${process.versions.napi}): ' +
    "${Object.keys(v).length} exports, PAGE_SIZE ${v.PAGE_SIZE}, addon ${require('node-gyp-build').path(" +
    "require('path').dirname(require.resolve('vhost-vdpa/package.json'))).split('/node_modules/vhost-vdpa/')[1]}`)";
  const res = run(argv[0], [...argv.slice(1), '-e', script], {
    cwd: app,
    env: { ...env, PATH: process.env.PATH },
  });
  process.stdout.write(`  ${argv.join(' ')}: ${(res.stdout + res.stderr).trim()}\n`);
  if (res.status !== 0) fail(`require('vhost-vdpa') with ${nodeBin} failed`);
}

function install(tarball, dir, env) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'package.json'), '{ "private": true }\n');
  return run(
    process.execPath,
    [npmCli(), 'install', '--no-audit', '--no-fund', '--prefer-offline', tarball],
    {
      cwd: dir,
      env,
    },
  );
}

function main() {
  const withLab = !process.argv.includes('--no-lab');
  fs.rmSync(WORK, { recursive: true, force: true });
  fs.mkdirSync(WORK, { recursive: true });
  const tarball = pack();
  const env = toolsWithoutCompiler();

  const app = path.join(WORK, 'app');
  log(
    `npm install ${path.basename(tarball)} into ${path.relative(ROOT, app)} with PATH=${env.PATH} (node, sh)`,
  );
  const res = install(tarball, app, env);
  process.stderr.write(res.stdout + res.stderr);
  if (res.status !== 0) fail(`npm install exited with ${res.status}`);
  const pkgDir = path.join(app, 'node_modules', 'vhost-vdpa');
  if (fs.existsSync(path.join(pkgDir, 'build'))) fail('the install built the addon from source');

  const probe = run(
    process.execPath,
    [
      '-e',
      "const v = require('vhost-vdpa'); const k = Object.keys(v);" +
        "console.log(`require('vhost-vdpa'): ${k.length} exports (${k.slice(0, 4).join(', ')}, …), " +
        "version ${require('vhost-vdpa/package.json').version}`)",
    ],
    { cwd: app, env },
  );
  process.stdout.write(probe.stdout + probe.stderr);
  if (probe.status !== 0) fail("require('vhost-vdpa') failed");
  const version = run(path.join(app, 'node_modules', '.bin', 'vhost-vdpa'), ['--version'], { cwd: app, env });
  if (version.status !== 0) fail(`vhost-vdpa --version exited with ${version.status}: ${version.stderr}`);
  process.stdout.write(`vhost-vdpa --version: ${version.stdout}`);

  log(
    'npm install with npm_config_arch=riscv64: no prebuild matches and no compiler, so it must fail clearly',
  );
  const bad = install(tarball, path.join(WORK, 'app-no-prebuild'), { ...env, npm_config_arch: 'riscv64' });
  if (bad.status === 0) fail('the install without a matching prebuild and without a compiler succeeded');
  if (!/cannot install the native addon[\s\S]*missing: python3, make, g\+\+/.test(bad.stderr))
    fail(`the failed install did not explain itself:\n${bad.stderr}`);
  const explanation = bad.stderr.split('\n').map((l) => l.replace(/^npm error /, ''));
  const first = explanation.findIndex((l) => l.startsWith('vhost-vdpa: cannot install'));
  const last = explanation.findIndex((l) => l.includes('`npm install` again'));
  process.stdout.write(
    `install without a matching prebuild or a compiler fails as it should:\n` +
      `${explanation
        .slice(first, last + 1)
        .map((l) => `  ${l}`)
        .join('\n')}\n`,
  );

  const otherNodes = process.argv.flatMap((a, i) => (a === '--also-node' ? [process.argv[i + 1]] : []));
  if (otherNodes.length > 0) log(`require('vhost-vdpa') with ${otherNodes.length} other node binaries`);
  for (const nodeBin of otherNodes) requireWith(nodeBin, app, env);

  if (withLab) {
    log('in the lab: examples/blk.js and the CLI from the installed package');
    const example = path.join(pkgDir, 'examples', 'blk.js');
    const cli = path.join(app, 'node_modules', '.bin', 'vhost-vdpa');
    const lab = spawnSync(
      process.execPath,
      [path.join(ROOT, 'scripts', 'lab.mjs'), '--', 'sh', '-c', `node "${example}" && "${cli}" dev list`],
      { cwd: ROOT, stdio: 'inherit' },
    );
    if (lab.status !== 0)
      fail(`examples/blk.js from the installed tarball exited with ${lab.status} in the lab`);
  }
  log('ok');
}

main();
