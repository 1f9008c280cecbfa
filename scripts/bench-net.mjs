#!/usr/bin/env node
// The net part of `npm run bench` (also `npm run bench -- --suite net`, or this file directly): builds what
// it needs, boots the lab once, runs bench/net-in-guest.mjs there (our NetDevice with send() and
// sendBatch(), the C loopback driver, the kernel's virtio-net with AF_PACKET — all on one vdpa_sim_net
// device, ≥ 2 rounds), saves bench/results/net-<timestamp>.json and net-latest.json with the commit, and
// prints the medians. See docs/bench.md ("Net"). Numbers are reported, never asserted.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PROJECT_ROOT, runInLab } from './lab/index.mjs';
import { buildNetTools } from './build-net-tools.mjs';
import { benchMain } from './bench-common.mjs';

const RESULTS_DIR = path.join(PROJECT_ROOT, 'bench', 'results');

export const NET_HELP = `Net options (npm run bench -- --suite net …, or node scripts/bench-net.mjs …):
  --seconds N        measured seconds per run (default 5)
  --ramp N           unmeasured warm-up seconds (default 1)
  --rounds N         rounds of every engine and size (default 2; the tables show medians)
  --sizes LIST       frame sizes in bytes (default 64,1500)
  --engines LIST     subset of ours-send,ours-batch,ours-batch-event,c-1,c-32,c-32-poll,kernel
                     (default ours-send,ours-batch,c-1,c-32,kernel)
  --heap-frames N    frames in the heap-growth run (default 100000; 0 skips it)
  --warmup-frames N  frames our engines send before the ramp, unmeasured (default 3000: JIT warm-up)
  --quick            smoke test: --seconds 1 --ramp 0.2 --rounds 1 --heap-frames 5000
  --no-pin           let the guest scheduler place the simulator's worker and the drivers
  --idle-poll        boot the guest with idle=poll (no halted-vCPU wake-ups under TCG; recorded)
  --cpu-prof         V8 CPU profiles of our runs → bench/results/net-profiles-<timestamp>/
  --no-save          do not write bench/results/
  --table FILE       only print the tables of a saved result`;

export function parseNetArgs(argv) {
  const o = { seconds: 5, ramp: 1, rounds: 2, heapFrames: 100000, pin: true, save: true };
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
    if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--seconds') o.seconds = number(0.1);
    else if (a === '--ramp') o.ramp = number(0);
    else if (a === '--rounds') o.rounds = Math.floor(number(1));
    else if (a === '--sizes') o.sizes = value();
    else if (a === '--engines') o.engines = value();
    else if (a === '--heap-frames') o.heapFrames = Math.floor(number(0));
    else if (a === '--warmup-frames') o.warmupFrames = Math.floor(number(0));
    else if (a === '--quick')
      Object.assign(o, { seconds: 1, ramp: 0.2, rounds: 1, heapFrames: 5000, quick: true });
    else if (a === '--no-pin') o.pin = false;
    else if (a === '--idle-poll') o.idlePoll = true;
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--no-save') o.save = false;
    else if (a === '--timeout') o.timeoutSec = number(1);
    else if (a === '--table') o.table = value();
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---- tables ------------------------------------------------------------------------------------------------

const COLUMNS = [
  ['ours-send', 'ours send()'],
  ['ours-batch', 'ours sendBatch(32)'],
  ['ours-batch-event', "ours sendBatch+'frame'"],
  ['c-1', 'C batch 1'],
  ['c-32', 'C batch 32'],
  ['c-32-poll', 'C batch 32 poll'],
  ['kernel', 'kernel AF_PACKET'],
];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

/** results → Map(size → Map(engine → {fps, gbps, cpu, lost, n})) of medians over rounds. */
export function netMedians(doc) {
  const m = new Map();
  for (const r of doc.results) {
    if (r.error) continue;
    if (!m.has(r.size)) m.set(r.size, new Map());
    const e = m.get(r.size);
    if (!e.has(r.engine)) e.set(r.engine, []);
    e.get(r.engine).push(r);
  }
  const out = new Map();
  for (const [size, engines] of m) {
    const row = new Map();
    for (const [engine, rs] of engines) {
      row.set(engine, {
        fps: median(rs.map((r) => r.frames_per_s)),
        gbps: median(rs.map((r) => r.gbit_per_s)),
        cpu: median(rs.map((r) => r.cpu_us_per_frame)),
        lost: rs.reduce((a, r) => a + (r.lost ?? 0), 0),
        n: rs.length,
        all: rs.map((r) => Math.round(r.frames_per_s)),
      });
    }
    out.set(size, row);
  }
  return out;
}

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) =>
    cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ');
  return [title, line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join('\n');
}

const fmt = (v, d = 0) =>
  v === undefined || v === null || Number.isNaN(v)
    ? '–'
    : v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const ratio = (a, b) => (a > 0 && b > 0 ? `${(a / b).toFixed(2)}×` : '–');

export function renderNetTables(doc) {
  const env = doc.environment;
  const med = netMedians(doc);
  const present = COLUMNS.filter(([e]) => [...med.values()].some((row) => row.has(e)));
  const out = [
    `vdpa_sim_net ${env.device}, kernel ${env.kernel}, ${env.accel ?? '?'} guest, ${env.cpus} vCPUs, idle=${env.idle ?? '?'}, ` +
      `${env.pinning?.driverCpu !== undefined ? 'pinned (simulator CPU 0, drivers CPU 1)' : 'unpinned'}, node ${env.node}, ` +
      `${env.seconds}s per run (+${env.ramp}s ramp${env.warmupFrames ? `, ours after ${env.warmupFrames} warm-up frames` : ''}), ${env.rounds} round(s), medians; commit ${env.commit ?? '?'}, ${env.date}` +
      (env.hostLoadBefore
        ? `\nhost: ${env.hostCpus} CPUs, load average ${env.hostLoadBefore.join(' ')} before, ${env.hostLoadAfter?.join(' ') ?? '?'} after`
        : ''),
  ];
  const header = ['size', ...present.map(([, h]) => h)];
  const rows = (f, d) =>
    [...med].map(([size, row]) => [`${size} B`, ...present.map(([e]) => fmt(f(row.get(e)), d))]);
  const ratios = [...med].map(([size, row]) => [
    ...rows((r) => r?.fps, 0).find((r) => r[0] === `${size} B`),
    ratio(row.get('ours-batch')?.fps, row.get('c-32')?.fps),
    ratio(row.get('ours-send')?.fps, row.get('c-1')?.fps),
    ratio(row.get('ours-batch')?.fps, row.get('kernel')?.fps),
  ]);
  out.push('', table('frames/s (median)', [...header, 'batch/C-32', 'send/C-1', 'batch/kernel'], ratios));
  out.push(
    '',
    table(
      'Gbit/s (frame bytes, median)',
      header,
      rows((r) => r?.gbps, 4),
    ),
  );
  out.push(
    '',
    table(
      'CPU µs per frame (the driver process, all its threads; the simulator worker not included)',
      header,
      rows((r) => r?.cpu, 1),
    ),
  );
  out.push(
    '',
    'rounds (frames/s): ' +
      [...med]
        .flatMap(([size, row]) => [...row].map(([e, r]) => `${size}B ${e} [${r.all.join(', ')}]`))
        .join('; '),
  );
  const lost = [...med].flatMap(([size, row]) =>
    [...row].filter(([, r]) => r.lost > 0).map(([e, r]) => `${size}B ${e}: ${r.lost}`),
  );
  out.push(`frames lost (all rounds): ${lost.length ? lost.join(', ') : 'none'}`);
  const errors = doc.results.filter((r) => r.error);
  if (errors.length) {
    out.push('', 'Failures:');
    for (const r of errors) out.push(`  round ${r.round} ${r.size} B ${r.engine}: ${r.error}`);
  }
  const h = doc.heap;
  if (h) {
    out.push(
      '',
      h.error
        ? `JS heap growth: FAILED ${h.error}`
        : `JS heap growth: ${fmt(h.heap_growth_bytes)} bytes over ${fmt(h.frames)} frames = ${h.heap_bytes_per_frame.toFixed(4)} bytes/frame ` +
            `(${h.mode}, ${h.size} B, after ${fmt(h.warmup_frames)} warm-up frames; ${fmt(h.frames_per_s)} frames/s; ` +
            `${fmt(h.minor_gcs)} minor GCs = one per ${fmt(h.frames_per_minor_gc)} frames; RSS ${fmt(h.rss_growth_bytes)} B)`,
    );
  }
  out.push('', 'Target (issue #10): ours ≥ 0.9× the C driver:');
  for (const [size, row] of med) {
    for (const [ours, c] of [
      ['ours-batch', 'c-32'],
      ['ours-send', 'c-1'],
    ]) {
      const a = row.get(ours)?.fps;
      const b = row.get(c)?.fps;
      if (a === undefined || b === undefined) continue;
      out.push(`  ${size} B ${ours} / ${c}: ${ratio(a, b)} ${a / b >= 0.9 ? 'met' : 'MISSED'}`);
    }
  }
  return out.join('\n');
}

// ---- main --------------------------------------------------------------------------------------------------

function sh(cmd, args, what) {
  process.stderr.write(`[bench-net] ${what}: ${cmd} ${args.join(' ')}\n`);
  const r = spawnSync(cmd, args, { cwd: PROJECT_ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

function firstLine(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : undefined;
}

function timestamp(d = new Date()) {
  return d
    .toISOString()
    .replace(/[:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

/** Builds, boots, runs, saves, prints; resolves with an exit status. */
export async function runNetBench(o) {
  if (o.table) {
    process.stdout.write(`${renderNetTables(JSON.parse(fs.readFileSync(o.table, 'utf8')))}\n`);
    return 0;
  }
  const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';
  if (!fs.existsSync(path.join(PROJECT_ROOT, 'build', 'Release', 'vhost_vdpa.node')))
    sh(npx, ['node-gyp', 'rebuild'], 'addon');
  sh(npx, ['tsc', '-p', 'tsconfig.json'], 'library');
  sh(npx, ['tsc', '-p', 'tsconfig.test.json'], 'benchmark harness');
  if (!buildNetTools()) throw new Error('the C programs did not build');

  const stamp = timestamp();
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const out = o.save
    ? path.join(RESULTS_DIR, `net-${stamp}.json`)
    : path.join(RESULTS_DIR, `.tmp-net-${stamp}.json`);
  const args = [
    'bench/net-in-guest.mjs',
    '--out',
    out,
    '--seconds',
    String(o.seconds),
    '--ramp',
    String(o.ramp),
  ];
  args.push('--rounds', String(o.rounds), '--heap-frames', String(o.heapFrames));
  if (o.sizes) args.push('--sizes', o.sizes);
  if (o.warmupFrames !== undefined) args.push('--warmup-frames', String(o.warmupFrames));
  if (o.engines) args.push('--engines', o.engines);
  if (!o.pin) args.push('--no-pin');
  let profDir;
  if (o.cpuProf) {
    profDir = path.join(RESULTS_DIR, `net-profiles-${stamp}`);
    fs.mkdirSync(profDir, { recursive: true });
    args.push('--cpu-prof', profDir);
  }
  const engines = (o.engines ?? 'a,b,c,d,e').split(',').length;
  const sizes = (o.sizes ?? '64,1500').split(',').length;
  const runs = o.rounds * engines * sizes;
  const timeoutSec =
    o.timeoutSec ?? Math.ceil(2 * (runs * (o.seconds + o.ramp + 60) + o.heapFrames / 500 + 180));
  const commit = firstLine('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = firstLine('git', ['-C', PROJECT_ROOT, 'status', '--porcelain', '--untracked-files=no']);
  const hostLoadBefore = os.loadavg().map((v) => v.toFixed(2));
  const res = await runInLab({
    command: ['node', ...args],
    kernelArgs: o.idlePoll ? ['idle=poll'] : [],
    timeoutSec,
  });
  const hostLoadAfter = os.loadavg().map((v) => v.toFixed(2));
  if (!fs.existsSync(out)) {
    process.stderr.write(`bench-net: the guest wrote no results (lab exit ${res.exitCode})\n`);
    return res.exitCode || 1;
  }
  const doc = JSON.parse(fs.readFileSync(out, 'utf8'));
  Object.assign(doc.environment, {
    accel: res.accel,
    hostCpus: os.cpus().length,
    hostCpuModel: os.cpus()[0]?.model,
    hostLoadBefore,
    hostLoadAfter,
    gcc: firstLine('gcc', ['--version']),
    commit: dirty ? `${commit} (with uncommitted changes)` : commit,
    labTimings: res.timings,
    options: { ...o },
  });
  if (profDir) doc.environment.cpuProfiles = path.relative(PROJECT_ROOT, profDir);
  if (res.exitCode !== 0 && doc.failures.length === 0) doc.failures.push(`guest run exited ${res.exitCode}`);
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  if (o.save) {
    fs.writeFileSync(out, json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'net-latest.json'), json);
  } else fs.rmSync(out, { force: true });
  process.stdout.write(`\n${renderNetTables(doc)}\n`);
  if (o.save) process.stdout.write(`\nSaved ${path.relative(PROJECT_ROOT, out)} (and net-latest.json)\n`);
  if (doc.failures.length) {
    process.stderr.write(
      `\nbench-net: ${doc.failures.length} failure(s):\n${doc.failures.map((f) => `  ${f}`).join('\n')}\n`,
    );
    return 1;
  }
  return res.exitCode === 0 ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url))
  benchMain('bench-net', parseNetArgs, NET_HELP, runNetBench);
