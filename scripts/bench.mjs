#!/usr/bin/env node
// `npm run bench`: builds what the benchmark needs, boots the lab once, runs bench/run-in-guest.mjs there
// (our driver in interrupt and poll mode, the C baseline, the kernel's virtio-blk with fio — all on the same
// vdpa_sim_blk device), saves bench/results/<timestamp>.json and latest.json, and prints the tables.
// See docs/bench.md. Not part of `npm test`: numbers are reported, never asserted.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT, runInLab } from './lab/index.mjs';
import { NET_HELP, parseNetArgs, runNetBench } from './bench-net.mjs';

const RESULTS_DIR = path.join(PROJECT_ROOT, 'bench', 'results');
const C_SRC = path.join(PROJECT_ROOT, 'bench', 'c-baseline', 'vdpa-blk-bench.c');
const C_BIN = path.join(PROJECT_ROOT, 'bench', 'c-baseline', 'vdpa-blk-bench');
const ENGINES = ['ours-irq', 'ours-poll', 'c-poll', 'c-event', 'kernel'];

const HELP = `Usage: npm run bench [-- options]

Runs 4 KiB random read and write at queue depth 1 and 32 on the lab's vdpa_sim_blk device, in one VM boot,
for: our driver (interrupt and poll completion), a minimal C driver (poll and event), and the kernel's
virtio-blk via virtio_vdpa with fio. Then a JS heap-growth run. Writes bench/results/<timestamp>.json and
bench/results/latest.json and prints IOPS, p50/p99 latency, CPU per I/O and the ratios.

Options:
  --seconds N        measured seconds per run (default 10)
  --ramp N           unmeasured warm-up seconds before each run (default 1)
  --heap-ios N       I/Os in the heap-growth run (default 1000000; 0 skips it)
  --quick            smoke test: --seconds 1 --ramp 0.2 --heap-ios 20000
  --idle-poll        boot the guest with idle=poll (recorded in the results)
  --engines LIST     comma-separated subset of ${ENGINES.join(',')}
  --qds LIST         queue depths (default 1,32)
  --no-pin           let the guest scheduler place the simulator's worker thread and the drivers (default:
                     worker on guest CPU 0, every driver on CPU 1)
  --spin-us N        our poll mode's pollSpinMicros (default 1000: like the C driver, keep spinning)
  --cpu-prof         also write V8 CPU profiles of our runs to bench/results/profiles-<timestamp>/
  --no-save          do not write bench/results/ (the JSON goes to a temporary file)
  --timeout SEC      bound on the VM run (default: computed from the above)
  --table FILE       only print the tables of a saved result
  --suite blk|net|all  which benchmark (default all: blk, then net in a second boot; see docs/bench.md "Net").
                     With --suite net every option is the net benchmark's (below); with all, --quick,
                     --idle-poll, --no-pin, --cpu-prof and --no-save apply to both
  --help             this text

${NET_HELP}`;

function parseArgs(argv) {
  const o = {
    seconds: 10,
    ramp: 1,
    heapIos: 1_000_000,
    idlePoll: false,
    pin: true,
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
    else if (a === '--quick') Object.assign(o, { seconds: 1, ramp: 0.2, heapIos: 20_000, quick: true });
    else if (a === '--idle-poll') o.idlePoll = true;
    else if (a === '--engines') o.engines = value().split(',');
    else if (a === '--qds') o.qds = value().split(',').map(Number);
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--no-pin') o.pin = false;
    else if (a === '--spin-us') o.spinUs = number(0);
    else if (a === '--no-save') o.save = false;
    else if (a === '--timeout') o.timeoutSec = number(1);
    else if (a === '--table') o.table = value();
    else throw new Error(`unknown option ${a}`);
  }
  for (const e of o.engines)
    if (!ENGINES.includes(e)) throw new Error(`unknown engine ${e} (have ${ENGINES.join(', ')})`);
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

const COLUMNS = [
  ['ours-irq', 'ours-irq'],
  ['ours-poll', 'ours-poll'],
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

/** results → Map(config → Map(engine → result)) in the order configs first appear. */
function byConfig(doc) {
  const m = new Map();
  for (const r of doc.results) {
    if (!m.has(r.config)) m.set(r.config, new Map());
    m.get(r.config).set(r.engine, r);
  }
  return m;
}

function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], i === 0)).join(' | ');
  return [`${title}`, line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join(
    '\n',
  );
}

/** The best of our two modes, by IOPS. */
function bestOurs(engines) {
  const c = ['ours-irq', 'ours-poll'].map((e) => engines.get(e)).filter((r) => r && !r.error);
  return c.sort((a, b) => b.iops - a.iops)[0];
}

function renderTables(doc) {
  const env = doc.environment;
  const out = [];
  out.push(
    `vdpa_sim_blk ${env.device}, kernel ${env.kernel}, ${env.accel ?? '?'} guest, ${env.cpus} vCPUs, idle=${env.idle}, ${env.pinning ? `pinned (simulator CPU ${env.pinning.simulatorCpu}, drivers CPU ${env.pinning.driverCpu})` : 'unpinned'}, ` +
      `node ${env.node}, ours-poll spins ${env.pollSpinMicros ?? 0} µs, ${env.seconds}s per run (+${env.ramp}s ramp), ${env.date}` +
      (env.hostLoadBefore
        ? `\nhost: ${env.hostCpus} CPUs, load average ${env.hostLoadBefore.join(' ')} before, ${env.hostLoadAfter?.join(' ') ?? '?'} after`
        : ''),
  );
  const configs = byConfig(doc);
  const cell = (r, f, digits) => (r === undefined ? '–' : r.error ? 'FAILED' : fmt(f(r), digits));
  const header = ['config', ...COLUMNS.map(([, h]) => h)];

  const iopsRows = [];
  for (const [config, engines] of configs) {
    const best = bestOurs(engines);
    const ok = (e) => (engines.get(e)?.error ? undefined : engines.get(e));
    iopsRows.push([
      config,
      ...COLUMNS.map(([e]) => cell(engines.get(e), (r) => r.iops)),
      fmtRatio(ratio(best?.iops, ok('kernel')?.iops)),
      fmtRatio(ratio(ok('ours-poll')?.iops, ok('c-poll')?.iops)),
      fmtRatio(ratio(ok('ours-irq')?.iops, ok('c-event')?.iops)),
    ]);
  }
  out.push('', table('IOPS', [...header, 'ours/kernel', 'poll/C-poll', 'irq/C-event'], iopsRows));
  out.push(
    '  ours/kernel uses the better of our two modes; poll/C-poll and irq/C-event compare like with like.',
  );

  const lat = (q) =>
    [...configs].map(([config, engines]) => [
      config,
      ...COLUMNS.map(([e]) => cell(engines.get(e), (r) => r[q], 1)),
    ]);
  out.push('', table('p50 latency (µs)', header, lat('p50_us')));
  out.push('', table('p99 latency (µs)', header, lat('p99_us')));
  out.push(
    '',
    table(
      'CPU time per I/O (µs, user+sys of the driver process; the simulator worker is not included)',
      header,
      lat('cpu_us_per_io'),
    ),
  );

  const errors = doc.results.filter((r) => r.error);
  if (errors.length) {
    out.push('', 'Failures:');
    for (const r of errors) out.push(`  ${r.config} ${r.engine}: ${r.error}`);
  }

  const h = doc.heap;
  if (h) {
    out.push(
      '',
      h.error
        ? `JS heap growth: FAILED ${h.error}`
        : `JS heap growth: ${fmt(h.heap_growth_bytes)} bytes over ${fmt(h.ios)} I/Os = ${h.heap_bytes_per_io.toFixed(4)} bytes/I/O ` +
            `(${h.rw} qd${h.qd} ${h.mode}, after ${fmt(h.warmup_ios)} warm-up I/Os; ${fmt(h.iops)} IOPS, ${h.seconds}s; ` +
            `external ${fmt(h.external_growth_bytes)} B, RSS ${fmt(h.rss_growth_bytes)} B)`,
    );
  }
  out.push('', ...targetLines(configs));
  return out.join('\n');
}

/** The issue's targets, evaluated (reported, not asserted). */
function targetLines(configs) {
  const lines = ['Targets (issue #4):'];
  const get = (config, e) => {
    const r = configs.get(config)?.get(e);
    return r && !r.error ? r : undefined;
  };
  const verdict = (r, ok) => (r === undefined ? 'n/a' : ok ? 'met' : 'MISSED');
  for (const [config, engines] of configs) {
    if (!config.endsWith('qd32')) continue;
    const best = bestOurs(engines);
    const r = ratio(best?.iops, get(config, 'kernel')?.iops);
    lines.push(
      `  ${config}: ours (${best?.engine ?? '–'}) / kernel IOPS ≥ 1.0×: ${fmtRatio(r)} ${verdict(r, r >= 1.0)}`,
    );
  }
  for (const [config] of configs) {
    const r = ratio(get(config, 'ours-poll')?.iops, get(config, 'c-poll')?.iops);
    lines.push(`  ${config}: ours-poll / C-poll IOPS ≥ 0.9×: ${fmtRatio(r)} ${verdict(r, r >= 0.9)}`);
  }
  for (const [config] of configs) {
    if (!config.endsWith('qd1')) continue;
    const r = ratio(get(config, 'ours-poll')?.p50_us, get(config, 'c-poll')?.p50_us);
    lines.push(`  ${config}: ours-poll / C-poll p50 latency ≤ 1.2×: ${fmtRatio(r)} ${verdict(r, r <= 1.2)}`);
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
    process.stdout.write(`${renderTables(JSON.parse(fs.readFileSync(o.table, 'utf8')))}\n`);
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
  const runs = 2 * o.qds.length * o.engines.length;
  const timeoutSec =
    o.timeoutSec ?? Math.ceil(2 * (runs * (o.seconds + o.ramp + 15) + o.heapIos / 1000 + 120));

  const hostLoadBefore = os.loadavg().map((v) => v.toFixed(2));
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
    commit: firstLine('git', ['-C', PROJECT_ROOT, 'rev-parse', '--short', 'HEAD']),
    labTimings: res.timings,
    options: {
      seconds: o.seconds,
      ramp: o.ramp,
      heapIos: o.heapIos,
      idlePoll: o.idlePoll,
      pin: o.pin,
      spinUs: o.spinUs,
      quick: !!o.quick,
    },
  });
  if (profDir) doc.environment.cpuProfiles = path.relative(PROJECT_ROOT, profDir);
  if (res.exitCode !== 0 && doc.failures.length === 0) doc.failures.push(`guest run exited ${res.exitCode}`);
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  if (o.save) {
    fs.writeFileSync(out, json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'latest.json'), json);
  } else {
    fs.rmSync(out, { force: true });
  }

  process.stdout.write(`\n${renderTables(doc)}\n`);
  if (o.save) process.stdout.write(`\nSaved ${path.relative(PROJECT_ROOT, out)} (and latest.json)\n`);
  if (doc.failures.length) {
    process.stderr.write(
      `\nbench: ${doc.failures.length} failure(s):\n${doc.failures.map((f) => `  ${f}`).join('\n')}\n`,
    );
    return 1;
  }
  return res.exitCode === 0 ? 0 : 1;
}

/** `--suite blk|net|all`: blk (above), the net benchmark (scripts/bench-net.mjs), or both, one boot each. */
async function mainWithSuite() {
  const argv = process.argv.slice(2);
  const at = argv.indexOf('--suite');
  const suite = at >= 0 ? argv[at + 1] : 'all';
  if (at >= 0) argv.splice(at, 2);
  if (!['blk', 'net', 'all'].includes(suite)) {
    process.stderr.write(`bench: --suite must be blk, net or all, got ${suite}\n`);
    return 2;
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
  return blk || net;
}

mainWithSuite().then(
  (code) => (process.exitCode = code),
  (e) => {
    process.stderr.write(`bench: ${e.message}\n`);
    process.exitCode = 1;
  },
);
