/**
 * The net benchmark's load generator for this package's driver: broadcast
 * frames of one size looped back by vdpa_sim_net through {@link NetDevice},
 * received by a `for await (… of dev.frames())` loop (or a `'frame'`
 * listener) running alongside the sender.
 *
 *   node --expose-gc dist-test/bench/net-bench.js --device /dev/vhost-vdpa-N [--size 64]
 *        [--send single|batch] [--batch 32] [--rx iterator|event] [--seconds 10] [--ramp 0]
 *        [--heap-frames N]
 *
 * `--send single` is a plain `await dev.send(frame)` loop; `--send batch`
 * awaits `dev.sendBatch(frames)` of `--batch` frames (what the C baseline's
 * `--batch` does: the next batch once the device took this one). Prints one
 * JSON object with the fields of bench/c-baseline/vdpa-net-bench:
 * frames_per_s, gbit_per_s (frame bytes), frames, lost, cpu_us_per_frame.
 * Before the time-based ramp it sends `--warmup-frames` frames (default 3000)
 * so that the JIT has optimised the hot path, whatever the machine's speed.
 * With `--heap-frames N` it instead sends N frames between two full GCs and
 * reports the heap growth per frame and the minor GCs (allocation pressure).
 *
 * The harness reuses its frames (one per batch slot); what is allocated per
 * frame is the driver's: the send promise and the received frame's copy.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { performance } from 'node:perf_hooks';
import { NetDevice } from '../lib';

interface Options {
  device: string;
  size: number;
  send: 'single' | 'batch';
  batch: number;
  rx: 'iterator' | 'event';
  seconds: number;
  ramp: number;
  warmupFrames: number;
  heapFrames: number;
}

const USAGE = `Usage: node --expose-gc dist-test/bench/net-bench.js --device /dev/vhost-vdpa-N [--size 64]
  [--send single|batch] [--batch 32] [--rx iterator|event] [--seconds 10] [--ramp 0] [--warmup-frames 3000]
  [--heap-frames N]`;

class UsageError extends Error {}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    device: '',
    size: 64,
    send: 'batch',
    batch: 32,
    rx: 'iterator',
    seconds: 10,
    ramp: 0,
    warmupFrames: 3000,
    heapFrames: 0,
  };
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
    else if (a === '--size') o.size = Math.floor(number(60, 1514));
    else if (a === '--send') {
      const v = value();
      if (v !== 'single' && v !== 'batch') throw new UsageError(`--send: single or batch, got ${v}`);
      o.send = v;
    } else if (a === '--batch') o.batch = Math.floor(number(1, 256));
    else if (a === '--rx') {
      const v = value();
      if (v !== 'iterator' && v !== 'event') throw new UsageError(`--rx: iterator or event, got ${v}`);
      o.rx = v;
    } else if (a === '--seconds') o.seconds = number(0.001, 86400);
    else if (a === '--ramp') o.ramp = number(0, 3600);
    else if (a === '--warmup-frames') o.warmupFrames = Math.floor(number(0, 1e9));
    else if (a === '--heap-frames') o.heapFrames = Math.floor(number(1, 1e12));
    else throw new UsageError(`unknown option ${a}`);
  }
  if (o.device === '') throw new UsageError('--device is required');
  return o;
}

/** Broadcast frames of `size` bytes, EtherType 0x88b5; the sequence number at byte 14 is set per send. */
function makeFrames(n: number, size: number): Buffer[] {
  return Array.from({ length: n }, () => {
    const f = Buffer.alloc(size);
    f.fill(0xff, 0, 6);
    f.set([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99], 6);
    f.writeUInt16BE(0x88b5, 12);
    for (let k = 18; k < size; k++) f[k] = (k * 7) & 0xff;
    return f;
  });
}

class Load {
  received = 0;
  bad = 0;
  sent = 0;
  seq = 0;
  stop = false;
  error: Error | undefined;
  readonly #dev: NetDevice;
  readonly #o: Options;
  readonly #frames: Buffer[];
  readonly #batch: Buffer[];

  constructor(dev: NetDevice, o: Options) {
    this.#dev = dev;
    this.#o = o;
    const n = o.send === 'batch' ? o.batch : 1;
    this.#frames = makeFrames(n, o.size);
    this.#batch = this.#frames.slice();
  }

  /** The receive side: counts frames and checks their length. */
  startReceiving(): Promise<void> {
    const size = this.#o.size;
    if (this.#o.rx === 'event') {
      this.#dev.on('frame', (f: Buffer) => {
        this.received++;
        if (f.length !== size) this.bad++;
      });
      return Promise.resolve();
    }
    return (async () => {
      for await (const f of this.#dev.frames()) {
        this.received++;
        if (f.length !== size) this.bad++;
      }
    })();
  }

  /** Sends until `stop` (or `limit` frames); resolves when the last send settled. */
  async send(limit = Infinity): Promise<void> {
    const dev = this.#dev;
    try {
      if (this.#o.send === 'single') {
        const frame = this.#frames[0];
        while (!this.stop && this.sent < limit) {
          frame.writeUInt32BE(this.seq++ >>> 0, 14);
          await dev.send(frame);
          this.sent++;
        }
      } else {
        const batch = this.#batch;
        while (!this.stop && this.sent < limit) {
          for (let i = 0; i < batch.length; i++) batch[i].writeUInt32BE(this.seq++ >>> 0, 14);
          await dev.sendBatch(batch);
          this.sent += batch.length;
        }
      }
    } catch (error) {
      this.error = error as Error;
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function measure(o: Options): Promise<Record<string, unknown>> {
  const dev = NetDevice.open(o.device);
  const load = new Load(dev, o);
  const receiving = load.startReceiving();
  // Warm-up by frame count, not time: V8 optimises a function after enough calls, and under TCG a few
  // seconds can hold too few frames for that (the C driver has nothing to warm up).
  const warmupStarted = performance.now();
  await load.send(o.warmupFrames);
  while (load.received < load.sent && performance.now() - warmupStarted < 60000) await sleep(1);
  const warmupSeconds = (performance.now() - warmupStarted) / 1000;
  const sending = load.send();
  await sleep(o.ramp * 1000);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const recv0 = load.received;
  const sent0 = load.sent;
  await sleep(o.seconds * 1000);
  const recv1 = load.received;
  const sent1 = load.sent;
  const cpu = process.cpuUsage(cpu0);
  const t1 = performance.now();
  load.stop = true;
  await sending;
  const settleUntil = Date.now() + 200;
  while (load.received < load.sent && Date.now() < settleUntil) await sleep(5);
  const stats = await dev.stats();
  await dev.close({ drain: false });
  await receiving;
  if (load.error !== undefined) throw load.error;
  const seconds = (t1 - t0) / 1000;
  const frames = recv1 - recv0;
  return {
    engine: 'ours',
    mode: `${o.send}${o.send === 'batch' ? o.batch : ''}-${o.rx}`,
    size: o.size,
    batch: o.send === 'batch' ? o.batch : 1,
    queue_size: dev.queueSize,
    seconds: Math.round(seconds * 1000) / 1000,
    sent: sent1 - sent0,
    frames,
    frames_per_s: Math.round((frames / seconds) * 10) / 10,
    gbit_per_s: Math.round(((frames * o.size * 8) / seconds / 1e9) * 1e4) / 1e4,
    lost: load.sent - load.received,
    bad_length: load.bad,
    warmup_frames: o.warmupFrames,
    warmup_seconds: Math.round(warmupSeconds * 10) / 10,
    cpu_us_per_frame: frames ? Math.round(((cpu.user + cpu.system) / frames) * 1000) / 1000 : null,
    tx_kicks: stats.tx.kicks,
    rx_kicks: stats.rx.kicks,
    interrupts: stats.interrupts,
  };
}

async function heapRun(o: Options): Promise<Record<string, unknown>> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('--heap-frames needs node --expose-gc');
  const dev = NetDevice.open(o.device);
  const load = new Load(dev, o);
  const receiving = load.startReceiving();
  const warmup = Math.min(20000, Math.ceil(o.heapFrames / 10));
  await load.send(warmup);
  while (load.received < load.sent) await sleep(1);
  let minorGcs = 0;
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      if ((e as { detail?: { kind?: number } }).detail?.kind === 1) minorGcs++; // NODE_PERFORMANCE_GC_MINOR
    }
  });
  gc();
  gc();
  const before = process.memoryUsage();
  observer.observe({ entryTypes: ['gc'] });
  const t0 = performance.now();
  const start = load.sent;
  await load.send(start + o.heapFrames);
  while (load.received < load.sent) await sleep(1);
  const seconds = (performance.now() - t0) / 1000;
  observer.disconnect();
  gc();
  gc();
  const after = process.memoryUsage();
  await dev.close({ drain: false });
  await receiving;
  if (load.error !== undefined) throw load.error;
  const frames = load.sent - start;
  return {
    engine: 'ours',
    mode: `${o.send}${o.send === 'batch' ? o.batch : ''}-${o.rx}`,
    size: o.size,
    frames,
    warmup_frames: warmup,
    seconds: Math.round(seconds * 1000) / 1000,
    frames_per_s: Math.round(frames / seconds),
    heap_growth_bytes: after.heapUsed - before.heapUsed,
    heap_bytes_per_frame: (after.heapUsed - before.heapUsed) / frames,
    external_growth_bytes: after.external - before.external,
    rss_growth_bytes: after.rss - before.rss,
    minor_gcs: minorGcs,
    frames_per_minor_gc: minorGcs ? Math.round(frames / minorGcs) : null,
  };
}

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`net-bench: ${error.message}\n${USAGE}\n`);
    return 2;
  }
  const result = o.heapFrames > 0 ? await heapRun(o) : await measure(o);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (error: unknown) => {
    process.stderr.write(
      `net-bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode = 1;
  },
);
