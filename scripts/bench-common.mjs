// Host-side pieces of the benchmark runners (all of scripts/bench-vduse.mjs, the command-line entry of
// scripts/bench-net.mjs; scripts/bench.mjs keeps its own): building, boot-and-collect, result files, tables.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PROJECT_ROOT, runInLab } from './lab/index.mjs';

export const RESULTS_DIR = path.join(PROJECT_ROOT, 'bench', 'results');

export function sh(tag, cmd, args, what) {
  process.stderr.write(`[${tag}] ${what}: ${cmd} ${args.join(' ')}\n`);
  const r = spawnSync(cmd, args, { cwd: PROJECT_ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`${what} failed (${r.error?.message ?? `exit ${r.status}`})`);
}

export function firstLine(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n')[0].trim() : undefined;
}

/** The addon (when missing), the library and the benchmark harness (dist-test/bench/). */
export function buildJs(tag) {
  const npx = process.platform === 'win32' ? 'npx.cmd' : 'npx';
  if (!fs.existsSync(path.join(PROJECT_ROOT, 'build', 'Release', 'vhost_vdpa.node')))
    sh(tag, npx, ['node-gyp', 'rebuild'], 'addon');
  sh(tag, npx, ['tsc', '-p', 'tsconfig.json'], 'library');
  sh(tag, npx, ['tsc', '-p', 'tsconfig.test.json'], 'benchmark harness');
}

export function timestamp(d = new Date()) {
  return d
    .toISOString()
    .replace(/[:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
}

/**
 * Boots the lab once and runs `guestArgs` (a guest script and its options, which must include `--out OUT`)
 * with node; adds the host's side of the environment (accel, host CPUs, load average before and after, lab
 * timings) to the document the guest wrote. Resolves with {doc, res}; doc is undefined when the guest wrote
 * nothing.
 */
export async function runGuestBench({ guestArgs, out, timeoutSec, kernelArgs = [] }) {
  const hostLoadBefore = os.loadavg().map((v) => v.toFixed(2));
  const commitAtStart = firstLine('git', ['-C', PROJECT_ROOT, 'rev-parse', 'HEAD']);
  const res = await runInLab({ command: ['node', ...guestArgs], kernelArgs, timeoutSec });
  const hostLoadAfter = os.loadavg().map((v) => v.toFixed(2));
  if (!fs.existsSync(out)) return { doc: undefined, res };
  const doc = JSON.parse(fs.readFileSync(out, 'utf8'));
  Object.assign(doc.environment, {
    accel: res.accel,
    hostCpus: os.cpus().length,
    hostCpuModel: os.cpus()[0]?.model,
    hostLoadBefore,
    hostLoadAfter,
    // The guest records the commit at the start of the run (with +dirty); the host's HEAD may have moved since.
    commit: doc.environment.commit ?? commitAtStart,
    labTimings: res.timings,
  });
  if (res.exitCode !== 0 && doc.failures.length === 0) doc.failures.push(`guest run exited ${res.exitCode}`);
  return { doc, res };
}

export const fmt = (v, d = 0) =>
  v === undefined || v === null || Number.isNaN(v)
    ? '–'
    : v.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });

export function table(title, header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) =>
    cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join(' | ');
  return [title, line(header), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join('\n');
}

/**
 * The command-line entry of a benchmark script run directly (`node scripts/bench-X.mjs …`): parses, prints
 * `help` on --help or after a usage error (exit 2), runs, and sets the exit code. `tag` prefixes messages.
 */
export function benchMain(tag, parse, help, run) {
  let o;
  try {
    o = parse(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`${tag}: ${e.message}\n\n${help}\n`);
    process.exit(2);
  }
  if (o.help) {
    process.stdout.write(`${help}\n`);
    process.exit(0);
  }
  run(o).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(`${tag}: ${e.message}\n`);
      process.exitCode = 1;
    },
  );
}
