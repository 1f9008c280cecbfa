#!/usr/bin/env node
// The guest side of `npm run bench` (scripts/bench.mjs boots the lab and runs this as root in the project
// root). Runs every configuration on one vdpa_sim_blk device, interleaving the engines per configuration so
// that drift in the (noisy, emulated) machine hits them alike, then the JS heap-growth run, and writes one
// JSON document. Nothing here asserts a target: the numbers are reported, not judged.
//
//   node bench/run-in-guest.mjs --out FILE [--device-name blk0] [--seconds 10] [--ramp 1]
//                               [--heap-ios 1000000] [--qds 1,32] [--rws randread,randwrite]
//                               [--engines ours-irq,ours-poll,c-poll,c-event,kernel] [--cpu-prof DIR] [--pin] [--spin-us 1000]
//                               [--ref-js FILE] [--warmup-ios 20000]
//
// Engines: ours-irq / ours-poll (dist-test/bench/blk-bench.js: this package's BlockDevice), c-poll / c-event
// (bench/c-baseline/vdpa-blk-bench), kernel (bench/kernel-fio.sh: virtio_vdpa + virtio-blk + fio). One
// engine failing is recorded as {error} and the rest still run; the exit status is 1 if anything failed.
// ref-irq / ref-poll run another build's blk-bench.js (--ref-js, e.g. one built from an older commit) in the
// same boot, for A/B comparisons of driver changes on this noisy machine; `npm run bench` does not use them.
// Our engines and the C driver first complete a warm-up, unmeasured, then the ramp, then the window: a driver
// in use is long warmed, and under TCG a 1 s ramp ends before V8 has optimised the hot path (the window then
// measures the JIT compiler). The warm-up is --warmup-ios I/Os at queue depth ≤ 4 and --warmup-ios × QD/4 deeper
// (warmupIosFor): the completion path runs once per batch, not per I/O, so at QD32 it needs 8× the I/Os to be
// called as often — with 20,000 I/Os at QD32, V8 was still compiling the poll loop inside the window (25
// functions, `--trace-opt`). fio (kernel) keeps its time-based ramp: it has nothing to compile. A --ref-js
// build must know --warmup-ios (or run with --warmup-ios 0 for both).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  BENCH_DIR,
  JS_BENCH,
  KERNEL_FIO,
  cpuHasPku,
  failure,
  warmupIosFor,
  fromFio,
  gitCommit,
  hostVcpuUsPerIo,
  LAB_RUN_DIR,
  lastJson,
  lastJsonDocument,
  log,
  readFirstLine,
  run as runOn,
  vhostChardev,
} from './guest-lib.mjs';

const C_BIN = path.join(BENCH_DIR, 'c-baseline', 'vdpa-blk-bench');

// ours-cb-*: the same loop through readIntoCallback()/writeCallback() (no Promise per I/O), an extra column.
const ALL_ENGINES = [
  'ours-irq',
  'ours-poll',
  'ours-cb-irq',
  'ours-cb-poll',
  'c-poll',
  'c-event',
  'kernel',
  'ref-irq',
  'ref-poll',
];

function parseArgs(argv) {
  const o = {
    out: undefined,
    deviceName: 'blk0',
    seconds: 10,
    ramp: 1,
    heapIos: 1_000_000,
    qds: [1, 32],
    rws: ['randread', 'randwrite'],
    engines: ALL_ENGINES.filter((e) => !e.startsWith('ref-') && !e.startsWith('ours-cb-')),
    cpuProf: undefined,
    pin: false,
    spinUs: 1000,
    refJs: undefined,
    refNodeFlags: [],
    rounds: 1,
    warmupIos: 20_000,
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
    else if (a === '--device-name') o.deviceName = value();
    else if (a === '--seconds') o.seconds = number(0.1);
    else if (a === '--ramp') o.ramp = number(0);
    else if (a === '--heap-ios') o.heapIos = Math.floor(number(0));
    else if (a === '--qds') o.qds = value().split(',').map(Number);
    else if (a === '--rws') o.rws = value().split(',');
    else if (a === '--engines') o.engines = value().split(',');
    else if (a === '--cpu-prof') o.cpuProf = value();
    else if (a === '--pin') o.pin = true;
    else if (a === '--spin-us') o.spinUs = number(0);
    else if (a === '--ref-js') o.refJs = path.resolve(value());
    else if (a === '--ref-node-flags') o.refNodeFlags = value().split(' ').filter(Boolean);
    else if (a === '--rounds') o.rounds = Math.floor(number(1));
    else if (a === '--warmup-ios') o.warmupIos = Math.floor(number(0));
    else throw new Error(`unknown option ${a}`);
  }
  if (!o.out) throw new Error('--out FILE is required');
  for (const e of o.engines) if (!ALL_ENGINES.includes(e)) throw new Error(`unknown engine ${e}`);
  if (o.engines.some((e) => e.startsWith('ref-')) && !o.refJs)
    throw new Error('ref-* engines need --ref-js FILE');
  for (const q of o.qds) if (!Number.isInteger(q) || q < 1) throw new Error(`bad queue depth ${q}`);
  for (const r of o.rws) if (r !== 'randread' && r !== 'randwrite') throw new Error(`bad --rws entry ${r}`);
  return o;
}

/** With --pin: the CPU the drivers (ours, C, fio) run on; the simulator's worker gets CPU 0. */
let driverCpu;

/** Runs a command on `driverCpu` when set (see guest-lib.mjs run()). */
const run = (cmd, args, timeoutSec) => runOn(cmd, args, timeoutSec, { cpu: driverCpu });

async function runEngine(engine, o, rw, qd, round) {
  const secs = String(o.seconds);
  const ramp = String(o.ramp);
  // blk-bench.js bounds its warm-up at 120 s; the C driver's takes a few seconds at most.
  const timeout =
    o.seconds + o.ramp + 90 + (engine === 'kernel' ? 0 : 150 + warmupIosFor(o.warmupIos, qd) / 1000);
  if (engine === 'kernel') {
    const res = await run('sh', [KERNEL_FIO, 'run', o.deviceName, rw, String(qd), secs, ramp], timeout);
    const fio = lastJsonDocument(res.stdout);
    if (res.code !== 0 || !fio) return failure('kernel-fio.sh', res);
    return fromFio(fio, rw);
  }
  const device = vhostChardev(o.deviceName);
  const warmupIos = warmupIosFor(o.warmupIos, qd);
  if (engine === 'c-poll' || engine === 'c-event') {
    const mode = engine === 'c-poll' ? 'poll' : 'event';
    const args = ['--device', device, '--rw', rw, '--qd', String(qd), '--seconds', secs, '--ramp', ramp];
    args.push('--warmup-ios', String(warmupIos));
    const label = vcpuLabel(engine, rw, qd, round);
    if (label) args.push('--vcpu-mark', label);
    const res = await run(C_BIN, [...args, '--mode', mode], timeout);
    const r = lastJson(res.stdout);
    return res.code === 0 && r ? withHostCpu(r, label) : failure('vdpa-blk-bench', res);
  }
  const mode = engine.endsWith('-poll') ? 'poll' : 'interrupt';
  const node = ['--expose-gc', ...(engine.startsWith('ref-') ? o.refNodeFlags : [])];
  if (o.cpuProf)
    node.push(
      '--cpu-prof',
      `--cpu-prof-dir=${o.cpuProf}`,
      `--cpu-prof-name=${engine}-${rw}-qd${qd}-r${round}.cpuprofile`,
    );
  const args = ['--device', device, '--rw', rw, '--qd', String(qd), '--seconds', secs, '--ramp', ramp];
  args.push('--mode', mode, '--warmup-ios', String(warmupIos));
  if (engine.startsWith('ours-cb-')) args.push('--api', 'callback');
  if (mode === 'poll') args.push('--spin-us', String(o.spinUs));
  const label = vcpuLabel(engine, rw, qd, round);
  if (label) args.push('--vcpu-mark', label);
  const res = await run(
    process.execPath,
    [...node, engine.startsWith('ref-') ? o.refJs : JS_BENCH, ...args],
    timeout,
  );
  const r = lastJson(res.stdout);
  return res.code === 0 && r ? withHostCpu(r, label) : failure('blk-bench.js', res);
}

/** A label for the host's vCPU times of one run, unique within the boot; undefined outside the lab. */
const vcpuLabel = (engine, rw, qd, round) =>
  fs.existsSync(LAB_RUN_DIR) ? `${engine}-${rw}-qd${qd}-r${round}-${Date.now()}` : undefined;

/**
 * Adds what the run's measured window cost the host's vCPU threads, per I/O: `host_cpu_us_per_io` (all vCPUs)
 * and `host_vcpu_us_per_io` (by vCPU). Under TCG this is the emulation's real cost; the guest's own
 * `cpu_us_per_io` charges a busy thread for time the host did not run it, and a sleeping driver's wake-ups
 * partly to no one (docs/bench.md, "What each vCPU costs the host per I/O").
 */
async function withHostCpu(r, label) {
  const host = label === undefined ? undefined : await hostVcpuUsPerIo(label, r.ios);
  return host ? { ...r, host_cpu_us_per_io: host.total, host_vcpu_us_per_io: host.vcpus } : r;
}

/**
 * --pin: the simulator's kthread ("vDPA sim worker: NAME") on CPU 0, every driver on CPU 1, so that a
 * spinning driver never shares a vCPU with the device it waits for (the guest scheduler otherwise decides,
 * differently from run to run).
 */
async function pinWorker(o) {
  const want = `vDPA sim worker: ${o.deviceName}`;
  for (const pid of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    let comm;
    try {
      comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm !== want) continue;
    const res = await run('taskset', ['-pc', '0', pid], 30);
    if (res.code !== 0) throw new Error(`taskset -pc 0 ${pid} (${want}) failed: ${res.stderr.trim()}`);
    return Number(pid);
  }
  throw new Error(`no kernel thread named "${want}" to pin`);
}

async function environment(o) {
  const fio = await run('fio', ['--version'], 30);
  return {
    kernel: os.release(),
    cmdline: readFirstLine('/proc/cmdline'),
    idle:
      process.env.VDPA_LAB_IDLE ??
      (/\bidle=(\S+)/.exec(readFirstLine('/proc/cmdline') ?? '')?.[1] || 'default'),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model,
    pku: cpuHasPku(),
    memoryMiB: Math.round(os.totalmem() / 2 ** 20),
    node: process.version,
    fio: fio.stdout.trim() || null,
    device: o.deviceName,
    date: new Date().toISOString(),
    seconds: o.seconds,
    ramp: o.ramp,
    // ours-poll: BlockDevice option pollSpinMicros (µs of re-checking before yielding to the event loop).
    pollSpinMicros: o.spinUs,
    rounds: o.rounds,
    // Unmeasured I/Os our engines and the C driver complete before the ramp (JIT warm-up by count).
    warmupIos: o.warmupIos,
    // The commit the results belong to (the lab shares the project tree; `+dirty` when it had changes).
    commit: gitCommit(),
    refJs: o.refJs,
    refNodeFlags: o.refNodeFlags,
  };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const doc = { environment: await environment(o), results: [], heaps: [], failures: [] };
  if (o.pin) {
    if (os.cpus().length < 2) throw new Error('--pin needs at least 2 CPUs');
    doc.environment.pinning = { simulatorWorkerPid: await pinWorker(o), simulatorCpu: 0, driverCpu: 1 };
    driverCpu = 1;
  }
  log(
    `kernel ${doc.environment.kernel}, idle=${doc.environment.idle}, ${doc.environment.cpus} CPUs, ${o.seconds}s per run (+${o.ramp}s ramp)`,
  );
  const save = () => fs.writeFileSync(o.out, `${JSON.stringify(doc, null, 2)}\n`);

  let k = 0;
  for (let round = 1; round <= o.rounds; round++) {
    for (const rw of o.rws) {
      for (const qd of o.qds) {
        // Rotate the engine order per configuration so no engine always runs first (or right after a rebind).
        const order = o.engines.map((_, i) => o.engines[(i + k) % o.engines.length]);
        k++;
        for (const engine of order) {
          log(`${rw} qd${qd} ${engine} …`);
          let r;
          try {
            r = await runEngine(engine, o, rw, qd, round);
          } catch (e) {
            r = { error: e.message };
          }
          // The engine's own `engine`/`mode` fields are kept under `driver`/`mode`; `engine` names the column.
          const entry = { ...r, driver: r.engine, config: `${rw}-qd${qd}`, engine, rw, qd, round };
          doc.results.push(entry);
          if (r.error) {
            doc.failures.push(`${entry.config} ${engine}: ${r.error}`);
            log(`${rw} qd${qd} ${engine}: FAILED ${r.error}`);
          } else {
            log(
              `${rw} qd${qd} ${engine}: ${Math.round(r.iops)} IOPS, p50 ${r.p50_us} µs, p99 ${r.p99_us} µs` +
                (r.thread_cpu_ms
                  ? `; warm-up ${r.warmup_ios} I/Os in ${r.warmup_seconds} s, helper threads ${r.warmup_thread_cpu_ms?.others ?? 0} ms then ${r.thread_cpu_ms.others ?? 0} ms in the window`
                  : ''),
            );
          }
          save();
        }
      }
    }
  }

  // Heap growth in every mode: interrupt and poll, zero-copy (readInto/write on allocBuffer() buffers) and
  // bounce (read() into a new Buffer / write() of an ordinary Buffer), reads and writes; QD32.
  if (o.heapIos > 0 && o.engines.some((e) => e.startsWith('ours'))) {
    doc.heaps = [];
    for (const mode of ['interrupt', 'poll'])
      for (const api of ['zero-copy', 'bounce'])
        for (const rw of ['randread', 'randwrite']) {
          log(`heap growth: ${o.heapIos} I/Os (${rw}, qd 32, ${mode}, ${api}) …`);
          let r;
          try {
            const device = vhostChardev(o.deviceName);
            const args = ['--device', device, '--rw', rw, '--qd', '32', '--mode', mode, '--api', api];
            if (mode === 'poll') args.push('--spin-us', String(o.spinUs));
            args.push('--heap-ios', String(o.heapIos));
            // Generous bound: the rate under TCG is a few hundred to a few thousand I/Os per second.
            const res = await run(process.execPath, ['--expose-gc', JS_BENCH, ...args], 3600);
            const j = lastJson(res.stdout);
            r = res.code === 0 && j ? j : failure('blk-bench.js --heap-ios', res);
          } catch (e) {
            r = { error: e.message };
          }
          doc.heaps.push({ ...r, mode, api, rw });
          if (r.error) doc.failures.push(`heap ${mode} ${api} ${rw}: ${r.error}`);
          else log(`heap growth: ${r.heap_bytes_per_io.toFixed(4)} bytes/IO over ${r.ios} I/Os`);
          save();
        }
  }

  save();
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
