/**
 * The benchmark's load generator for this package's driver: 4 KiB random reads
 * or writes through {@link BlockDevice} at a fixed queue depth, in interrupt
 * or poll completion mode, using zero-copy buffers from `allocBuffer()`.
 *
 *   node --expose-gc dist-test/bench/blk-bench.js --device /dev/vhost-vdpa-0 --rw randread
 *        [--qd 1] [--seconds 10] [--ramp 0] [--mode interrupt|poll] [--spin-us 0] [--bs 4096]
 *        [--warmup-ios 20000] [--heap-ios N]
 *
 * Prints one JSON object (the same fields as bench/c-baseline/vdpa-blk-bench):
 * iops, p50_us, p99_us, cpu_us_per_io, ios, seconds. Before the ramp it completes
 * `--warmup-ios` I/Os, unmeasured, so that V8 has compiled and optimised the
 * hot path whatever the machine's speed (a time-based ramp under TCG can end
 * before TurboFan has done so, and then the window measures the compiler);
 * `thread_cpu_ms.others` (V8's and libuv's helper threads inside the window)
 * shows whether that held. With `--heap-ios N` it
 * instead runs N I/Os between two full GCs and reports the heap growth per I/O.
 *
 * The harness itself allocates nothing per I/O: latencies go into a
 * preallocated histogram, offsets come from an integer xorshift, buffers are
 * reused. What remains per I/O is the driver's own work (its promise).
 */
import fs from 'node:fs';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { BlockDevice, CompletionMode } from '../lib';

interface Options {
  device: string;
  write: boolean;
  qd: number;
  seconds: number;
  ramp: number;
  mode: CompletionMode;
  spinMicros: number;
  bs: number;
  heapIos: number;
  /** I/Os completed, unmeasured, before the ramp (JIT warm-up by count, not time). */
  warmupIos: number;
  seed: number;
  /**
   * `zero-copy`: readInto()/write() on allocBuffer() buffers; `bounce`: read() (a new Buffer) / write() of an
   * ordinary Buffer; `callback`: readIntoCallback()/writeCallback() on allocBuffer() buffers (no Promise).
   */
  api: 'zero-copy' | 'bounce' | 'callback';
  /** Request queues per device (scale runs). */
  queues: number;
  /** Scale runs: each device in its own worker thread of this process (`--threads`), not all on the main thread. */
  threads: boolean;
  /** `--rw` and `--qd` lists: every combination, one after the other on the device opened once (rw-major). */
  matrix: { write: boolean; qd: number }[];
  /**
   * In the lab: `LABEL-start` / `LABEL-end` are written to {@link VCPU_MARK_FILE} when the measured window
   * starts and ends, so the host records its vCPU threads' CPU time for the window (scripts/lab/vcpu-times.mjs).
   */
  vcpuMark: string | undefined;
}

/** The lab's guest→host request for vCPU CPU times (scripts/lab/vcpu-times.mjs). */
const VCPU_MARK_FILE = '/run/lab/vcpu-mark';

const USAGE = `Usage: node --expose-gc dist-test/bench/blk-bench.js --device /dev/vhost-vdpa-N --rw randread|randwrite
  [--qd N] [--seconds S] [--ramp S] [--mode interrupt|poll] [--spin-us US] [--bs BYTES] [--warmup-ios N] [--heap-ios N] [--seed N] [--api zero-copy|bounce|callback] [--queues N] [--threads] [--vcpu-mark LABEL]
  --vcpu-mark LABEL: in the lab, ask the host for its vCPU threads' CPU time at the window's start and end
  --device A,B,…: one process drives every device (scale), --qd loops per queue; with --threads, each device
    from its own worker thread (interrupt mode)
  --rw randread,randwrite and/or --qd 1,32: every combination in turn (one JSON line each; saves process starts)`;

class UsageError extends Error {}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    device: '',
    write: false,
    qd: 1,
    seconds: 10,
    ramp: 0,
    mode: 'interrupt',
    spinMicros: 0,
    bs: 4096,
    heapIos: 0,
    warmupIos: 20_000,
    seed: 1,
    api: 'zero-copy',
    queues: 1,
    threads: false,
    matrix: [],
    vcpuMark: undefined,
  };
  let rw: string | undefined;
  let qds = ['1'];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (): string => {
      if (i + 1 >= argv.length) throw new UsageError(`${a} needs a value`);
      return argv[++i];
    };
    const number = (min: number, max: number): number => {
      const v = Number(value());
      if (!Number.isFinite(v) || v < min || v > max)
        throw new UsageError(`${a}: expected a number in [${min}, ${max}]`);
      return v;
    };
    if (a === '--device') o.device = value();
    else if (a === '--rw') rw = value();
    else if (a === '--qd') qds = value().split(',');
    else if (a === '--seconds') o.seconds = number(0.001, 86400);
    else if (a === '--ramp') o.ramp = number(0, 3600);
    else if (a === '--mode') {
      const m = value();
      if (m !== 'interrupt' && m !== 'poll')
        throw new UsageError(`--mode: expected interrupt or poll, got ${m}`);
      o.mode = m;
    } else if (a === '--spin-us') o.spinMicros = number(0, 1e6);
    else if (a === '--bs') o.bs = Math.floor(number(512, 1 << 20));
    else if (a === '--heap-ios') o.heapIos = Math.floor(number(1, 1e12));
    else if (a === '--warmup-ios') o.warmupIos = Math.floor(number(0, 1e9));
    else if (a === '--seed') o.seed = Math.floor(number(1, 0x7fffffff));
    else if (a === '--queues') o.queues = Math.floor(number(1, 64));
    else if (a === '--threads') o.threads = true;
    else if (a === '--vcpu-mark') o.vcpuMark = value();
    else if (a === '--api') {
      const v = value();
      if (v !== 'zero-copy' && v !== 'bounce' && v !== 'callback')
        throw new UsageError(`--api: expected zero-copy, bounce or callback, got ${v}`);
      o.api = v;
    } else throw new UsageError(`unknown option ${a}`);
  }
  if (o.device === '') throw new UsageError('--device is required');
  for (const r of (rw ?? '').split(',')) {
    if (r !== 'randread' && r !== 'randwrite')
      throw new UsageError(`--rw: expected randread or randwrite, got ${String(rw)}`);
    for (const q of qds) {
      const qd = Number(q);
      if (!Number.isInteger(qd) || qd < 1 || qd > 1024)
        throw new UsageError(`--qd: expected integers in [1, 1024], got ${qds.join(',')}`);
      o.matrix.push({ write: r === 'randwrite', qd });
    }
  }
  o.write = o.matrix[0].write;
  o.qd = o.matrix[0].qd;
  if (o.matrix.length > 1 && (o.heapIos > 0 || o.device.includes(',') || o.queues > 1))
    throw new UsageError('--rw/--qd lists go only with a timed run on one device and one queue');
  if (o.threads && (!o.device.includes(',') || o.mode !== 'interrupt'))
    throw new UsageError('--threads goes with several devices (--device A,B,…) in interrupt mode');
  return o;
}

/** Latency histogram: 100 ns buckets up to 100 ms (as in the C baseline), filled without allocating. */
class Histogram {
  static readonly BUCKET_US = 0.1;
  readonly counts = new Uint32Array(1_000_000);
  total = 0;
  overflow = 0;
  sumUs = 0;
  maxUs = 0;

  /** Empties it (after the warm-up, which fills it through the same code as the window). */
  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.overflow = 0;
    this.sumUs = 0;
    this.maxUs = 0;
  }

  add(us: number): void {
    const b = Math.floor(us / Histogram.BUCKET_US);
    if (b < this.counts.length) this.counts[b]++;
    else this.overflow++;
    if (us > this.maxUs) this.maxUs = us;
    this.sumUs += us;
    this.total++;
  }

  /** Bucket midpoint (µs) at which at least fraction `q` of the samples lie at or below. */
  quantile(q: number): number {
    if (this.total === 0) return 0;
    const rank = Math.max(1, Math.round(q * this.total));
    let seen = 0;
    for (let b = 0; b < this.counts.length; b++) {
      seen += this.counts[b];
      if (seen >= rank) return (b + 0.5) * Histogram.BUCKET_US;
    }
    return this.maxUs;
  }
}

/** The percentiles every engine reports (fio's default list), for the latency plots in docs/bench.md. */
const PERCENTILES = [1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9];

/** CPU time (ms) of the main thread (`main`) and of all other threads together (`others`: V8 and libuv helpers). */
function threadCpuMs(): Record<string, number> {
  const out: Record<string, number> = { main: 0, others: 0 };
  const tick = 10; // USER_HZ is 100 on Linux
  try {
    for (const tid of fs.readdirSync('/proc/self/task')) {
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ms = (Number(f[11]) + Number(f[12])) * tick;
      const main = Number(tid) === process.pid;
      out[main ? 'main' : 'others'] += ms;
      // The others by thread name as well ("others:NAME"): whose CPU it is, where the runtime names its threads
      // (Node 20 names them all "node"; newer libuv names its pool "libuv-worker").
      if (!main) {
        const key = `others:${stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'))}`;
        out[key] = (out[key] ?? 0) + ms;
      }
    }
  } catch {
    // not Linux: no per-thread numbers
  }
  return out;
}

function diffMs(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of Object.keys(b)) if (b[k] - (a[k] ?? 0) > 0) out[k] = b[k] - (a[k] ?? 0);
  return out;
}

const round1 = (v: number): number => Math.round(v * 10) / 10;
const round2 = (v: number): number => Math.round(v * 100) / 100;

/** Drives `qd` concurrent request loops; one instance per measurement. */
class LoadGenerator {
  readonly #device: BlockDevice;
  readonly #o: Options;
  readonly #buffers: Buffer[];
  readonly #blocks: number;
  #rng: number;
  /** Time phase: latencies are recorded for completions in [measureFrom, stopAt). Doubles from the start: a field
   * that turns from an integer into a double mid-run deoptimises the code that reads it. */
  measureFrom = -Infinity;
  stopAt = Infinity;
  /** Count phase: no new request once `issued` reaches it. */
  issueLimit = Infinity;
  issued = 0;
  ios = 0;
  firstError: Error | undefined;
  readonly histogram = new Histogram();
  cpuAtStart: NodeJS.CpuUsage | undefined;
  startedAt = 0;
  cpuAtStop: NodeJS.CpuUsage | undefined;
  threadsAtStart: Record<string, number> | undefined;
  threadsAtStop: Record<string, number> | undefined;

  constructor(device: BlockDevice, o: Options) {
    this.#device = device;
    this.#o = o;
    this.#blocks = Math.floor(device.capacity / o.bs);
    this.#rng = o.seed | 0 || 1;
    this.#buffers = [];
    for (let i = 0; i < o.qd; i++) {
      const b = o.api === 'bounce' ? Buffer.alloc(o.bs) : device.allocBuffer(o.bs);
      b.fill(0xa5 ^ i);
      this.#buffers.push(b);
    }
  }

  /** xorshift32: the next block index, in integers (no allocation). */
  #nextOffset(): number {
    let s = this.#rng;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    this.#rng = s;
    return ((s >>> 0) % this.#blocks) * this.#o.bs;
  }

  /**
   * Starts a new phase on the same instance: counters, histogram and window marks cleared, limits open.
   * The warm-up and the measured window run on one instance so that the code V8 optimised during the warm-up
   * is the code the window runs: a second instance made the loop deoptimise at the start of the window
   * ("wrong map": the fields' representations differed) and V8 compiled 16–32 functions again inside it.
   */
  nextPhase(): void {
    this.issued = 0;
    this.ios = 0;
    this.histogram.reset();
    this.cpuAtStart = undefined;
    this.cpuAtStop = undefined;
    this.threadsAtStart = undefined;
    this.threadsAtStop = undefined;
    this.startedAt = 0;
    this.measureFrom = -Infinity;
    this.stopAt = Infinity;
    this.issueLimit = Infinity;
  }

  /**
   * Timed run with a warm-up, as the C driver does it: the first `ios` completions (or those of the first
   * WARMUP_MAX_SECONDS) are the warm-up, then the ramp and the window follow in the same run — the loops never
   * stop in between, so nothing drains and nothing V8 optimised is thrown away. During the warm-up latencies are
   * recorded too (the window's code path is then warm); the warm-up's end clears them.
   */
  startAfterWarmup(ios: number, rampMs: number, windowMs: number): void {
    this.nextPhase();
    this.#rampMs = rampMs;
    this.#windowMs = windowMs;
    const now = performance.now();
    this.#warmupStarted = now;
    if (ios <= 0) {
      this.measureFrom = now + rampMs;
      this.stopAt = this.measureFrom + windowMs;
      return;
    }
    this.#warmupLeft = ios;
    this.#warmupDeadline = now + WARMUP_MAX_SECONDS * 1000;
    this.#warmupThreads = threadCpuMs();
  }

  /** What the warm-up did (count, seconds, helper-thread CPU), once it is over. */
  warmup: Record<string, unknown> = { warmup_ios: 0 };

  #warmupLeft = 0;
  #warmupDeadline = Infinity;
  #warmupStarted = 0;
  #warmupThreads: Record<string, number> = {};
  #rampMs = 0;
  #windowMs = 0;

  #endWarmup(t1: number): void {
    this.#warmupLeft = 0;
    this.warmup = {
      warmup_ios: this.ios + 1, // this completion, which ends it, is the last of the warm-up
      warmup_seconds: round1((t1 - this.#warmupStarted) / 1000),
      warmup_thread_cpu_ms: diffMs(this.#warmupThreads, threadCpuMs()),
    };
    this.ios = 0;
    this.histogram.reset();
    this.cpuAtStart = undefined;
    this.threadsAtStart = undefined;
    this.measureFrom = t1 + this.#rampMs;
    this.stopAt = this.measureFrom + this.#windowMs;
  }

  /** Runs the `qd` loops until the time or count limit; resolves when all have stopped. */
  async run(): Promise<void> {
    const loops: Promise<void>[] = [];
    const loop = this.#o.api === 'callback' ? this.#callbackLoop.bind(this) : this.#loop.bind(this);
    for (let i = 0; i < this.#o.qd; i++) loops.push(loop(this.#buffers[i]));
    await Promise.all(loops);
  }

  /** `--api callback`: the same loop with readIntoCallback()/writeCallback(): one closure per slot, no Promise per I/O. */
  #callbackLoop(buffer: Buffer): Promise<void> {
    const device = this.#device;
    const write = this.#o.write;
    return new Promise<void>((resolve) => {
      let t0 = 0;
      const issue = (): void => {
        if (this.firstError !== undefined || this.issued >= this.issueLimit) return resolve();
        t0 = performance.now();
        if (t0 >= this.stopAt) {
          if (this.cpuAtStop === undefined) {
            this.cpuAtStop = process.cpuUsage();
            this.threadsAtStop = threadCpuMs();
            this.#markWindow('end');
          }
          return resolve();
        }
        this.issued++;
        if (write) device.writeCallback(this.#nextOffset(), buffer, done);
        else device.readIntoCallback(this.#nextOffset(), buffer, done);
      };
      const done = (error: Error | null): void => {
        if (error !== null) {
          this.firstError ??= error;
          return resolve();
        }
        this.#record(t0);
        issue();
      };
      issue();
    });
  }

  /**
   * `--vcpu-mark`: asks the lab's host for its vCPU times (twice per run, never per I/O). Not during the
   * warm-up, whose completions also pass through the window's start (it ends by starting the window afresh).
   */
  #markWindow(edge: 'start' | 'end'): void {
    if (this.#o.vcpuMark === undefined || this.#warmupLeft > 0) return;
    fs.writeFileSync(VCPU_MARK_FILE, `${this.#o.vcpuMark}-${edge}\n`);
  }

  /** Counts a completed I/O that started at `t0` if it ended inside the measured window. */
  #record(t0: number): void {
    const t1 = performance.now();
    if (this.#warmupLeft > 0 && (--this.#warmupLeft === 0 || t1 >= this.#warmupDeadline)) this.#endWarmup(t1);
    if (t1 >= this.measureFrom && t1 < this.stopAt) {
      if (this.cpuAtStart === undefined) {
        this.cpuAtStart = process.cpuUsage();
        this.threadsAtStart = threadCpuMs();
        this.startedAt = t1;
        this.#markWindow('start');
      }
      this.histogram.add((t1 - t0) * 1000);
      this.ios++;
    }
  }

  async #loop(buffer: Buffer): Promise<void> {
    const device = this.#device;
    const write = this.#o.write;
    const bounce = this.#o.api === 'bounce';
    while (this.firstError === undefined && this.issued < this.issueLimit) {
      const t0 = performance.now();
      if (t0 >= this.stopAt) {
        if (this.cpuAtStop === undefined) {
          this.cpuAtStop = process.cpuUsage();
          this.threadsAtStop = threadCpuMs();
          this.#markWindow('end');
        }
        return;
      }
      this.issued++;
      try {
        if (write) await device.write(this.#nextOffset(), buffer);
        else if (bounce) await device.read(this.#nextOffset(), buffer.length);
        else await device.readInto(this.#nextOffset(), buffer);
      } catch (error) {
        this.firstError ??= error as Error;
        return;
      }
      this.#record(t0);
    }
  }
}

function cpuMicros(a: NodeJS.CpuUsage, b: NodeJS.CpuUsage): number {
  return b.user - a.user + (b.system - a.system);
}

/** Longest warm-up: on a starved machine the count may take long; the window then reports what it got. */
const WARMUP_MAX_SECONDS = 120;

async function timed(device: BlockDevice, o: Options): Promise<Record<string, unknown>> {
  const gen = new LoadGenerator(device, o);
  // GC entries arrive later than they happen: keep them all and count those inside the window at the end.
  const gcEntries: { start: number; ms: number }[] = [];
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcEntries.push({ start: e.startTime, ms: e.duration });
  });
  gcObserver.observe({ entryTypes: ['gc'] });
  gen.startAfterWarmup(o.warmupIos, o.ramp * 1000, o.seconds * 1000);
  await gen.run();
  gcObserver.disconnect();
  if (gen.firstError !== undefined) throw gen.firstError;
  const inWindow = gcEntries.filter((e) => e.start >= gen.measureFrom && e.start < gen.stopAt);
  const gcs = inWindow.length;
  const gcMs = inWindow.reduce((sum, e) => sum + e.ms, 0);
  if (gen.cpuAtStart === undefined || gen.cpuAtStop === undefined || gen.ios === 0) {
    throw new Error('no request completed inside the measured interval');
  }
  // The window ends at stopAt (requests still in flight then complete after it and are not counted).
  const seconds = (gen.stopAt - gen.startedAt) / 1000;
  const h = gen.histogram;
  const s = device.stats;
  return {
    engine: 'ours',
    mode: o.mode,
    rw: o.write ? 'randwrite' : 'randread',
    api: o.api,
    qd: o.qd,
    bs: o.bs,
    queue_size: device.queueSize,
    seconds: Math.round(seconds * 1000) / 1000,
    ios: gen.ios,
    iops: round1(gen.ios / seconds),
    p50_us: round1(h.quantile(0.5)),
    p99_us: round1(h.quantile(0.99)),
    mean_us: round1(h.sumUs / h.total),
    max_us: round1(h.maxUs),
    cpu_us_per_io: round2(cpuMicros(gen.cpuAtStart, gen.cpuAtStop) / gen.ios),
    errors: 0,
    ...gen.warmup,
    percentiles_us: Object.fromEntries(PERCENTILES.map((p) => [String(p), round1(h.quantile(p / 100))])),
    // Diagnostics: CPU ms per thread inside the window, and V8 garbage collections (count, ms on the main thread).
    thread_cpu_ms: diffMs(gen.threadsAtStart ?? {}, gen.threadsAtStop ?? {}),
    gc: { count: gcs, ms: round1(gcMs) },
    // Whole-run driver counters (ramp included), per device request: how often it kicked, woke, polled.
    per_io: {
      kicks: round2(s.kicks / s.deviceRequests),
      kicks_suppressed: round2(s.kicksSuppressed / s.deviceRequests),
      interrupts: round2(s.interrupts / s.deviceRequests),
      polls: round2(s.polls / s.deviceRequests),
      poll_yields: round2(s.pollYields / s.deviceRequests),
      bounced: round2(s.bounced / s.deviceRequests),
    },
    notification: device.notification,
    features: device.featureNames,
  };
}

/** Heap growth over `heapIos` I/Os, measured between two full collections after a warm-up. */
async function heap(device: BlockDevice, o: Options): Promise<Record<string, unknown>> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('--heap-ios needs node --expose-gc');
  const gen = new LoadGenerator(device, o);
  gen.issueLimit = Math.min(20_000, Math.max(1000, Math.floor(o.heapIos / 10)));
  await gen.run();
  if (gen.firstError !== undefined) throw gen.firstError;
  const warmIssued = gen.issued;

  gen.nextPhase();
  gen.issueLimit = o.heapIos;
  gc();
  gc();
  const before = process.memoryUsage();
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await gen.run();
  const cpu1 = process.cpuUsage();
  const seconds = (performance.now() - t0) / 1000;
  if (gen.firstError !== undefined) throw gen.firstError;
  gc();
  gc();
  const after = process.memoryUsage();
  const ios = gen.issued;
  return {
    engine: 'ours',
    mode: o.mode,
    rw: o.write ? 'randwrite' : 'randread',
    api: o.api,
    qd: o.qd,
    bs: o.bs,
    ios,
    warmup_ios: warmIssued,
    seconds: Math.round(seconds * 10) / 10,
    iops: round1(ios / seconds),
    cpu_us_per_io: round2(cpuMicros(cpu0, cpu1) / ios),
    heap_used_before: before.heapUsed,
    heap_used_after: after.heapUsed,
    heap_growth_bytes: after.heapUsed - before.heapUsed,
    heap_bytes_per_io: (after.heapUsed - before.heapUsed) / ios,
    external_growth_bytes: after.external - before.external,
    rss_growth_bytes: after.rss - before.rss,
  };
}

/**
 * The scale runs' warm-up: every generator completes `warmupIos` I/Os, unmeasured, and drains (the same code
 * path as the window). Returns its seconds (0 without one).
 */
async function drainedWarmup(gens: LoadGenerator[], warmupIos: number): Promise<number> {
  if (warmupIos <= 0) return 0;
  const t0 = performance.now();
  for (const g of gens) {
    g.issueLimit = warmupIos;
    g.measureFrom = t0;
    g.stopAt = t0 + WARMUP_MAX_SECONDS * 1000;
  }
  await Promise.all(gens.map((g) => g.run()));
  for (const g of gens) if (g.firstError !== undefined) throw g.firstError;
  for (const g of gens) g.nextPhase();
  return round1((performance.now() - t0) / 1000);
}

/** A generator's IOPS over its window. */
const windowIops = (g: LoadGenerator): number => round1(g.ios / ((g.stopAt - g.startedAt) / 1000));

/** One device's (or worker's) share of a scale run, and what the run measured. */
interface ScaleMeasurement {
  perDevice: number[];
  /** Completed in the window. */
  ios: number;
  /** Issued in the ramp and the window. */
  issued: number;
  /** The whole process (every thread) over the ramp and the window. */
  cpuMicros: number;
  warmupSeconds: number;
  /** The first device's latency percentiles. */
  p50: number;
  p99: number;
}

/** The JSON line of a scale run (`scaled` and `scaledInThreads` alike). */
function scaleResult(paths: string[], o: Options, m: ScaleMeasurement): Record<string, unknown> {
  return {
    engine: 'ours',
    mode: o.mode,
    rw: o.write ? 'randwrite' : 'randread',
    devices: paths,
    ...(o.threads ? { threads: paths.length } : {}),
    queues: o.queues,
    qd_per_queue: o.qd,
    warmup_ios_per_device: o.warmupIos,
    warmup_seconds: m.warmupSeconds,
    iops: round1(m.perDevice.reduce((a, b) => a + b, 0)),
    iops_per_device: m.perDevice,
    // Ramp included: the generators (or workers) start their windows at slightly different times.
    cpu_us_per_io: round2(m.cpuMicros / Math.max(1, m.issued)),
    ios: m.ios,
    p50_us: m.p50,
    p99_us: m.p99,
  };
}

/**
 * Scale: one process drives every device in `paths` (each with `o.queues` queues), `o.qd` loops per queue, all
 * in the same window; reports the aggregate and each device's IOPS.
 */
async function scaled(paths: string[], o: Options): Promise<Record<string, unknown>> {
  const devices = paths.map((p) =>
    BlockDevice.open(p, { completion: o.mode, pollSpinMicros: o.spinMicros, queues: o.queues }),
  );
  try {
    const each = { ...o, qd: o.qd * o.queues };
    // The same unmeasured warm-up as a single-device run, on every device at once (the same code path).
    const gens = devices.map((d) => new LoadGenerator(d, each));
    const warmupSeconds = await drainedWarmup(gens, o.warmupIos);
    const t = performance.now();
    for (const g of gens) {
      g.measureFrom = t + o.ramp * 1000;
      g.stopAt = g.measureFrom + o.seconds * 1000;
    }
    const cpu0 = process.cpuUsage();
    await Promise.all(gens.map((g) => g.run()));
    const cpu1 = process.cpuUsage();
    for (const g of gens) if (g.firstError !== undefined) throw g.firstError;
    return scaleResult(paths, o, {
      perDevice: gens.map(windowIops),
      ios: gens.reduce((a, g) => a + g.ios, 0),
      issued: gens.reduce((a, g) => a + g.issued, 0),
      cpuMicros: cpuMicros(cpu0, cpu1),
      warmupSeconds,
      p50: round1(gens[0].histogram.quantile(0.5)),
      p99: round1(gens[0].histogram.quantile(0.99)),
    });
  } finally {
    await Promise.all(devices.map((d) => d.close()));
  }
}

/** What a worker of a `--threads` run reports: its device's window. */
interface ThreadResult {
  ios: number;
  issued: number;
  iops: number;
  p50: number;
  p99: number;
  warmupSeconds: number;
}

/**
 * Scale with `--threads`: one worker thread per device, each running this file's load generator on its device.
 * Every worker completes its warm-up, then all start the ramp and window at the same wall-clock time (the
 * main thread's go message carries it; `performance.now()` has a different origin in each thread). CPU per I/O
 * is the whole process's over the window.
 */
async function scaledInThreads(paths: string[], o: Options): Promise<Record<string, unknown>> {
  const workers = paths.map((device) => new Worker(__filename, { workerData: { ...o, device } }));
  const messages = workers.map(() => [] as unknown[]);
  const waiters: (() => void)[] = [];
  const failures: Error[] = [];
  const next = async (i: number): Promise<unknown> => {
    while (messages[i].length === 0) {
      if (failures.length > 0) throw failures[0];
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
    return messages[i].shift();
  };
  const wake = (): void => {
    for (const w of waiters.splice(0)) w();
  };
  workers.forEach((w, i) => {
    let received = 0;
    w.on('message', (m) => {
      received++;
      messages[i].push(m);
      wake();
    });
    w.on('error', (e) => {
      failures.push(e);
      wake();
    });
    // A worker that ends before its two messages (warmed up, result) must not leave us waiting; its error, if
    // it had one, came first.
    w.on('exit', (code) => {
      if (received >= 2) return;
      failures.push(new Error(`the worker for ${paths[i]} exited (status ${code}) before it reported`));
      wake();
    });
  });
  try {
    await Promise.all(workers.map((_, i) => next(i))); // warmed up
    const goAt = performance.timeOrigin + performance.now() + 50;
    const cpu0 = process.cpuUsage();
    for (const w of workers) w.postMessage({ goAt });
    const results = (await Promise.all(workers.map((_, i) => next(i)))) as ThreadResult[];
    const cpu1 = process.cpuUsage();
    return scaleResult(paths, o, {
      perDevice: results.map((r) => r.iops),
      ios: results.reduce((a, r) => a + r.ios, 0),
      issued: results.reduce((a, r) => a + r.issued, 0),
      cpuMicros: cpuMicros(cpu0, cpu1),
      warmupSeconds: Math.max(...results.map((r) => r.warmupSeconds)),
      p50: results[0].p50,
      p99: results[0].p99,
    });
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** A worker of {@link scaledInThreads}: warm up, report, wait for the go time, run the window, report. */
async function threadMain(o: Options): Promise<void> {
  const port = parentPort as NonNullable<typeof parentPort>;
  const device = BlockDevice.open(o.device, { completion: o.mode, queues: o.queues });
  try {
    const g = new LoadGenerator(device, { ...o, qd: o.qd * o.queues });
    const warmupSeconds = await drainedWarmup([g], o.warmupIos);
    const { goAt } = await new Promise<{ goAt: number }>((resolve) => {
      port.once('message', resolve);
      port.postMessage('warm');
    });
    const start = goAt - performance.timeOrigin;
    while (performance.now() < start) await new Promise((resolve) => setTimeout(resolve, 1));
    g.measureFrom = start + o.ramp * 1000;
    g.stopAt = g.measureFrom + o.seconds * 1000;
    await g.run();
    if (g.firstError !== undefined) throw g.firstError;
    const result: ThreadResult = {
      ios: g.ios,
      issued: g.issued,
      iops: windowIops(g),
      p50: round1(g.histogram.quantile(0.5)),
      p99: round1(g.histogram.quantile(0.99)),
      warmupSeconds,
    };
    port.postMessage(result);
  } finally {
    await device.close();
  }
}

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`blk-bench: ${e.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (o.threads) {
    process.stdout.write(`${JSON.stringify(await scaledInThreads(o.device.split(','), o))}\n`);
    return 0;
  }
  if (o.device.includes(',') || o.queues > 1) {
    process.stdout.write(`${JSON.stringify(await scaled(o.device.split(','), o))}\n`);
    return 0;
  }
  const device = BlockDevice.open(o.device, {
    completion: o.mode,
    pollSpinMicros: o.spinMicros,
  });
  try {
    if (o.heapIos > 0) process.stdout.write(`${JSON.stringify(await heap(device, o))}\n`);
    else
      for (const m of o.matrix)
        process.stdout.write(`${JSON.stringify(await timed(device, { ...o, ...m }))}\n`);
  } finally {
    await device.close();
  }
  return 0;
}

if (!isMainThread) {
  // A worker of a --threads scale run: an uncaught rejection reaches the main thread as the worker's 'error'.
  void threadMain(workerData as Options);
} else
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (error: Error & { code?: unknown }) => {
      // Library errors carry a code and a message that explains them; anything else is a bug: show the stack.
      process.stderr.write(
        `blk-bench: ${error.code !== undefined ? error.message : (error.stack ?? error.message)}\n`,
      );
      process.exitCode = 1;
    },
  );
