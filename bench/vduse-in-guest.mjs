#!/usr/bin/env node
// The guest side of `npm run bench:vduse` (scripts/bench-vduse.mjs boots the lab and runs this as root in the
// project root): VDUSE block exports side by side in one boot, each serving its own file on a tmpfs —
//   qsd   qemu-storage-daemon --export vduse-blk (libvduse, C)
//   ours  `vhost-vdpa vduse blk --file …` (this package's VduseBlockDevice, as a user starts it: its own process,
//         the device in a Worker)
//   ref   the same CLI from another build (--ref-cli DIST/cli/main.js), for before/after comparisons of device
//         changes in one boot; `npm run bench` does not use it
// and drives each with the kernel's virtio-blk (virtio_vdpa + fio) and with this package's BlockDevice
// (vhost_vdpa + bench/blk-bench.ts, interrupt mode). Exporters alternate order per round. Writes one JSON
// document; nothing here asserts a target.
//
//   node bench/vduse-in-guest.mjs --out FILE [--seconds 4] [--ramp 1] [--rounds 2] [--qds 1,32]
//        [--rws randread,randwrite] [--drivers kernel,ours] [--exporters qsd,ours] [--size-mib 256]
//        [--queue-size 128] [--warmup-ios 200] [--ref-cli FILE] [--cpu-prof DIR]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  JS_BENCH,
  KERNEL_FIO,
  ROOT,
  cpuHasPku,
  failure,
  fromFio,
  gitCommit,
  jsonLines,
  lastJsonDocument,
  log,
  readFirstLine,
  run,
  vhostChardev,
} from './guest-lib.mjs';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const TMPFS = '/run/vduse-bench';
const EXPORTERS = ['qsd', 'ours', 'ref'];
const DRIVERS = ['kernel', 'ours'];

function parseArgs(argv) {
  const o = {
    out: undefined,
    seconds: 4,
    ramp: 1,
    rounds: 2,
    qds: [1, 32],
    rws: ['randread', 'randwrite'],
    drivers: DRIVERS,
    exporters: ['qsd', 'ours'],
    sizeMiB: 256,
    queueSize: 128,
    warmupIos: 200,
    refCli: undefined,
    cpuProf: undefined,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    const number = (min) => {
      const v = Number(value());
      if (!Number.isFinite(v) || v < min) throw new Error(`${a} needs a number ≥ ${min}`);
      return v;
    };
    if (a === '--out') o.out = value();
    else if (a === '--seconds') o.seconds = number(0.1);
    else if (a === '--ramp') o.ramp = number(0);
    else if (a === '--rounds') o.rounds = Math.floor(number(1));
    else if (a === '--qds') o.qds = value().split(',').map(Number);
    else if (a === '--rws') o.rws = value().split(',');
    else if (a === '--drivers') o.drivers = value().split(',');
    else if (a === '--exporters') o.exporters = value().split(',');
    else if (a === '--size-mib') o.sizeMiB = Math.floor(number(1));
    else if (a === '--queue-size') o.queueSize = Math.floor(number(4));
    else if (a === '--warmup-ios') o.warmupIos = Math.floor(number(0));
    else if (a === '--ref-cli') o.refCli = path.resolve(value());
    else if (a === '--cpu-prof') o.cpuProf = path.resolve(value());
    else throw new Error(`unknown option ${a}`);
  }
  if (!o.out) throw new Error('--out FILE is required');
  for (const e of o.exporters) if (!EXPORTERS.includes(e)) throw new Error(`unknown exporter ${e}`);
  for (const d of o.drivers) if (!DRIVERS.includes(d)) throw new Error(`unknown driver ${d}`);
  if (o.exporters.includes('ref') && !o.refCli) throw new Error('exporter ref needs --ref-cli FILE');
  for (const q of o.qds) if (!Number.isInteger(q) || q < 1) throw new Error(`bad queue depth ${q}`);
  for (const r of o.rws) if (r !== 'randread' && r !== 'randwrite') throw new Error(`bad --rws entry ${r}`);
  return o;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function must(cmd, args, what, timeoutSec = 60) {
  const res = await run(cmd, args, timeoutSec);
  if (res.code !== 0) throw new Error(`${what}: ${failure(cmd, res).error}`);
  return res.stdout.trim();
}

/** Waits for `file` to exist (a VDUSE device node), failing early when `alive()` turns false. */
async function waitFor(file, alive, what, timeoutMs = 60_000) {
  const t0 = Date.now();
  while (!fs.existsSync(file)) {
    if (!alive()) throw new Error(`${what} exited before creating ${file}`);
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`${what} did not create ${file} in ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** A long-running exporter process: its stdout/stderr go to a log file; `exited` resolves with its status. */
function startProcess(cmd, args, logFile) {
  const out = fs.openSync(logFile, 'w');
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', out] });
  let stdout = '';
  child.stdout.on('data', (d) => {
    stdout += d;
    fs.appendFileSync(logFile, d);
  });
  const state = { child, exitCode: undefined, stdout: () => stdout };
  state.exited = new Promise((resolve) =>
    child.on('close', (code, signal) => {
      fs.closeSync(out);
      state.exitCode = code ?? signal;
      resolve(state.exitCode);
    }),
  );
  return state;
}

/**
 * Starts one exporter on `file` as vdpa device `name`, attached (bound to whatever bus driver is loaded;
 * each measurement rebinds it). Resolves with {name, kind, version, stop()}.
 */
async function startExporter(kind, name, file, o, logDir) {
  const logFile = path.join(logDir, `${name}.log`);
  if (kind === 'qsd') {
    const p = startProcess(
      'qemu-storage-daemon',
      [
        '--blockdev',
        `driver=file,node-name=disk,filename=${file}`,
        '--export',
        `type=vduse-blk,id=exp,node-name=disk,name=${name},writable=on,num-queues=1,queue-size=${o.queueSize}`,
      ],
      logFile,
    );
    await waitFor(`/dev/vduse/${name}`, () => p.exitCode === undefined, 'qemu-storage-daemon');
    await must('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vduse'], `vdpa dev add ${name}`);
    const version = (await run('qemu-storage-daemon', ['--version'], 30)).stdout.split('\n')[0].trim();
    return {
      kind,
      name,
      version,
      command: 'qemu-storage-daemon (vduse-blk export, aio=threads default)',
      async stop() {
        await run('vdpa', ['dev', 'del', name], 60);
        p.child.kill('SIGTERM');
        return p.exited;
      },
    };
  }
  const cli = kind === 'ref' ? o.refCli : CLI;
  const node = [];
  if (o.cpuProf) node.push('--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`);
  const args = [
    'vduse',
    'blk',
    '--name',
    name,
    '--file',
    file,
    '--queue-size',
    String(o.queueSize),
    '--json',
  ];
  const p = startProcess(process.execPath, [...node, cli, ...args], logFile);
  const t0 = Date.now();
  let summary;
  // --json prints one pretty-printed object once the device is attached.
  while (!(summary = lastJsonDocument(p.stdout()))) {
    const why =
      p.exitCode !== undefined
        ? `exited ${p.exitCode}`
        : Date.now() - t0 > 120_000
          ? 'printed no summary in 120 s'
          : undefined;
    if (why !== undefined) {
      p.child.kill('SIGTERM');
      await p.exited;
      const tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-5).join(' | ');
      throw new Error(`${path.relative(ROOT, cli)} vduse blk ${why}: ${tail}`);
    }
    await sleep(100);
  }
  return {
    kind,
    name,
    version: kind === 'ref' ? `${path.relative(ROOT, cli)}` : 'this tree',
    command: `node ${path.relative(ROOT, cli)} ${args.join(' ')}`,
    pid: summary.pid,
    features: summary.features,
    async stop() {
      p.child.kill('SIGTERM');
      return p.exited;
    },
  };
}

/** fio on the kernel's virtio-blk: binds to virtio_vdpa once, one fio process runs every configuration. */
async function kernelRuns(exporter, o, round, record) {
  const configs = o.rws.length * o.qds.length;
  const timeout = configs * (o.seconds + o.ramp) + 90;
  try {
    const disk = await must('sh', [KERNEL_FIO, 'to-virtio', exporter.name], `to-virtio ${exporter.name}`);
    const args = [KERNEL_FIO, 'fio', disk, o.rws.join(','), o.qds.join(',')];
    const res = await run('sh', [...args, String(o.seconds), String(o.ramp)], timeout);
    const fio = lastJsonDocument(res.stdout);
    if (res.code !== 0 || !fio?.jobs) throw new Error(failure('fio', res).error);
    for (const job of fio.jobs) {
      const rw = job['job options'].rw;
      record('kernel', rw, Number(job['job options'].iodepth), round, fromFio(fio, rw, job));
    }
  } catch (e) {
    record('kernel', o.rws.join(','), o.qds.join(','), round, { error: e.message });
  } finally {
    await must('sh', [KERNEL_FIO, 'to-vhost', exporter.name], `to-vhost ${exporter.name}`);
  }
}

/**
 * This package's BlockDevice over vhost-vdpa, interrupt mode, the plain `await disk.readInto` loop: one
 * blk-bench.js process runs every configuration (a node start costs seconds under TCG).
 */
async function oursRuns(exporter, o, round, record) {
  const configs = o.rws.length * o.qds.length;
  // blk-bench.js bounds each warm-up at 120 s.
  const timeout = configs * (o.seconds + o.ramp + Math.min(120, o.warmupIos / 20)) + 90;
  try {
    const device = vhostChardev(exporter.name);
    const args = [
      '--device',
      device,
      '--rw',
      o.rws.join(','),
      '--qd',
      o.qds.join(','),
      '--mode',
      'interrupt',
    ];
    args.push('--seconds', String(o.seconds), '--ramp', String(o.ramp), '--warmup-ios', String(o.warmupIos));
    const res = await run(process.execPath, ['--expose-gc', JS_BENCH, ...args], timeout);
    const lines = jsonLines(res.stdout);
    for (const r of lines) record('ours', r.rw, r.qd, round, r);
    if (res.code !== 0 || lines.length !== configs) throw new Error(failure('blk-bench.js', res).error);
  } catch (e) {
    record('ours', o.rws.join(','), o.qds.join(','), round, { error: e.message });
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const doc = {
    environment: {
      kernel: os.release(),
      cmdline: readFirstLine('/proc/cmdline'),
      cpus: os.cpus().length,
      cpuModel: os.cpus()[0]?.model,
      pku: cpuHasPku(),
      memoryMiB: Math.round(os.totalmem() / 2 ** 20),
      node: process.version,
      fio: (await run('fio', ['--version'], 30)).stdout.trim() || null,
      date: new Date().toISOString(),
      commit: gitCommit(),
      seconds: o.seconds,
      ramp: o.ramp,
      rounds: o.rounds,
      warmupIos: o.warmupIos,
      sizeMiB: o.sizeMiB,
      queueSize: o.queueSize,
      backing: `one ${o.sizeMiB} MiB file per exporter on a tmpfs (${TMPFS}), filled with zeroes first`,
      guestLoadBefore: os.loadavg().map((v) => v.toFixed(2)),
    },
    exporters: [],
    results: [],
    failures: [],
  };
  const save = () => fs.writeFileSync(o.out, `${JSON.stringify(doc, null, 2)}\n`);
  const record = (exporter) => (driver, rw, qd, round, r) => {
    const entry = { ...r, exporter, driver, rw, qd, round, config: `${driver} ${rw} qd${qd}` };
    doc.results.push(entry);
    if (r.error) {
      doc.failures.push(`${exporter} ${entry.config} (round ${round}): ${r.error}`);
      log(`${exporter} ${entry.config}: FAILED ${r.error}`);
    } else {
      log(`${exporter} ${entry.config}: ${Math.round(r.iops)} IOPS, p50 ${r.p50_us} µs, p99 ${r.p99_us} µs`);
    }
    save();
  };

  const mounted = () => fs.readFileSync('/proc/mounts', 'utf8').includes(` ${TMPFS} `);
  if (mounted()) await must('umount', [TMPFS], 'umount a stale tmpfs');
  fs.mkdirSync(TMPFS, { recursive: true });
  const tmpfsMiB = o.exporters.length * o.sizeMiB + 64;
  await must('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsMiB}M`, 'tmpfs', TMPFS], 'mount tmpfs');
  const logDir = path.join(TMPFS, 'logs');
  fs.mkdirSync(logDir);
  await must('modprobe', ['vduse'], 'modprobe vduse');

  const exporters = [];
  try {
    for (const kind of o.exporters) {
      const name = `vb-${kind}`;
      const file = path.join(TMPFS, `${kind}.img`);
      // Allocated (zero-filled) pages, not holes: both exporters then read and write real tmpfs pages.
      await must(
        'dd',
        ['if=/dev/zero', `of=${file}`, 'bs=1M', `count=${o.sizeMiB}`, 'status=none'],
        `fill ${file}`,
      );
      log(`starting ${kind} as ${name} on ${file} …`);
      const e = await startExporter(kind, name, file, o, logDir);
      exporters.push(e);
      doc.exporters.push({ kind, name, version: e.version, command: e.command, features: e.features });
    }
    save();
    for (let round = 1; round <= o.rounds; round++) {
      // Alternate the exporters' order per round: drift on the shared host hits both alike.
      const order = round % 2 === 1 ? exporters : [...exporters].reverse();
      for (const e of order) {
        const rec = record(e.kind);
        // Alternate the drivers too, so neither always runs right after the other's rebind.
        const drivers = round % 2 === 1 ? o.drivers : [...o.drivers].reverse();
        for (const d of drivers) {
          log(
            `round ${round}: ${e.kind} with ${d === 'kernel' ? 'the kernel (virtio_vdpa + fio)' : 'our BlockDevice'} …`,
          );
          if (d === 'kernel') await kernelRuns(e, o, round, rec);
          else await oursRuns(e, o, round, rec);
        }
      }
    }
  } catch (e) {
    doc.failures.push(e.message);
    log(`ERROR: ${e.message}`);
  } finally {
    for (const e of exporters) {
      const code = await e.stop();
      if (code !== 0) doc.failures.push(`${e.kind} exporter exited ${code} on SIGTERM`);
    }
    for (const f of fs.readdirSync(logDir)) {
      const text = fs.readFileSync(path.join(logDir, f), 'utf8').trim();
      const x = doc.exporters.find((e) => `${e.name}.log` === f);
      if (x && text) x.log = text.split('\n').slice(-20);
    }
    doc.environment.guestLoadAfter = os.loadavg().map((v) => v.toFixed(2));
    save();
    if (mounted()) await run('umount', [TMPFS], 30);
  }
  log(`wrote ${o.out}${doc.failures.length ? `; ${doc.failures.length} failure(s)` : ''}`);
  return doc.failures.length ? 1 : 0;
}

main().then(
  (code) => (process.exitCode = code),
  (e) => {
    log(`ERROR: ${e.message}`);
    process.exitCode = 2;
  },
);
