#!/usr/bin/env node
// Scale, in the lab guest: does one Node process keep up with several devices and queues? Adds vdpa_sim_blk
// devices for the run only (`vhost-vdpa dev add`, deleted afterwards, so the test suite's device numbering is
// untouched), then per mode runs our driver on all of them in one process (bench/blk-bench.ts --device A,B,…)
// — in interrupt mode also with each device in its own worker thread of that process (--threads) — against one
// C baseline process per device, all at once; and on the lab's 2-queue VDUSE device (vduse-mq) our
// driver with one and with two queues. 4 KiB randread, QD32 per device (or per queue). Writes one JSON document.
//
// Every engine first completes --warmup-ios I/Os per device unmeasured (default 160,000: what `npm run bench`
// uses at QD32, where the completion path runs once per batch of I/Os).
//
//   node bench/scale-in-guest.mjs --out FILE [--devices 4] [--seconds 5] [--ramp 1] [--rounds 2] [--warmup-ios N]
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { JS_BENCH, ROOT, cpuHasPku, gitCommit } from './guest-lib.mjs';

const CLI = path.join(ROOT, 'dist', 'cli', 'main.js');
const C_BIN = path.join(ROOT, 'bench', 'c-baseline', 'vdpa-blk-bench');
const log = (m) => process.stderr.write(`[scale] ${m}\n`);

const o = { out: undefined, devices: 4, seconds: 5, ramp: 1, rounds: 2, warmupIos: 160000 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--out') o.out = argv[++i];
  else if (a === '--devices') o.devices = Number(argv[++i]);
  else if (a === '--seconds') o.seconds = Number(argv[++i]);
  else if (a === '--ramp') o.ramp = Number(argv[++i]);
  else if (a === '--rounds') o.rounds = Number(argv[++i]);
  else if (a === '--warmup-ios') o.warmupIos = Number(argv[++i]);
  else throw new Error(`unknown option ${a}`);
}
if (!o.out) throw new Error('--out FILE is required');

function chardev(name) {
  const entry = fs.readdirSync(`/sys/bus/vdpa/devices/${name}`).find((e) => e.startsWith('vhost-vdpa-'));
  if (!entry) throw new Error(`${name} is not bound to vhost_vdpa`);
  return `/dev/${entry}`;
}

function run(cmd, args) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), (o.seconds + o.ramp + 120) * 1000);
    child.on('close', (code) => {
      clearTimeout(timer);
      const line = out
        .trim()
        .split('\n')
        .reverse()
        .find((l) => l.startsWith('{'));
      resolve(
        code === 0 && line
          ? JSON.parse(line)
          : { error: `${path.basename(cmd)} exited ${code}: ${err.trim().slice(-300)}` },
      );
    });
  });
}

const common = [
  '--rw',
  'randread',
  '--seconds',
  String(o.seconds),
  '--ramp',
  String(o.ramp),
  '--warmup-ios',
  String(o.warmupIos),
];
const ours = (devs, mode, extra = []) =>
  run(process.execPath, [
    JS_BENCH,
    '--device',
    devs.join(','),
    '--qd',
    '32',
    '--mode',
    mode,
    ...common,
    ...extra,
    ...(mode === 'poll' ? ['--spin-us', '1000'] : []),
  ]);
async function cPerDevice(devs, mode) {
  const rs = await Promise.all(
    devs.map((d) => run(C_BIN, ['--device', d, '--qd', '32', '--mode', mode, ...common])),
  );
  const failed = rs.find((r) => r.error);
  if (failed) return failed;
  return {
    engine: 'c',
    mode,
    processes: devs.length,
    iops: rs.reduce((a, r) => a + r.iops, 0),
    iops_per_device: rs.map((r) => r.iops),
    cpu_us_per_io: rs.reduce((a, r) => a + r.cpu_us_per_io * r.ios, 0) / rs.reduce((a, r) => a + r.ios, 0),
  };
}

const added = [];
const doc = {
  environment: {
    date: new Date().toISOString(),
    commit: gitCommit(),
    seconds: o.seconds,
    ramp: o.ramp,
    rounds: o.rounds,
    warmup_ios: o.warmupIos,
    devices: o.devices,
    pku: cpuHasPku(),
  },
  results: [],
  failures: [],
};
const save = () => fs.writeFileSync(o.out, `${JSON.stringify(doc, null, 2)}\n`);
try {
  for (let i = 1; i < o.devices; i++) {
    const name = `bench-blk${i}`;
    // A starved guest may answer the netlink request late (the CLI gives up after 5 s): then look whether the
    // device exists anyway, and try iproute2's vdpa once more, as the lab's own device set-up does.
    const r = spawnSync(
      process.execPath,
      [CLI, 'dev', 'add', name, '--mgmtdev', 'vdpasim_blk', '--driver', 'vhost', '--timeout', '30000'],
      { encoding: 'utf8' },
    );
    if (r.status !== 0 && !fs.existsSync(`/sys/bus/vdpa/devices/${name}`)) {
      const v = spawnSync('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vdpasim_blk'], {
        encoding: 'utf8',
      });
      if (v.status !== 0 && !fs.existsSync(`/sys/bus/vdpa/devices/${name}`))
        throw new Error(`dev add ${name}: ${r.stderr.trim()} / vdpa: ${v.stderr?.trim()}`);
    }
    for (let t = Date.now(); Date.now() - t < 60000; ) {
      try {
        chardev(name);
        break;
      } catch {
        spawnSync('sleep', ['0.5']);
      }
    }
    added.push(name);
  }
  const devs = ['blk0', ...added].map(chardev);
  log(`devices: ${devs.join(' ')}`);
  for (let round = 1; round <= o.rounds; round++) {
    const jobs = [
      ['ours-poll', `${devs.length} sim devices, one process`, () => ours(devs, 'poll')],
      ['c-poll', `${devs.length} sim devices, one C process each`, () => cPerDevice(devs, 'poll')],
      ['ours-irq', `${devs.length} sim devices, one process`, () => ours(devs, 'interrupt')],
      [
        'ours-irq-threads',
        `${devs.length} sim devices, one process, a worker thread each`,
        () => ours(devs, 'interrupt', ['--threads']),
      ],
      ['c-event', `${devs.length} sim devices, one C process each`, () => cPerDevice(devs, 'event')],
      [
        'ours-irq',
        'vduse-mq, 1 queue, QD32',
        () => ours([chardev('vduse-mq')], 'interrupt', ['--queues', '1']),
      ],
      [
        'ours-irq',
        'vduse-mq, 2 queues, QD32 each',
        () => ours([chardev('vduse-mq')], 'interrupt', ['--queues', '2']),
      ],
      ['c-event', 'vduse-mq, 1 queue, QD32', () => cPerDevice([chardev('vduse-mq')], 'event')],
    ];
    // Rotate the order per round, as run-in-guest.mjs does.
    for (let k = 0; k < jobs.length; k++) {
      const [engine, config, job] = jobs[(k + round - 1) % jobs.length];
      log(`round ${round}: ${config}, ${engine} …`);
      const r = await job();
      doc.results.push({ ...r, engine, config, round });
      if (r.error) doc.failures.push(`${config} ${engine}: ${r.error}`);
      log(`  ${r.error ?? `${Math.round(r.iops)} IOPS`}`);
      save();
    }
  }
} catch (e) {
  doc.failures.push(e.message);
  log(`ERROR ${e.message}`);
} finally {
  for (const name of added) spawnSync(process.execPath, [CLI, 'dev', 'del', name], { stdio: 'inherit' });
  save();
}
process.exitCode = doc.failures.length ? 1 : 0;
