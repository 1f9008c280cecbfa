// Host-side preparation of the lab: Debian packages, the guest kernel, the out-of-tree vDPA simulator
// modules and the busybox initramfs. Everything is cached under ~/.cache/vhost-vdpa/<kernel-release>/ and
// each stage writes a stamp file last, so an interrupted run is redone from the broken stage and a warm
// run costs only a few stat() calls.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, readJson, run, sh, sha256, withLock, writeFileAtomic } from './util.mjs';

const LAB_DIR = path.dirname(fileURLToPath(import.meta.url));

export const CACHE_ROOT = process.env.VHOST_VDPA_CACHE || path.join(os.homedir(), '.cache', 'vhost-vdpa');

/** The Debian meta package whose dependency names the newest 6.12 kernel ABI. */
const KERNEL_META = 'linux-image-6.12-amd64';

/** Host packages: QEMU (+ qemu-storage-daemon), initramfs tools, the guest's tools and the module toolchain. */
export const HOST_PACKAGES = [
  'qemu-system-x86',
  'busybox-static',
  'kmod',
  'cpio',
  'iproute2',
  'fio',
  'xz-utils',
  'gcc-12',
  'make',
  'libc6-dev',
  'libelf1',
  'libssl3',
  'zlib1g',
  'pahole',
];

/**
 * Modules /init loads with insmod before it can reach the host (9p, overlay) plus the vDPA stack that must be
 * present before the devices are created. Only vhost_vdpa is loaded as a vdpa bus driver at that point, so
 * every new device binds to it; virtio_vdpa/virtio_blk/virtio_net are loaded later by guest-run.sh with
 * modprobe (the full module tree is bound into the guest), so tests can rebind a device to virtio_vdpa.
 */
export const EARLY_MODULES = [
  '9p',
  '9pnet_virtio',
  'overlay',
  'vhost_vdpa',
  'vduse',
  'vdpa_sim_blk',
  'vdpa_sim_net',
];
export const LATE_MODULES = ['virtio_vdpa', 'virtio_blk', 'virtio_net'];

/** The only kernel sources needed for the simulator modules Debian does not ship (CONFIG_VDPA_SIM unset). */
const SIM_SOURCES = [
  'drivers/vhost/vringh.c',
  'drivers/vdpa/vdpa_sim/vdpa_sim.c',
  'drivers/vdpa/vdpa_sim/vdpa_sim.h',
  'drivers/vdpa/vdpa_sim/vdpa_sim_blk.c',
  'drivers/vdpa/vdpa_sim/vdpa_sim_net.c',
];
const SIM_MODULES = ['vringh', 'vdpa_sim', 'vdpa_sim_blk', 'vdpa_sim_net'];

const APT_ENV = { DEBIAN_FRONTEND: 'noninteractive' };
// Another apt/dpkg process (e.g. unattended installs) must make us wait, not fail.
const APT_LOCK_OPTS = ['-o', 'DPkg::Lock::Timeout=900'];

/**
 * Makes sure everything the VM needs exists; returns the paths runInLab boots from.
 * @returns {Promise<{kver: string, dir: string, vmlinuz: string, initramfs: string, moduleTree: string}>}
 */
export async function prepare(log = createLogger()) {
  if (process.platform !== 'linux') throw new Error('the lab needs Linux (it boots a Linux guest with QEMU)');
  if (process.getuid?.() !== 0) throw new Error('the lab must run as root (apt-get, 9p export of /, QEMU)');

  await ensurePackages(log);
  let kernel = await resolveKernel(log);
  let assets = assetPaths(kernel);
  if (assetsReady(kernel, assets)) return assets;
  log(
    `first run for kernel ${kernel.kver}: building the lab cache in ${assets.dir} ` +
      '(kernel packages, simulator modules, initramfs; about a minute, once)',
  );

  await withLock(path.join(CACHE_ROOT, '.lock'), log, async () => {
    // Re-checked under the lock: a concurrent run may have finished the work while we waited.
    if (!stampOk(assets.dir, 'kernel', kernel.version)) {
      fs.mkdirSync(assets.dir, { recursive: true });
      if (!(await fetchKernel(log, assets.dir, kernel))) {
        // Stale apt lists name a kernel the mirror no longer has: refresh, re-resolve, retry once.
        await aptUpdate(log);
        kernel = await resolveKernel(log, { force: true });
        assets = assetPaths(kernel);
        fs.mkdirSync(assets.dir, { recursive: true });
        if (!stampOk(assets.dir, 'kernel', kernel.version) && !(await fetchKernel(log, assets.dir, kernel)))
          throw new Error(`apt-get download of kernel ${kernel.kver} (${kernel.version}) failed twice`);
      }
    }
    if (!stampOk(assets.dir, 'modules', kernel.version)) await buildSimModules(log, assets.dir, kernel);
    if (!fs.existsSync(assets.initramfs)) await buildInitramfs(log, assets.dir, kernel, assets.initramfs);
  });
  return assets;
}

/** `12.3s` since t. */
function seconds(t) {
  return `${((Date.now() - t) / 1000).toFixed(1)}s`;
}

function assetPaths({ kver }) {
  const dir = path.join(CACHE_ROOT, kver);
  return {
    kver,
    dir,
    vmlinuz: path.join(dir, 'vmlinuz'),
    initramfs: path.join(dir, `initramfs-${initramfsHash(kver).slice(0, 12)}.cpio`),
    moduleTree: path.join(dir, 'root', 'lib', 'modules', kver),
  };
}

function assetsReady(kernel, assets) {
  return (
    stampOk(assets.dir, 'kernel', kernel.version) &&
    stampOk(assets.dir, 'modules', kernel.version) &&
    fs.existsSync(assets.initramfs)
  );
}

// ---------------------------------------------------------------------------------------------------------
// Packages

async function ensurePackages(log) {
  // dpkg-query exits 1 when a package is unknown to it; such packages are simply absent from stdout.
  const format = '-f=${Package}\t${db:Status-Abbrev}\n';
  const { stdout } = await run('dpkg-query', ['-W', format, ...HOST_PACKAGES], { allowFail: true });
  const installed = new Set(
    stdout
      .split('\n')
      .filter((l) => l.split('\t')[1]?.startsWith('ii'))
      .map((l) => l.split('\t')[0]),
  );
  const missing = HOST_PACKAGES.filter((p) => !installed.has(p));
  if (missing.length === 0) return;
  log(`host packages: ${missing.length} of ${HOST_PACKAGES.length} missing, installing ${missing.join(' ')}`);
  await aptUpdate(log);
  const t = Date.now();
  log(`apt-get install (downloads ${missing.join(' ')} and their dependencies from the Debian mirror)`);
  await run('apt-get', [...APT_LOCK_OPTS, 'install', '-y', '--no-install-recommends', ...missing], {
    env: APT_ENV,
  });
  log(`host packages installed (${seconds(t)})`);
}

let aptUpdated = false;
async function aptUpdate(log) {
  if (aptUpdated) return;
  const t = Date.now();
  log("apt-get update (downloads Debian's package lists)");
  await run('apt-get', [...APT_LOCK_OPTS, 'update'], { env: APT_ENV });
  log(`apt-get update done (${seconds(t)})`);
  aptUpdated = true;
}

// ---------------------------------------------------------------------------------------------------------
// Kernel

/** Newest mtime in the apt lists: the kernel resolution is redone only after an `apt-get update`. */
function aptListsStamp() {
  const dir = '/var/lib/apt/lists';
  let newest = 0;
  try {
    for (const f of fs.readdirSync(dir)) {
      const st = fs.statSync(path.join(dir, f));
      if (st.isFile()) newest = Math.max(newest, st.mtimeMs);
    }
  } catch {
    return 0;
  }
  return newest;
}

/** Resolves the newest 6.12 kernel ABI (e.g. 6.12.117+deb12-amd64) and its package version from apt's lists. */
async function resolveKernel(log, { force = false } = {}) {
  const cacheFile = path.join(CACHE_ROOT, 'kernel.json');
  const listsStamp = aptListsStamp();
  const cached = readJson(cacheFile);
  if (!force && cached && cached.listsStamp === listsStamp && cached.kver && cached.version) return cached;
  log(`resolving ${KERNEL_META} with apt-cache`);

  const query = async () => {
    const dep = await run('apt-cache', ['depends', KERNEL_META], { allowFail: true });
    const kvers = [...dep.stdout.matchAll(/Depends:\s+linux-image-(6\.12\.[^\s]+-amd64)\b/g)].map(
      (m) => m[1],
    );
    if (kvers.length === 0) return undefined;
    kvers.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const kver = kvers.at(-1);
    const show = await run('apt-cache', ['show', '--no-all-versions', `linux-image-${kver}`]);
    const version = /^Version:\s*(\S+)/m.exec(show.stdout)?.[1];
    return version ? { kver, version } : undefined;
  };
  let found = await query();
  if (!found) {
    // A fresh machine (or one whose lists were cleaned) knows no kernel packages yet.
    await aptUpdate(log);
    found = await query();
  }
  if (!found)
    throw new Error(
      `apt-cache cannot resolve ${KERNEL_META}; is bookworm-security (or backports) in sources?`,
    );
  const kabi = found.kver.replace(/-amd64$/, '');
  const result = { ...found, kabi, listsStamp: aptListsStamp() };
  fs.mkdirSync(CACHE_ROOT, { recursive: true });
  writeFileAtomic(cacheFile, JSON.stringify(result, null, 2));
  return result;
}

function stampOk(dir, stage, version) {
  return readJson(path.join(dir, `.stamp-${stage}`))?.version === version;
}

function writeStamp(dir, stage, version, extra = {}) {
  writeFileAtomic(
    path.join(dir, `.stamp-${stage}`),
    JSON.stringify({ version, ...extra, at: new Date().toISOString() }),
  );
}

/**
 * Returns false if apt-get download failed (the caller refreshes apt's lists and retries).
 * Downloads (never installs: installing headers drags in initramfs-tools + udev, ~100 s) the kernel image,
 * headers and kbuild and unpacks them into <dir>/root; extracts only the simulator sources from linux-source.
 */
async function fetchKernel(log, dir, { kver, kabi, version }) {
  const t = Date.now();
  const debs = path.join(dir, 'debs');
  const root = path.join(dir, 'root');
  const src = path.join(dir, 'src');
  fs.rmSync(debs, { recursive: true, force: true });
  fs.mkdirSync(debs, { recursive: true });

  const sourcePkg = `linux-source-${kver.split('.').slice(0, 2).join('.')}`; // linux-source-6.12
  const pkgs = [
    `linux-image-${kver}`,
    `linux-headers-${kver}`,
    `linux-headers-${kabi}-common`,
    `linux-kbuild-${kabi}`,
  ];
  log(`downloading kernel ${kver} (${version}): ${[...pkgs, sourcePkg].join(' ')}`);
  try {
    await run('apt-get', ['download', ...[...pkgs, sourcePkg].map((p) => `${p}=${version}`)], {
      cwd: debs,
      env: APT_ENV,
    });
    const got = fs.readdirSync(debs).map((f) => fs.statSync(path.join(debs, f)).size);
    const mib = got.reduce((a, b) => a + b, 0) / 1048576;
    log(`downloaded ${got.length} packages, ${mib.toFixed(0)} MiB (${seconds(t)})`);
  } catch (e) {
    log(`apt-get download failed: ${e.message.split('\n').slice(-1)[0]}`);
    fs.rmSync(debs, { recursive: true, force: true });
    return false;
  }

  // Only now that the download worked is the old tree (if any) invalidated and replaced: the stamps go
  // first, so an interruption from here on leaves a tree that is known to be incomplete.
  for (const stage of ['kernel', 'modules']) fs.rmSync(path.join(dir, `.stamp-${stage}`), { force: true });
  for (const d of [root, src]) fs.rmSync(d, { recursive: true, force: true });
  log('unpacking kernel packages');
  fs.mkdirSync(root, { recursive: true });
  const files = fs.readdirSync(debs);
  for (const p of pkgs) {
    const deb = files.find((f) => f.startsWith(`${p}_`));
    if (!deb) throw new Error(`apt-get download did not produce ${p}`);
    await run('dpkg-deb', ['-x', path.join(debs, deb), root]);
  }
  // The arch headers' Makefile includes the common headers by absolute path; point it into our tree.
  const hdrMakefile = path.join(root, 'usr/src', `linux-headers-${kver}`, 'Makefile');
  const commonDir = `/usr/src/linux-headers-${kabi}-common`;
  fs.writeFileSync(
    hdrMakefile,
    fs.readFileSync(hdrMakefile, 'utf8').replaceAll(commonDir, path.join(root, commonDir)),
  );

  // linux-source is a 150 MB tarball inside a deb: stream it out of the deb and stop reading once the five
  // files are found (--occurrence), instead of unpacking the whole tree.
  const srcDeb = files.find((f) => f.startsWith(`${sourcePkg}_`));
  if (!srcDeb) throw new Error(`apt-get download did not produce ${sourcePkg}`);
  log(`extracting ${SIM_SOURCES.length} source files from ${sourcePkg}`);
  fs.mkdirSync(src, { recursive: true });
  const tarball = `./usr/src/${sourcePkg}.tar.xz`;
  const members = SIM_SOURCES.map((f) => `${sourcePkg}/${f}`);
  await sh(
    `dpkg-deb --fsys-tarfile "$DEB" | tar -xO "$TARBALL" | tar -xJ --occurrence=1 -C "$SRC" --strip-components=1 ${members
      .map((m) => `'${m}'`)
      .join(' ')}`,
    { env: { DEB: path.join(debs, srcDeb), TARBALL: tarball, SRC: src } },
  );
  for (const f of SIM_SOURCES) {
    if (!fs.existsSync(path.join(src, f))) throw new Error(`${f} missing from ${sourcePkg}`);
  }
  fs.copyFileSync(path.join(root, 'boot', `vmlinuz-${kver}`), path.join(dir, 'vmlinuz'));
  fs.rmSync(debs, { recursive: true, force: true }); // ~300 MB we no longer need
  writeStamp(dir, 'kernel', version);
  log(`kernel ready (${((Date.now() - t) / 1000).toFixed(1)}s)`);
  return true;
}

/** Builds vringh + vdpa_sim{,_blk,_net} against the unpacked headers and adds them to the module tree. */
async function buildSimModules(log, dir, { kver, version }) {
  const t = Date.now();
  const root = path.join(dir, 'root');
  const build = path.join(dir, 'build');
  log(`building ${SIM_MODULES.join(', ')}.ko out of tree`);
  fs.rmSync(build, { recursive: true, force: true });
  fs.mkdirSync(build, { recursive: true });
  for (const f of SIM_SOURCES) fs.copyFileSync(path.join(dir, 'src', f), path.join(build, path.basename(f)));
  fs.writeFileSync(path.join(build, 'Kbuild'), `obj-m += ${SIM_MODULES.map((m) => `${m}.o`).join(' ')}\n`);
  await run('make', [
    '-C',
    path.join(root, 'usr/src', `linux-headers-${kver}`),
    `M=${build}`,
    `-j${Math.max(1, os.availableParallelism?.() ?? os.cpus().length)}`,
    'modules',
  ]);
  const extra = path.join(root, 'lib/modules', kver, 'extra');
  fs.mkdirSync(extra, { recursive: true });
  for (const m of SIM_MODULES) fs.copyFileSync(path.join(build, `${m}.ko`), path.join(extra, `${m}.ko`));
  // modules.dep for both the host-side dependency resolution and modprobe inside the guest.
  await run('depmod', ['-b', root, kver]);
  writeStamp(dir, 'modules', version);
  log(`modules built (${((Date.now() - t) / 1000).toFixed(1)}s)`);
}

// ---------------------------------------------------------------------------------------------------------
// Initramfs

/** The initramfs is rebuilt whenever /init or the module list changes (its file name carries this hash). */
function initramfsHash(kver) {
  return sha256(fs.readFileSync(path.join(LAB_DIR, 'init.sh')), kver, EARLY_MODULES.join(','), '1');
}

/** Lists `insmod` order for `mods` (dependencies first, each once); built-in modules are skipped. */
async function moduleLoadOrder(root, kver, mods) {
  const order = [];
  for (const m of mods) {
    const { stdout } = await run('modprobe', ['-d', root, '-S', kver, '--show-depends', m]);
    for (const line of stdout.split('\n')) {
      const file = /^insmod (\S+)/.exec(line)?.[1];
      if (file && !order.includes(file)) order.push(file);
    }
  }
  return order;
}

async function buildInitramfs(log, dir, { kver }, target) {
  const t = Date.now();
  const root = path.join(dir, 'root');
  const stage = path.join(dir, 'initramfs.tmp');
  log('building initramfs');
  fs.rmSync(stage, { recursive: true, force: true });
  for (const d of [
    'bin',
    'sbin',
    'usr/bin',
    'usr/sbin',
    'proc',
    'sys',
    'dev',
    'etc',
    'lib/modules',
    'newroot',
    'host',
    'lab',
    'upper',
  ])
    fs.mkdirSync(path.join(stage, d), { recursive: true });
  fs.copyFileSync('/bin/busybox', path.join(stage, 'bin/busybox'));
  fs.chmodSync(path.join(stage, 'bin/busybox'), 0o755);
  fs.symlinkSync('busybox', path.join(stage, 'bin/sh'));
  fs.copyFileSync(path.join(LAB_DIR, 'init.sh'), path.join(stage, 'init'));
  fs.chmodSync(path.join(stage, 'init'), 0o755);

  // Also verify now (on the host, with a clear error) that the late modules exist in the tree.
  await moduleLoadOrder(root, kver, LATE_MODULES);
  const order = await moduleLoadOrder(root, kver, EARLY_MODULES);
  const names = [];
  for (const file of order) {
    // busybox insmod passes the image to init_module(), which wants it uncompressed.
    const name = path.basename(file).replace(/\.ko(\.xz|\.zst)?$/, '');
    const out = path.join(stage, 'lib/modules', `${name}.ko`);
    if (file.endsWith('.xz')) await sh(`xz -dc "$F" > "$O"`, { env: { F: file, O: out } });
    else if (file.endsWith('.zst')) await sh(`zstd -dcq "$F" > "$O"`, { env: { F: file, O: out } });
    else fs.copyFileSync(file, out);
    names.push(name);
  }
  fs.writeFileSync(path.join(stage, 'etc/lab-modules'), `${names.join('\n')}\n`);

  // Uncompressed: the kernel unpacks it faster than it would gunzip under TCG, and it is only ~10 MB.
  const tmp = `${target}.tmp-${process.pid}`;
  await sh(`cd "$STAGE" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "$OUT"`, {
    env: { STAGE: stage, OUT: tmp },
  });
  fs.renameSync(tmp, target);
  fs.rmSync(stage, { recursive: true, force: true });
  // Images built for other versions of init.sh are dead weight once nobody boots them; a day's grace keeps
  // a concurrent run of another checkout from losing its image between check and boot.
  for (const f of fs.readdirSync(dir)) {
    const file = path.join(dir, f);
    if (
      /^initramfs-[0-9a-f]+\.cpio$/.test(f) &&
      file !== target &&
      Date.now() - fs.statSync(file).mtimeMs > 86_400_000
    )
      fs.rmSync(file, { force: true });
  }
  log(`initramfs ready: ${names.length} modules (${((Date.now() - t) / 1000).toFixed(1)}s)`);
}
