#!/usr/bin/env node
// `npm run bench:vduse` (also part of `npm run bench`, or `npm run bench -- --suite vduse`): boots the lab once
// and runs bench/vduse-in-guest.mjs there — qemu-storage-daemon's vduse-blk export against ours
// (`vhost-vdpa vduse blk --file`), each on a tmpfs-backed file, driven by the kernel's virtio-blk + fio and by
// our BlockDevice, alternating per round — saves bench/results/vduse-<timestamp>.json and vduse-latest.json
// with the commit, and prints IOPS, latency and ours ÷ qsd per cell. See docs/bench.md ("VDUSE export").
// Numbers are reported, never asserted.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { median } from '../bench/guest-lib.mjs';
import { RESULTS_DIR, benchMain, buildJs, fmt, runGuestBench, table, timestamp } from './bench-common.mjs';
import { PROJECT_ROOT } from './lab/index.mjs';

export const VDUSE_HELP = `VDUSE options (npm run bench:vduse -- …, or npm run bench -- --suite vduse …):
  --seconds N        measured seconds per run (default 4)
  --ramp N           unmeasured warm-up seconds before each run (default 1)
  --warmup-ios N     I/Os our BlockDevice completes, unmeasured, before the ramp (default 200: under TCG a few
                     hundred I/Os take seconds, and the device's latency dwarfs the driver's JIT state)
  --rounds N         rounds; the exporters alternate order per round (default 2; the tables show medians)
  --qds LIST         queue depths (default 1,32)
  --drivers LIST     kernel,ours (default both)
  --size-mib N       file size per exporter (default 256)
  --queue-size N     ring size of both exporters (default 128)
  --ref-cli FILE     also run the exporter "ref": another build's dist/cli/main.js (inside the project tree,
                     which the guest mounts), for before/after comparisons of device changes in one boot
  --cpu-prof         V8 CPU profiles of our exporter process (main thread and device Worker) →
                     bench/results/vduse-profiles-<timestamp>/ (summarise with bench/profile-summary.mjs)
  --quick            smoke test: --seconds 1 --ramp 0.2 --rounds 1 --warmup-ios 50
  --no-save          do not write bench/results/
  --timeout SEC      bound on the VM run
  --table FILE       only print the tables of a saved result`;

export function parseVduseArgs(argv) {
  const o = { seconds: 4, ramp: 1, rounds: 2, warmupIos: 200, save: true };
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
    else if (a === '--warmup-ios') o.warmupIos = Math.floor(number(0));
    else if (a === '--rounds') o.rounds = Math.floor(number(1));
    else if (a === '--qds') o.qds = value();
    else if (a === '--drivers') o.drivers = value();
    else if (a === '--size-mib') o.sizeMiB = Math.floor(number(1));
    else if (a === '--queue-size') o.queueSize = Math.floor(number(4));
    else if (a === '--ref-cli') o.refCli = path.resolve(value());
    else if (a === '--cpu-prof') o.cpuProf = true;
    else if (a === '--quick')
      Object.assign(o, { seconds: 1, ramp: 0.2, rounds: 1, warmupIos: 50, quick: true });
    else if (a === '--no-save') o.save = false;
    else if (a === '--timeout') o.timeoutSec = number(1);
    else if (a === '--table') o.table = value();
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

// ---- tables ------------------------------------------------------------------------------------------------

const ratio = (a, b) => (a > 0 && b > 0 ? a / b : undefined);
const fmtRatio = (r) => (r === undefined ? '–' : `${r.toFixed(2)}×`);

/** results → Map(config → Map(exporter → {runs, iops, p50_us, p99_us, error})) of medians over rounds. */
function byConfig(doc) {
  const m = new Map();
  for (const r of doc.results) {
    if (!m.has(r.config)) m.set(r.config, new Map());
    const row = m.get(r.config);
    if (!row.has(r.exporter)) row.set(r.exporter, { runs: [], error: undefined });
    const cell = row.get(r.exporter);
    if (r.error) cell.error ??= r.error;
    else cell.runs.push(r);
  }
  for (const row of m.values())
    for (const cell of row.values()) {
      for (const k of ['iops', 'p50_us', 'p99_us']) cell[k] = median(cell.runs.map((r) => r[k]));
      if (cell.runs.length > 0) cell.error = undefined;
    }
  return m;
}

/** Per-round ratios of IOPS a/b, e.g. "0.91, 1.02". */
function perRound(row, a, b) {
  const out = [];
  for (const x of row.get(a)?.runs ?? []) {
    const y = (row.get(b)?.runs ?? []).find((r) => r.round === x.round);
    const q = ratio(x.iops, y?.iops);
    if (q !== undefined) out.push(q.toFixed(2));
  }
  return out.join(', ') || '–';
}

export function renderVduseTables(doc) {
  const env = doc.environment;
  const exporters = doc.exporters.map((e) => e.kind);
  const configs = byConfig(doc);
  const out = [
    `VDUSE block exports, ${env.backing}, queue size ${env.queueSize}, 1 queue; kernel ${env.kernel}, ` +
      `${env.accel ?? '?'} guest, ${env.cpus} vCPUs, node ${env.node}, ${env.fio ?? 'fio ?'}; ` +
      `${env.seconds}s per run (+${env.ramp}s ramp; our BlockDevice after ${env.warmupIos} warm-up I/Os), ` +
      `${env.rounds} round(s), medians; commit ${env.commit ?? '?'}, ${env.date}`,
    `exporters: ${doc.exporters.map((e) => `${e.kind} = ${e.version}`).join('; ')}`,
    `load average: host (${env.hostCpus ?? '?'} CPUs) ${env.hostLoadBefore?.join(' ') ?? '?'} before, ` +
      `${env.hostLoadAfter?.join(' ') ?? '?'} after; guest ${env.guestLoadBefore?.join(' ') ?? '?'} before, ` +
      `${env.guestLoadAfter?.join(' ') ?? '?'} after`,
  ];
  const cell = (c, f, d = 0) => (c === undefined ? '–' : c.error ? 'FAILED' : fmt(f(c), d));
  const ok = (row, e) => (row.get(e)?.error ? undefined : row.get(e));
  const ratioCols = [];
  if (exporters.includes('ours') && exporters.includes('qsd')) ratioCols.push(['ours', 'qsd']);
  if (exporters.includes('ref') && exporters.includes('qsd')) ratioCols.push(['ref', 'qsd']);
  if (exporters.includes('ours') && exporters.includes('ref')) ratioCols.push(['ours', 'ref']);
  const rows = [...configs].map(([config, row]) => [
    config,
    ...exporters.map((e) => cell(row.get(e), (c) => c.iops)),
    ...ratioCols.map(([a, b]) => fmtRatio(ratio(ok(row, a)?.iops, ok(row, b)?.iops))),
    ...ratioCols.map(([a, b]) => perRound(row, a, b)),
  ]);
  out.push(
    '',
    table(
      'IOPS (median; driver rw queue-depth)',
      [
        'driver rw qd',
        ...exporters,
        ...ratioCols.map(([a, b]) => `${a}/${b}`),
        ...ratioCols.map(([a, b]) => `${a}/${b} per round`),
      ],
      rows,
    ),
  );
  for (const [k, title] of [
    ['p50_us', 'p50 latency (µs, median)'],
    ['p99_us', 'p99 latency (µs, median)'],
  ]) {
    out.push(
      '',
      table(
        title,
        ['driver rw qd', ...exporters],
        [...configs].map(([config, row]) => [
          config,
          ...exporters.map((e) => cell(row.get(e), (c) => c[k], 1)),
        ]),
      ),
    );
  }
  if (exporters.includes('ours') && exporters.includes('qsd')) {
    out.push('', 'Target (issue 11): ours ≥ 1.0× qemu-storage-daemon, per cell:');
    for (const [config, row] of configs) {
      const r = ratio(ok(row, 'ours')?.iops, ok(row, 'qsd')?.iops);
      out.push(`  ${config}: ${fmtRatio(r)} ${r === undefined ? 'n/a' : r >= 1 ? 'met' : 'MISSED'}`);
    }
  }
  if (doc.failures.length) out.push('', 'Failures:', ...doc.failures.map((f) => `  ${f}`));
  return out.join('\n');
}

// ---- main --------------------------------------------------------------------------------------------------

/** Builds, boots, runs, saves, prints; resolves with an exit status. */
export async function runVduseBench(o) {
  if (o.table) {
    process.stdout.write(`${renderVduseTables(JSON.parse(fs.readFileSync(o.table, 'utf8')))}\n`);
    return 0;
  }
  buildJs('bench-vduse');
  const stamp = timestamp();
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const out = path.join(RESULTS_DIR, o.save ? `vduse-${stamp}.json` : `.tmp-vduse-${stamp}.json`);
  const args = ['bench/vduse-in-guest.mjs', '--out', out, '--seconds', String(o.seconds)];
  args.push('--ramp', String(o.ramp), '--rounds', String(o.rounds), '--warmup-ios', String(o.warmupIos));
  if (o.qds) args.push('--qds', o.qds);
  if (o.drivers) args.push('--drivers', o.drivers);
  if (o.sizeMiB) args.push('--size-mib', String(o.sizeMiB));
  if (o.queueSize) args.push('--queue-size', String(o.queueSize));
  if (o.refCli) {
    if (!o.refCli.startsWith(`${PROJECT_ROOT}${path.sep}`))
      throw new Error(`--ref-cli must be inside ${PROJECT_ROOT} (the guest sees only the project tree)`);
    args.push('--exporters', 'qsd,ours,ref', '--ref-cli', o.refCli);
  }
  let profDir;
  if (o.cpuProf) {
    profDir = path.join(RESULTS_DIR, `vduse-profiles-${stamp}`);
    fs.mkdirSync(profDir, { recursive: true });
    args.push('--cpu-prof', profDir);
  }
  const exporters = o.refCli ? 3 : 2;
  const configs = (o.qds ?? '1,32').split(',').length * 2;
  const drivers = (o.drivers ?? 'kernel,ours').split(',').length;
  const runs = o.rounds * exporters * drivers * configs;
  // Per run: the window, the ramp, a node start and warm-up for ours (a rebind per exporter and round for the
  // kernel); plus the boot and the exporters' start, doubled for a slow host.
  const timeoutSec = o.timeoutSec ?? Math.ceil(2 * (runs * (o.seconds + o.ramp + 12) + 240));
  const { doc, res } = await runGuestBench({ guestArgs: args, out, timeoutSec });
  if (!doc) {
    process.stderr.write(`bench-vduse: the guest wrote no results (lab exit ${res.exitCode})\n`);
    return res.exitCode || 1;
  }
  doc.environment.options = { ...o };
  if (profDir) doc.environment.cpuProfiles = path.relative(PROJECT_ROOT, profDir);
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  if (o.save) {
    fs.writeFileSync(out, json);
    fs.writeFileSync(path.join(RESULTS_DIR, 'vduse-latest.json'), json);
  } else fs.rmSync(out, { force: true });
  process.stdout.write(`\n${renderVduseTables(doc)}\n`);
  if (o.save) process.stdout.write(`\nSaved ${path.relative(PROJECT_ROOT, out)} (and vduse-latest.json)\n`);
  if (doc.failures.length) return 1;
  return res.exitCode === 0 ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url))
  benchMain('bench-vduse', parseVduseArgs, VDUSE_HELP, runVduseBench);
