// Helpers the guest sides of the benchmarks share (bench/run-in-guest.mjs, bench/vduse-in-guest.mjs): running
// a child with a bound and its output kept, parsing the engines' JSON, fio's JSON in the engines' fields, the
// vdpa bus in sysfs, and the environment fields every result document records.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BENCH_DIR = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.dirname(BENCH_DIR);
/** This package's BlockDevice load generator (bench/blk-bench.ts, compiled by tsconfig.test.json). */
export const JS_BENCH = path.join(ROOT, 'dist-test', 'bench', 'blk-bench.js');
export const KERNEL_FIO = path.join(BENCH_DIR, 'kernel-fio.sh');

export const log = (msg) => process.stderr.write(`[bench] ${msg}\n`);

/**
 * Warm-up I/Os at queue depth `qd`: `base` up to QD4, `base × qd/4` beyond. The completion path runs once per
 * batch, not per I/O, so at QD32 it needs 8× the I/Os to be called as often (see bench/run-in-guest.mjs).
 */
export function warmupIosFor(base, qd) {
  return Math.round(base * Math.max(1, qd / 4));
}

/**
 * Runs a command (on CPU `cpu` with taskset when given); resolves with {code, stdout, stderr, ms}; kills it
 * after `timeoutSec`. Its stderr is passed through live.
 */
export function run(cmd, args, timeoutSec, { cpu } = {}) {
  if (cpu !== undefined) {
    args = ['-c', String(cpu), cmd, ...args];
    cmd = 'taskset';
  }
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      process.stderr.write(d);
    });
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${timeoutSec}s]`;
      child.kill('SIGKILL');
    }, timeoutSec * 1000);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderr: `${stderr}${e.message}`, ms: Date.now() - t0 });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** The last line of `stdout` that parses as a JSON object. */
export function lastJson(stdout) {
  const lines = stdout.trim().split('\n').reverse();
  for (const l of lines) {
    if (!l.startsWith('{')) continue;
    try {
      return JSON.parse(l);
    } catch {
      /* keep looking */
    }
  }
  return undefined;
}

/** fio prints one pretty-printed JSON document (possibly after warnings). */
export function lastJsonDocument(stdout) {
  const start = stdout.indexOf('{');
  if (start < 0) return undefined;
  try {
    return JSON.parse(stdout.slice(start));
  } catch {
    return undefined;
  }
}

/** {error} for a child that failed: its status and the last lines of its stderr. */
export function failure(what, res) {
  const tail = res.stderr.trim().split('\n').slice(-3).join(' | ');
  return { error: `${what} exited ${res.code}${tail ? `: ${tail}` : ''}` };
}

/** Every line of `stdout` that parses as a JSON object, in order. */
export function jsonLines(stdout) {
  const out = [];
  for (const l of stdout.split('\n')) {
    if (!l.startsWith('{')) continue;
    try {
      out.push(JSON.parse(l));
    } catch {
      /* not one */
    }
  }
  return out;
}

/** Converts fio's JSON (job `job`, by default the first) into the fields the other engines report. */
export function fromFio(fio, rw, job = fio.jobs[0]) {
  const side = rw === 'randread' ? job.read : job.write;
  const ios = side.total_ios;
  const seconds = job.job_runtime / 1000; // ms, excluding ramp
  // With --lat_percentiles=1 the submission-to-completion latency has percentiles (what the other engines
  // measure); clat (issue-to-completion) is kept for reference.
  const pct = (obj, p) => (obj?.percentile?.[p] !== undefined ? obj.percentile[p] / 1000 : null);
  const lat = side.lat_ns?.percentile ? side.lat_ns : side.clat_ns;
  return {
    engine: 'kernel',
    mode: 'interrupt',
    rw,
    qd: Number(job['job options'].iodepth),
    ioengine: job['job options'].ioengine,
    fio: fio['fio version'],
    seconds,
    ios,
    iops: side.iops,
    p50_us: pct(lat, '50.000000'),
    p99_us: pct(lat, '99.000000'),
    mean_us: lat.mean / 1000,
    percentiles_us: Object.fromEntries(
      Object.entries(lat.percentile ?? {}).map(([k, v]) => [String(Number(k)), v / 1000]),
    ),
    clat_p50_us: pct(side.clat_ns, '50.000000'),
    clat_p99_us: pct(side.clat_ns, '99.000000'),
    // usr_cpu/sys_cpu are percentages of the job's runtime.
    cpu_us_per_io: ios ? (((job.usr_cpu + job.sys_cpu) / 100) * job.job_runtime * 1000) / ios : null,
    errors: job.error ?? 0,
  };
}

/** The bus driver vdpa device `name` is bound to ('none' when unbound). */
export function driverOf(name) {
  try {
    return path.basename(fs.readlinkSync(`/sys/bus/vdpa/devices/${name}/driver`));
  } catch {
    return 'none';
  }
}

/** The /dev/vhost-vdpa-N of vdpa device `name` right now (it can change after a rebind). */
export function vhostChardev(name) {
  const dir = `/sys/bus/vdpa/devices/${name}`;
  const entry = fs.readdirSync(dir).find((e) => e.startsWith('vhost-vdpa-'));
  if (!entry) throw new Error(`${name} is not bound to vhost_vdpa (driver: ${driverOf(name)})`);
  return `/dev/${entry}`;
}

export function readFirstLine(file) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n')[0].trim();
  } catch {
    return undefined;
  }
}

/**
 * Whether the guest's CPU offers protection keys (`pku` in /proc/cpuinfo). Under TCG they make every context
 * switch of a Node thread flush the vCPU's TLB (docs/lab.md, "Accelerator"), so results record it.
 */
export function cpuHasPku() {
  try {
    return /^flags\s*:.*\bpku\b/m.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return null;
  }
}

/** HEAD of the project tree (`+dirty` with uncommitted changes), or $VDPA_BENCH_COMMIT. */
export function gitCommit() {
  if (process.env.VDPA_BENCH_COMMIT) return process.env.VDPA_BENCH_COMMIT;
  const head = spawnSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' });
  if (head.status !== 0) return null;
  const dirty = spawnSync('git', ['status', '--porcelain', '--untracked-files=no'], {
    cwd: ROOT,
    encoding: 'utf8',
  });
  return `${head.stdout.trim()}${dirty.stdout?.trim() ? '+dirty' : ''}`;
}

/** The median of the finite numbers in `values` (undefined when none). */
export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((x, y) => x - y);
  if (v.length === 0) return undefined;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

/**
 * The lab's host records its vCPU threads' CPU time when a label is written to /run/lab/vcpu-mark
 * (scripts/lab/vcpu-times.mjs); the engines write `LABEL-start` and `LABEL-end` at their measured window's
 * edges (`--vcpu-mark LABEL`).
 */
export const LAB_RUN_DIR = '/run/lab';

/**
 * Host CPU µs per I/O of each vCPU thread between `LABEL-start` and `LABEL-end`, and their sum:
 * `{ vcpus: number[], total: number }`, or undefined when the host did not record both (not in the lab, or
 * an old lab runner). Waits up to 2 s for the end line (the host polls every 10 ms).
 */
export async function hostVcpuUsPerIo(label, ios) {
  const file = path.join(LAB_RUN_DIR, 'vcpu-times');
  const parse = (line) => {
    const [name, , ...pairs] = line.trim().split(' ');
    return { name, cpus: Object.fromEntries(pairs.map((p) => p.split('=')).map(([k, v]) => [k, Number(v)])) };
  };
  for (let waited = 0; waited <= 2000; waited += 20) {
    let lines = [];
    try {
      lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean).map(parse);
    } catch {
      // not written yet
    }
    const start = lines.findLast((l) => l.name === `${label}-start`);
    const end = lines.findLast((l) => l.name === `${label}-end`);
    if (start && end && ios > 0) {
      const vcpus = Object.keys(end.cpus)
        .filter((k) => k in start.cpus)
        .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
        .map((k) => Math.round(((end.cpus[k] - start.cpus[k]) / 1000 / ios) * 100) / 100);
      if (vcpus.length === 0) return undefined;
      return { vcpus, total: Math.round(vcpus.reduce((a, b) => a + b, 0) * 100) / 100 };
    }
    if (!fs.existsSync(LAB_RUN_DIR)) return undefined;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return undefined;
}
