#!/usr/bin/env node
// `npm run bench`: builds what the benchmark needs, boots the lab once, runs bench/run-in-guest.mjs there
// (our driver in interrupt and poll mode, the C baseline, the kernel's virtio-blk with fio — all on the same
// vdpa_sim_blk device), saves bench/results/<timestamp>.json and latest.json, and prints the tables.
// See docs/bench.md. Not part of `npm test`: numbers are reported, never asserted.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { warmupIosFor } from '../bench/guest-lib.mjs';
import { PROJECT_ROOT, runInLab } from './lab/index.mjs';
import { NET_HELP, parseNetArgs, runNetBench } from './bench-net.mjs';
import { VDUSE_HELP, parseVduseArgs, runVduseBench } from './bench-vduse.mjs';

const RESULTS_DIR = path.join(PROJECT_ROOT, 'bench', 'results');
const C_SRC = path.join(PROJECT_ROOT, 'bench', 'c-baseline', 'vdpa-blk-bench.c');
const C_BIN = path.join(PROJECT_ROOT, 'bench', 'c-baseline', 'vdpa-blk-bench');
const ENGINES = ['ours-irq', 'ours-poll', 'c-poll', 'c-event', 'kernel'];
// Extra columns, on request (--engines): the same loop through readIntoCallback()/writeCallback().
const EXTRA_ENGINES = ['ours-cb-irq', 'ours-cb-poll'];

const HELP = `Usage: npm run bench [-- options]

Runs 4 KiB random read and write at queue depth 1 and 32 on the lab's vdpa_sim_blk device, in one VM boot,
for: our driver (interrupt and poll completion), a minimal C driver (poll and event), and the kernel's
virtio-blk via virtio_vdpa with fio. Then a JS heap-growth run. Writes bench/results/<timestamp>.json and
bench/results/latest.json and prints IOPS, p50/p99 latency, CPU per I/O and the ratios.

Options:
  --seconds N        measured seconds per run (default 10)
  --ramp N           unmeasured warm-up seconds before each run (default 1)
  --warmup-ios N     unmeasured I/Os our engines and the C driver complete before the ramp, at queue depth
                     ≤ 4; N × QD/4 at deeper queues (default 20000, so 160000 at QD32: V8 has optimised the
                     hot path, poll loop included, by then; a time-based ramp under TCG is too short for it)
  --heap-ios N       I/Os in each heap-growth run (default 1000000; 0 skips them): interrupt and poll ×
                     zero-copy and bounce × read and write, QD32
  --quick            smoke test: --seconds 1 --ramp 0.2 --heap-ios 2000 --rounds 1 --warmup-ios 2000
  --idle-poll        boot the guest with idle=poll (recorded in the results)
  --engines LIST     comma-separated subset of ${ENGINES.join(',')} (default), plus
                     ${EXTRA_ENGINES.join(',')}: the callback API (readIntoCallback/writeCallback), no Promise
  --qds LIST         queue depths (default 1,32)
  --rounds N         rounds of every configuration and engine, rotated order (default 2); tables show medians
  --pin              simulator worker on guest CPU 0, every driver on CPU 1 (default: the guest scheduler
                     places them, as \`npm run lab\` boots it and as a user would run)
  --extra            after the headline boot, a second one with idle=poll and --pin (the extra columns)
  --spin-us N        our poll mode's pollSpinMicros (default 1000: like the C driver, keep spinning)
  --cpu-prof         also write V8 CPU profiles of our runs to bench/results/profiles-<timestamp>/
  --no-save          do not write bench/results/ (the JSON goes to a temporary file)
  --timeout SEC      bound on the VM run (default: computed from the above)
  --table FILE       only print the tables of a saved result
  --suite blk|net|vduse|all  which benchmark (default all: blk, then net, then vduse, one boot each; see
                     docs/bench.md "Net" and "VDUSE export"). With --suite net or vduse every option is that
                     benchmark's (below); with all, --quick, --cpu-prof and --no-save apply to all three
                     (--idle-poll and --no-pin to blk and net)
  --help             this text

${NET_HELP}

${VDUSE_HELP}`;

function parseArgs(argv) {
  const o = {
    seconds: 10,
    ramp: 1,
    heapIos: 1_000_000,
    warmupIos: 20_000,
    idlePoll: false,
    pin: false,
    rounds: 2,
    extra: false,
    spinUs: 1000,
    engines: ENGINES,
    qds: [1, 32],
    save: true,
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
    if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--seconds') o.seconds = number(0.1);
    else if (a === '--ramp') o.ramp = number(0);
    else if (a === '--heap-ios') o.heapIos = Math.floor(number(0));
    else if (a === '--warmup-ios') o.warmupIos = Math.floor(number(0));
    else if (a === '--quick')
      Object.assign(o, { seconds: 1, ramp: 0.2, heapIos: 2000, rounds: 1, warmupIos: 2000, quick: true });
    else if (a === '--idle-poll') o.idlePoll = true;
    else if (a === '--engines') o.engines = value().split(',');
    else if (a === '--qds') o.qds = value().split(',').map(Number);
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--no-pin') o.pin = false;
    else if (a === '--pin') o.pin = true;
    else if (a === '--rounds') o.rounds = Math.floor(number(1));
    else if (a === '--extra') o.extra = true;
    else if (a === '--spin-us') o.spinUs = number(0);
    else if (a === '--no-save') o.save = false;
    else if (a === '--timeout') o.timeoutSec = number(1);
    else if (a === '--table') o.table = value();
    else throw new Error(`unknown option ${a}`);
  }
  for (const e of o.engines)
    if (!ENGINES.includes(e) && !EXTRA_ENGINES.includes(e))
      throw new Error(`unknown engine ${e} (have ${[...ENGINES, ...EXTRA_ENGINES].join(', ')})`);
  return o;
}

// ---- building ----------------------------------------------------------------------------------------------

function sh(cmd, args, what) {
  process.stderr.write(`[bench] ${what}: ${cmd} ${args.join(' ')}\n`);
  const r = spawnSync(cmd, args, { cwd: PROJECT_ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

function build() {
  const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';
  if (!fs.existsSync(path.join(PROJECT_ROOT, 'build', 'Release', 'vhost_vdpa.node'))) {
    sh(npx, ['node-gyp', 'rebuild'], 'addon');
  }
  sh(npx, ['tsc', '-p', 'tsconfig.json'], 'library');
  sh(npx, ['tsc', '-p', 'tsconfig.test.json'], 'benchmark harness');
  sh('gcc', ['-O2', '-Wall', '-Wextra', '-std=gnu11', '-o', C_BIN, C_SRC], 'C baseline');
}

function firstLine(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : undefined;
}

// ---- tables ------------------------------------------------------------------------------------------------

const ALL_COLUMNS = [
  ['ours-irq', 'ours-irq'],
  ['ours-poll', 'ours-poll'],
  ['ours-cb-irq', 'ours-cb-irq'],
  ['ours-cb-poll', 'ours-cb-poll'],
  ['c-poll', 'C-poll'],
  ['c-event', 'C-event'],
  ['kernel', 'kernel fio'],
];

function pad(s, n, right = false) {
  s = String(s);
  return right ? s.padEnd(n) : s.padStart(n);
}

function fmt(v, digits = 0) {
  if (v === undefined || v === null || Number.isNaN(v)) return '–';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const ratio = (a, b) => (a > 0 && b > 0 ? a / b : undefined);
const fmtRatio = (r) => (r === undefined ? '–' : `${r.toFixed(2)}×`);

function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((x, y) => x - y);
  if (v.length === 0) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/**
 * results → Map(config → Map(engine → {runs, iops, p50_us, p99_us, cpu_us_per_io, host_cpu_us_per_io (medians),
 * error})), configs in
 * the order they first appear. An engine that failed in any round shows its first error.
 */
function byConfig(doc) {
  const m = new Map();
  for (const r of doc.results) {
    if (!m.has(r.config)) m.set(r.config, new Map());
    const engines = m.get(r.config);
    if (!engines.has(r.engine)) engines.set(r.engine, { engine: r.engine, runs: [] });
    const e = engines.get(r.engine);
    if (r.error) e.error ??= r.error;
    else e.runs.push(r);
  }
  for (const engines of m.values()) {
    for (const e of engines.values()) {
      for (const k of ['iops', 'p50_us', 'p99_us', 'cpu_us_per_io', 'host_cpu_us_per_io'])
        e[k] = median(e.runs.map((r) => r[k]));
      if (e.runs.length > 0) e.error = undefined;
    }
  }
  return m;
}

/** Per-round ratios a/b of field `k` (rounds where both ran), e.g. "0.41, 0.52". */
function perRound(engines, a, b, k = 'iops') {
  const ra = engines.get(a)?.runs ?? [];
  const rb = engines.get(b)?.runs ?? [];
  const out = [];
  for (const x of ra) {
    const y = rb.find((r) => (r.round ?? 1) === (x.round ?? 1));
    const q = ratio(x[k], y?.[k]);
    if (q !== undefined) out.push(q.toFixed(2));
  }
  return out.join(', ') || '–';
}

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], i === 0)).join(' | ');
  return [`${title}`, line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join(
    '\n',
  );
}

function renderTables(doc) {
  const env = doc.environment;
  const out = [];
  out.push(
    `vdpa_sim_blk ${env.device}, kernel ${env.kernel}, ${env.accel ?? '?'} guest, ${env.cpus} vCPUs${env.pku === undefined ? '' : env.pku ? ' (PKU on)' : ' (no PKU)'}, idle=${env.idle}, ${env.pinning ? `pinned (simulator CPU ${env.pinning.simulatorCpu}, drivers CPU ${env.pinning.driverCpu})` : 'unpinned'}, ` +
      `node ${env.node}, ours-poll spins ${env.pollSpinMicros ?? 0} µs, ${env.seconds}s per run (+${env.ramp}s ramp` +
      `${env.warmupIos ? `, after ${env.warmupIos} warm-up I/Os (ours, C; × QD/4 beyond QD4)` : ''}), ` +
      `${env.rounds ?? 1} round(s), medians, commit ${env.commit ?? '?'}, ${env.date}` +
      (env.hostLoadBefore
        ? `\nhost: ${env.hostCpus} CPUs, load average ${env.hostLoadBefore.join(' ')} before, ${env.hostLoadAfter?.join(' ') ?? '?'} after`
        : ''),
  );
  const configs = byConfig(doc);
  // The callback columns only when that run has them.
  const COLUMNS = ALL_COLUMNS.filter(
    ([e]) => !EXTRA_ENGINES.includes(e) || doc.results.some((r) => r.engine === e),
  );
  const callbacks = COLUMNS.some(([e]) => EXTRA_ENGINES.includes(e));
  const cell = (r, f, digits) => (r === undefined ? '–' : r.error ? 'FAILED' : fmt(f(r), digits));
  const header = ['config', ...COLUMNS.map(([, h]) => h)];
  const ok = (engines, e) => (engines.get(e)?.error ? undefined : engines.get(e));

  const iopsRows = [];
  for (const [config, engines] of configs) {
    iopsRows.push([
      config,
      ...COLUMNS.map(([e]) => cell(engines.get(e), (r) => r.iops)),
      fmtRatio(ratio(ok(engines, 'ours-poll')?.iops, ok(engines, 'c-poll')?.iops)),
      fmtRatio(ratio(ok(engines, 'ours-irq')?.iops, ok(engines, 'c-event')?.iops)),
      fmtRatio(ratio(ok(engines, 'ours-poll')?.iops, ok(engines, 'kernel')?.iops)),
      fmtRatio(ratio(ok(engines, 'ours-irq')?.iops, ok(engines, 'kernel')?.iops)),
      ...(callbacks
        ? [
            fmtRatio(ratio(ok(engines, 'ours-cb-poll')?.iops, ok(engines, 'c-poll')?.iops)),
            fmtRatio(ratio(ok(engines, 'ours-cb-irq')?.iops, ok(engines, 'c-event')?.iops)),
          ]
        : []),
    ]);
  }
  const callbackRatios = callbacks ? ['cb-poll/C-poll', 'cb-irq/C-event'] : [];
  out.push(
    '',
    table(
      'IOPS (median)',
      [...header, 'poll/C-poll', 'irq/C-event', 'poll/kernel', 'irq/kernel', ...callbackRatios],
      iopsRows,
    ),
  );
  const roundRows = [...configs].map(([config, engines]) => [
    config,
    perRound(engines, 'ours-poll', 'c-poll'),
    perRound(engines, 'ours-irq', 'c-event'),
    perRound(engines, 'ours-poll', 'c-poll', 'p50_us'),
  ]);
  out.push(
    '',
    table('Per round', ['config', 'poll/C-poll IOPS', 'irq/C-event IOPS', 'poll/C-poll p50'], roundRows),
  );

  const lat = (q) =>
    [...configs].map(([config, engines]) => [
      config,
      ...COLUMNS.map(([e]) => cell(engines.get(e), (r) => r[q], 1)),
    ]);
  out.push('', table('p50 latency (µs, median)', header, lat('p50_us')));
  out.push('', table('p99 latency (µs, median)', header, lat('p99_us')));
  out.push(
    '',
    table(
      'CPU time per I/O (µs, user+sys of the driver process; the simulator worker is not included)',
      header,
      lat('cpu_us_per_io'),
    ),
  );
  // Under idle=poll an idle vCPU spins instead of halting, so its thread is busy all the time: the host figure is
  // then the vCPUs' whole time divided by the I/Os (vCPUs × window ÷ I/Os), which says nothing about a driver.
  const idleSpins = env.idle === 'poll';
  if (
    !idleSpins &&
    [...configs.values()].some((engines) => [...engines.values()].some((e) => e.host_cpu_us_per_io))
  ) {
    out.push(
      '',
      table(
        "Host CPU per I/O (µs; all of QEMU's vCPU threads in the window: the driver, the simulator worker, the guest kernel; what the emulation cost)",
        header,
        lat('host_cpu_us_per_io'),
      ),
    );
  }
  if (idleSpins)
    out.push(
      '',
      'Host CPU per I/O: not shown under idle=poll (idle vCPUs spin, so it is only vCPUs × window ÷ I/Os).',
    );

  // Whether the window measured a warmed driver: CPU of V8's and libuv's helper threads (TurboFan, GC) during
  // the warm-up and inside the window, per round; near zero in the window = steady state.
  const helper = (engines, e, k) =>
    (engines.get(e)?.runs ?? []).map((r) => (r[k] ? fmt(r[k].others ?? 0) : '–')).join(', ') || '–';
  const helperRows = [...configs].map(([config, engines]) => [
    config,
    helper(engines, 'ours-irq', 'warmup_thread_cpu_ms'),
    helper(engines, 'ours-irq', 'thread_cpu_ms'),
    helper(engines, 'ours-poll', 'warmup_thread_cpu_ms'),
    helper(engines, 'ours-poll', 'thread_cpu_ms'),
  ]);
  out.push(
    '',
    table(
      'V8/libuv helper-thread CPU (ms, thread_cpu_ms.others; per round): during the warm-up, then in the window',
      ['config', 'ours-irq warm-up', 'ours-irq window', 'ours-poll warm-up', 'ours-poll window'],
      helperRows,
    ),
  );

  const errors = doc.results.filter((r) => r.error);
  if (errors.length) {
    out.push('', 'Failures:');
    for (const r of errors) out.push(`  ${r.config} ${r.engine} (round ${r.round ?? 1}): ${r.error}`);
  }

  const heaps = doc.heaps ?? (doc.heap ? [doc.heap] : []);
  if (heaps.length) {
    const rows = heaps.map((h) => [
      `${h.mode} ${h.api ?? 'zero-copy'} ${h.rw}`,
      h.error ? 'FAILED' : fmt(h.ios),
      h.error ? '–' : fmt(h.heap_growth_bytes),
      h.error ? '–' : h.heap_bytes_per_io.toFixed(4),
      h.error ? '–' : fmt(h.iops),
    ]);
    out.push(
      '',
      table(
        'JS heap growth (QD32, after warm-up, between full GCs)',
        ['mode', 'I/Os', 'bytes', 'bytes/I/O', 'IOPS'],
        rows,
      ),
    );
  }
  out.push('', ...targetLines(configs, heaps, { hostCpu: !idleSpins }));
  return out.join('\n');
}

/**
 * Issue 9's targets, evaluated on the medians (reported, not asserted). `hostCpu`: also the host-CPU ratio
 * (false under idle=poll, where it is meaningless).
 */
function targetLines(configs, heaps, { hostCpu }) {
  const lines = ['Targets (issue 9, medians of the same boot):'];
  const get = (config, e) => {
    const r = configs.get(config)?.get(e);
    return r && !r.error ? r : undefined;
  };
  const verdict = (r, ok) => (r === undefined ? 'n/a' : ok ? 'met' : 'MISSED');
  for (const [config] of configs) {
    if (!config.endsWith('qd32')) continue;
    for (const [ours, c] of [
      ['ours-irq', 'c-event'],
      ['ours-poll', 'c-poll'],
    ]) {
      const r = ratio(get(config, ours)?.iops, get(config, c)?.iops);
      lines.push(`  ${config}: ${ours} / ${c} IOPS ≥ 0.9×: ${fmtRatio(r)} ${verdict(r, r >= 0.9)}`);
      const k = ratio(get(config, ours)?.iops, get(config, 'kernel')?.iops);
      lines.push(`  ${config}: ${ours} / kernel IOPS ≥ 2×: ${fmtRatio(k)} ${verdict(k, k >= 2)}`);
    }
  }
  for (const [config] of configs) {
    if (!config.endsWith('qd1')) continue;
    const r = ratio(get(config, 'ours-poll')?.p50_us, get(config, 'c-poll')?.p50_us);
    lines.push(`  ${config}: ours-poll / C-poll p50 ≤ 1.25×: ${fmtRatio(r)} ${verdict(r, r <= 1.25)}`);
  }
  for (const [config] of configs) {
    const r = ratio(get(config, 'ours-irq')?.cpu_us_per_io, get(config, 'c-event')?.cpu_us_per_io);
    lines.push(
      `  ${config}: ours-irq / C-event CPU µs per I/O ≤ 1.5×: ${fmtRatio(r)} ${verdict(r, r <= 1.5)}`,
    );
    const h = ratio(get(config, 'ours-irq')?.host_cpu_us_per_io, get(config, 'c-event')?.host_cpu_us_per_io);
    if (h !== undefined && hostCpu)
      lines.push(
        `  ${config}: the same, as host CPU of all vCPUs (driver + simulator + kernel): ${fmtRatio(h)}`,
      );
  }
  for (const h of heaps) {
    if (h.error) continue;
    // "0 bytes per I/O": what is retained per I/O. A fixed amount (code, type feedback: ~100 KB) divided by the
    // I/Os is below 0.1 B/IO only over ~10^6 I/Os, so shorter runs are reported but not judged.
    const what = `  heap ${h.mode} ${h.api ?? 'zero-copy'} ${h.rw}: ${fmt(h.heap_growth_bytes)} bytes over ${fmt(h.ios)} I/Os = ${h.heap_bytes_per_io.toFixed(4)} bytes/I/O`;
    lines.push(
      h.ios >= 1e6
        ? `${what} ≈ 0: ${verdict(h.heap_bytes_per_io, h.heap_bytes_per_io < 0.1)}`
        : `${what}: not judged (fewer than 10^6 I/Os; see bench/host-heap.mjs)`,
    );
  }
  return lines;
}

// ---- main --------------------------------------------------------------------------------------------------

function timestamp(d = new Date()) {
  return d
    .toISOString()
    .replace(/[:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

async function main(argv = process.argv.slice(2)) {
  let o;
  try {
    o = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`bench: ${e.message}\n\n${HELP}\n`);
    return 2;
  }
  if (o.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (o.table) {
    const saved = JSON.parse(fs.readFileSync(o.table, 'utf8'));
    process.stdout.write(`${renderTables(saved)}\n`);
    if (saved.extra)
      process.stdout.write(`\nExtra columns: idle=poll, pinned\n${renderTables(saved.extra)}\n`);
    return 0;
  }

  build();
  const stamp = timestamp();
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  // The guest writes into the project directory (mounted read-write at the same path).
  const out = o.save ? path.join(RESULTS_DIR, `${stamp}.json`) : path.join(RESULTS_DIR, `.tmp-${stamp}.json`);
  const guestArgs = [
    'bench/run-in-guest.mjs',
    '--out',
    out,
    '--seconds',
    String(o.seconds),
    '--ramp',
    String(o.ramp),
  ];
  guestArgs.push('--heap-ios', String(o.heapIos), '--engines', o.engines.join(','), '--qds', o.qds.join(','));
  guestArgs.push('--rounds', String(o.rounds), '--warmup-ios', String(o.warmupIos));
  if (o.pin) guestArgs.push('--pin');
  guestArgs.push('--spin-us', String(o.spinUs));
  let profDir;
  if (o.cpuProf) {
    profDir = path.join(RESULTS_DIR, `profiles-${stamp}`);
    fs.mkdirSync(profDir, { recursive: true });
    guestArgs.push('--cpu-prof', profDir);
  }
  // Runs × (measured + ramp + process start / rebind overhead) + heap run (a few thousand I/Os per second
  // under TCG) + boot, doubled for a slow host.
  const runs = 2 * o.qds.length * o.engines.length * o.rounds;
  // The warm-up: a few thousand I/Os per second for our engines under TCG (bounded at 120 s per run).
  const timeoutSec =
    o.timeoutSec ??
    Math.ceil(
      2 *
        (runs *
          (o.seconds + o.ramp + 15 + Math.max(...o.qds.map((q) => warmupIosFor(o.warmupIos, q))) / 4000) +
          (8 * o.heapIos) / 500 +
          120),
    );

  const hostLoadBefore = os.loadavg().map((v) => v.toFixed(2));
  const commitAtStart = firstLine('git', ['-C', PROJECT_ROOT, 'rev-parse', 'HEAD']);
  const res = await runInLab({
    command: ['node', ...guestArgs],
    kernelArgs: o.idlePoll ? ['idle=poll'] : [],
    timeoutSec,
  });
  const hostLoadAfter = os.loadavg().map((v) => v.toFixed(2));

  if (!fs.existsSync(out)) {
    process.stderr.write(`bench: the guest wrote no results (lab exit ${res.exitCode})\n`);
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
    // The guest records the commit at the start of the run (with +dirty); the host's HEAD may have moved since.
    commit: doc.environment.commit ?? commitAtStart,
    labTimings: res.timings,
    options: {
      seconds: o.seconds,
      ramp: o.ramp,
      heapIos: o.heapIos,
      idlePoll: o.idlePoll,
      pin: o.pin,
      rounds: o.rounds,
      extra: o.extra,
      spinUs: o.spinUs,
      warmupIos: o.warmupIos,
      quick: !!o.quick,
    },
  });
  if (profDir) doc.environment.cpuProfiles = path.relative(PROJECT_ROOT, profDir);
  if (o.extra) {
    // The extra columns: the same engines and rounds in a second boot with idle=poll and pinning (no heap runs).
    const extraOut = out.replace(/\.json$/, '-idle-poll-pinned.json');
    const extraArgs = guestArgs.map((a) => (a === out ? extraOut : a));
    extraArgs[extraArgs.indexOf('--heap-ios') + 1] = '0';
    if (!extraArgs.includes('--pin')) extraArgs.push('--pin');
    const extraRes = await runInLab({
      command: ['node', ...extraArgs],
      kernelArgs: ['idle=poll'],
      timeoutSec,
    });
    if (fs.existsSync(extraOut)) {
      doc.extra = JSON.parse(fs.readFileSync(extraOut, 'utf8'));
      doc.extra.environment.accel = extraRes.accel;
      fs.rmSync(extraOut, { force: true });
      for (const f of doc.extra.failures) doc.failures.push(`idle=poll pinned: ${f}`);
    } else {
      doc.failures.push(`idle=poll pinned boot wrote no results (lab exit ${extraRes.exitCode})`);
    }
  }
  if (res.exitCode !== 0 && doc.failures.length === 0) doc.failures.push(`guest run exited ${res.exitCode}`);
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  if (o.save) {
    fs.writeFileSync(out, json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.json'), json);
  } else {
    fs.rmSync(out, { force: true });
  }

  process.stdout.write(`\n${renderTables(doc)}\n`);
  if (doc.extra) process.stdout.write(`\nExtra columns: idle=poll, pinned\n${renderTables(doc.extra)}\n`);
  if (o.save) process.stdout.write(`\nSaved ${path.relative(PROJECT_ROOT, out)} (and latest.json)\n`);
  if (doc.failures.length) {
    process.stderr.write(
      `\nbench: ${doc.failures.length} failure(s):\n${doc.failures.map((f) => `  ${f}`).join('\n')}\n`,
    );
    return 1;
  }
  return res.exitCode === 0 ? 0 : 1;
}

/**
 * `--suite blk|net|vduse|all`: blk (above), the net benchmark (scripts/bench-net.mjs), the VDUSE export
 * benchmark (scripts/bench-vduse.mjs), or all three, one boot each.
 */
async function mainWithSuite() {
  const argv = process.argv.slice(2);
  const at = argv.indexOf('--suite');
  const suite = at >= 0 ? argv[at + 1] : 'all';
  if (at >= 0) argv.splice(at, 2);
  if (!['blk', 'net', 'vduse', 'all'].includes(suite)) {
    process.stderr.write(`bench: --suite must be blk, net, vduse or all, got ${suite}\n`);
    return 2;
  }
  if (suite === 'vduse') {
    let o;
    try {
      o = parseVduseArgs(argv);
    } catch (e) {
      process.stderr.write(`bench: ${e.message}\n\n${VDUSE_HELP}\n`);
      return 2;
    }
    if (o.help) {
      process.stdout.write(`${VDUSE_HELP}\n`);
      return 0;
    }
    return runVduseBench(o);
  }
  if (suite === 'net') {
    let o;
    try {
      o = parseNetArgs(argv);
    } catch (e) {
      process.stderr.write(`bench: ${e.message}\n\n${NET_HELP}\n`);
      return 2;
    }
    if (o.help) {
      process.stdout.write(`${NET_HELP}\n`);
      return 0;
    }
    return runNetBench(o);
  }
  const blk = await main(argv);
  if (suite === 'blk' || argv.includes('--table') || argv.includes('--help')) return blk;
  const shared = ['--quick', '--idle-poll', '--no-pin', '--cpu-prof', '--no-save'].filter((a) =>
    argv.includes(a),
  );
  const net = await runNetBench(parseNetArgs(shared));
  const vduse = await runVduseBench(
    parseVduseArgs(shared.filter((a) => ['--quick', '--cpu-prof', '--no-save'].includes(a))),
  );
  return blk || net || vduse;
}

mainWithSuite().then(
  (code) => (process.exitCode = code),
  (e) => {
    process.stderr.write(`bench: ${e.message}\n`);
    process.exitCode = 1;
  },
);
