#!/usr/bin/env node
// The guest side of the net benchmark (scripts/bench-net.mjs boots the lab and runs this as root in the
// project root). Creates a vdpa_sim_net device of its own (`bnet`, MAC 52:54:aa:bb:cc:20: the kernel's
// virtio-net refuses to bring up an interface with net0's all-zero MAC), then for each round and frame size
// runs every engine on it, rotating their order, and writes one JSON document. Numbers are reported, not
// judged. Deletes the device at the end.
//
//   node bench/net-in-guest.mjs --out FILE [--seconds 5] [--ramp 1] [--rounds 2] [--sizes 64,1500]
//        [--engines ours-send,ours-batch,c-1,c-32,kernel] [--heap-frames 100000] [--cpu-prof DIR] [--no-pin]
//
// Engines (all loop broadcast frames through the device and count what comes back):
//   ours-send   dist-test/bench/net-bench.js --send single: `await dev.send(frame)` + a frames() loop
//               (our engines first send --warmup-frames frames, unmeasured, so the JIT has done its work)
//   ours-batch  dist-test/bench/net-bench.js --send batch --batch 32: `await dev.sendBatch(32 frames)`
//   c-1, c-32   build/vdpa-net-bench --batch 1|32 --mode event (bench/c-baseline/vdpa-net-bench.c)
//   kernel      virtio_vdpa + virtio-net + build/af-packet-net bench --batch 32 (sendmmsg/recvmmsg)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { ROOT, cpuHasPku, failure, lastJson, run as runOn } from './guest-lib.mjs';

const require = createRequire(import.meta.url);
const { bindDriver, describeBinding } = require(path.join(ROOT, 'dist', 'index.js'));
const JS_BENCH = path.join(ROOT, 'dist-test', 'bench', 'net-bench.js');
const C_BENCH = path.join(ROOT, 'build', 'vdpa-net-bench');
const AF_PACKET = path.join(ROOT, 'build', 'af-packet-net');
const ALL_ENGINES = ['ours-send', 'ours-batch', 'ours-batch-event', 'c-1', 'c-32', 'c-32-poll', 'kernel'];
const DEFAULT_ENGINES = ['ours-send', 'ours-batch', 'c-1', 'c-32', 'kernel'];
const DEVICE = 'bnet';
const MAC = '52:54:aa:bb:cc:20';

function parseArgs(argv) {
  const o = {
    seconds: 5,
    ramp: 1,
    rounds: 2,
    sizes: [64, 1500],
    engines: DEFAULT_ENGINES,
    heapFrames: 100000,
    warmupFrames: 3000,
    pin: true,
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
    else if (a === '--sizes') o.sizes = value().split(',').map(Number);
    else if (a === '--engines') o.engines = value().split(',');
    else if (a === '--heap-frames') o.heapFrames = Math.floor(number(0));
    else if (a === '--warmup-frames') o.warmupFrames = Math.floor(number(0));
    else if (a === '--cpu-prof') o.cpuProf = value();
    else if (a === '--no-pin') o.pin = false;
    else throw new Error(`unknown option ${a}`);
  }
  if (!o.out) throw new Error('--out FILE is required');
  for (const e of o.engines) if (!ALL_ENGINES.includes(e)) throw new Error(`unknown engine ${e}`);
  for (const s of o.sizes) if (!Number.isInteger(s) || s < 60 || s > 1514) throw new Error(`bad size ${s}`);
  return o;
}

const log = (msg) => process.stderr.write(`[bench-net] ${msg}\n`);
/** With pinning: the CPU the drivers run on (the simulator's worker gets CPU 0). */
let driverCpu;

/** guest-lib's run, on the drivers' CPU when pinning. */
const run = (cmd, args, timeoutSec) => runOn(cmd, args, timeoutSec, { cpu: driverCpu });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, probe, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function vhostChardev() {
  const b = await bindDriver(DEVICE, 'vhost_vdpa');
  if (!b.charDev) throw new Error(`${DEVICE}: no vhost-vdpa char device after binding`);
  return b.charDev;
}

/** Rebinds to virtio_vdpa, brings the interface up, runs `body(ifname)`, and gives the device back. */
async function withKernelInterface(body) {
  await bindDriver(DEVICE, 'virtio_vdpa');
  try {
    const ifname = await waitFor(
      'the virtio-net interface',
      () => describeBinding(DEVICE).kernelDevices?.[0],
    );
    const ipv6 = `/proc/sys/net/ipv6/conf/${ifname}/disable_ipv6`;
    if (fs.existsSync(ipv6)) fs.writeFileSync(ipv6, '1');
    execFileSync('ip', ['link', 'set', 'dev', ifname, 'up']);
    try {
      await waitFor('carrier', () =>
        fs.readFileSync(`/sys/class/net/${ifname}/carrier`, 'utf8').trim() === '1' ? true : undefined,
      );
      return await body(ifname);
    } finally {
      execFileSync('ip', ['link', 'set', 'dev', ifname, 'down']);
    }
  } finally {
    await bindDriver(DEVICE, 'vhost_vdpa');
  }
}

async function runEngine(engine, o, size, round) {
  const secs = String(o.seconds);
  const ramp = String(o.ramp);
  const timeout = o.seconds + o.ramp + 300;
  if (engine === 'kernel') {
    return withKernelInterface(async (ifname) => {
      const args = ['bench', '--ifname', ifname, '--size', String(size), '--batch', '32'];
      const res = await run(AF_PACKET, [...args, '--seconds', secs, '--ramp', ramp], timeout);
      const r = lastJson(res.stdout);
      return res.code === 0 && r ? r : failure('af-packet-net', res);
    });
  }
  const device = await vhostChardev();
  if (engine.startsWith('c-')) {
    const [, batch, mode] = engine.split('-');
    const args = ['--device', device, '--size', String(size), '--batch', batch, '--mode', mode ?? 'event'];
    const res = await run(C_BENCH, [...args, '--seconds', secs, '--ramp', ramp], timeout);
    const r = lastJson(res.stdout);
    return res.code === 0 && r ? r : failure('vdpa-net-bench', res);
  }
  const node = ['--expose-gc'];
  if (o.cpuProf) {
    node.push(
      '--cpu-prof',
      `--cpu-prof-dir=${o.cpuProf}`,
      `--cpu-prof-name=${engine}-${size}-r${round}.cpuprofile`,
    );
  }
  const args = ['--device', device, '--size', String(size), '--seconds', secs, '--ramp', ramp];
  args.push('--warmup-frames', String(o.warmupFrames));
  if (engine === 'ours-send') args.push('--send', 'single');
  else args.push('--send', 'batch', '--batch', '32');
  if (engine === 'ours-batch-event') args.push('--rx', 'event');
  const res = await run(process.execPath, [...node, JS_BENCH, ...args], timeout);
  const r = lastJson(res.stdout);
  return res.code === 0 && r ? r : failure('net-bench.js', res);
}

async function pinWorker() {
  const want = `vDPA sim worker: ${DEVICE}`;
  for (const pid of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    let comm;
    try {
      comm = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    // Kernel threads show their full name in comm (5.17+).
    if (comm !== want) continue;
    execFileSync('taskset', ['-pc', '0', pid]);
    return { pid: Number(pid), comm };
  }
  throw new Error(`no kernel thread named "${want}" to pin`);
}

function commDescription() {
  // The simulator's worker thread names itself after the device; print what exists, for the record.
  return fs
    .readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map((pid) => {
      try {
        return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
      } catch {
        return '';
      }
    })
    .filter((c) => c.startsWith('vDPA'));
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const doc = {
    environment: {
      kernel: os.release(),
      idle: process.env.VDPA_LAB_IDLE ?? 'default',
      cpus: os.cpus().length,
      pku: cpuHasPku(),
      node: process.version,
      device: `${DEVICE} (vdpa_sim_net, mac ${MAC})`,
      date: new Date().toISOString(),
      seconds: o.seconds,
      ramp: o.ramp,
      rounds: o.rounds,
      sizes: o.sizes,
      engines: o.engines,
      warmupFrames: o.warmupFrames,
    },
    results: [],
    heap: null,
    failures: [],
  };
  const save = () => fs.writeFileSync(o.out, `${JSON.stringify(doc, null, 2)}\n`);
  if (fs.existsSync(`/sys/bus/vdpa/devices/${DEVICE}`)) execFileSync('vdpa', ['dev', 'del', DEVICE]);
  execFileSync('vdpa', ['dev', 'add', 'name', DEVICE, 'mgmtdev', 'vdpasim_net', 'mac', MAC]);
  try {
    await vhostChardev();
    if (o.pin) {
      try {
        doc.environment.pinning = { simulatorWorker: await pinWorker(), simulatorCpu: 0, driverCpu: 1 };
        driverCpu = 1;
      } catch (e) {
        doc.environment.pinning = { error: `${e.message}; threads: ${commDescription().join(', ')}` };
        log(`not pinned: ${doc.environment.pinning.error}`);
      }
    }
    let k = 0;
    for (let round = 1; round <= o.rounds; round++) {
      for (const size of o.sizes) {
        const order = o.engines.map((_, i) => o.engines[(i + k) % o.engines.length]);
        k++;
        for (const engine of order) {
          log(`round ${round} size ${size} ${engine} …`);
          let r;
          try {
            r = await runEngine(engine, o, size, round);
          } catch (e) {
            r = { error: e.message };
          }
          const entry = { ...r, driver: r.engine, engine, size, round };
          doc.results.push(entry);
          if (r.error) {
            doc.failures.push(`round ${round} size ${size} ${engine}: ${r.error}`);
            log(`FAILED ${r.error}`);
          } else {
            log(
              `${engine} ${size} B: ${Math.round(r.frames_per_s)} frames/s, ${r.gbit_per_s} Gbit/s, lost ${r.lost}`,
            );
          }
          save();
        }
      }
    }
    if (o.heapFrames > 0 && o.engines.some((e) => e.startsWith('ours'))) {
      log(`heap growth: ${o.heapFrames} frames (64 B, sendBatch 32, frames() loop) …`);
      const device = await vhostChardev();
      const args = ['--device', device, '--size', '64', '--send', 'batch', '--batch', '32'];
      const res = await run(
        process.execPath,
        ['--expose-gc', JS_BENCH, ...args, '--heap-frames', String(o.heapFrames)],
        1800,
      );
      const r = lastJson(res.stdout);
      doc.heap = res.code === 0 && r ? r : failure('net-bench.js --heap-frames', res);
      if (doc.heap.error) doc.failures.push(`heap: ${doc.heap.error}`);
      else
        log(
          `heap growth: ${doc.heap.heap_bytes_per_frame.toFixed(4)} bytes/frame, ${doc.heap.frames_per_minor_gc} frames per minor GC`,
        );
      save();
    }
  } finally {
    try {
      await vhostChardev();
    } catch (e) {
      log(`could not give ${DEVICE} back to vhost_vdpa: ${e.message}`);
    }
    execFileSync('vdpa', ['dev', 'del', DEVICE]);
  }
  save();
  log(`wrote ${o.out}${doc.failures.length ? `; ${doc.failures.length} failure(s)` : ''}`);
  return doc.failures.length ? 1 : 0;
}

main().then(
  (code) => (process.exitCode = code),
  (e) => {
    log(`ERROR: ${e.stack ?? e.message}`);
    process.exitCode = 2;
  },
);
