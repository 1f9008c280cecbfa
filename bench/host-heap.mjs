// JS heap growth per I/O of the plain loop in every mode, on the host against the in-process fake device
// (test/host/blk-fake-device, serving synchronously): 10^6 I/Os per mode take seconds here, hours under TCG.
// What is retained per I/O is a property of the JavaScript, not of the device, so this is where the 10^6-I/O
// figure comes from; the lab's heap runs (bench/run-in-guest.mjs) check the real device path with fewer I/Os.
//   node --expose-gc bench/host-heap.mjs [IOS=1000000] [TREE=.]
import { createRequire } from 'node:module';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const ios = Number(process.argv[2] ?? 1_000_000);
const root = path.resolve(process.argv[3] ?? '.');
const lib = require(path.join(root, 'dist-test/lib'));
const { FakeBlkDevice } = require(path.join(root, 'dist-test/test/host/blk-fake-device'));
if (typeof globalThis.gc !== 'function') throw new Error('run with node --expose-gc');

function fakeLogs(fake) {
  return [fake.seen, ...(fake.queues ?? []).map((q) => q.seen)].filter(Array.isArray);
}

async function run(mode, api, rw) {
  const fake = new FakeBlkDevice({ synchronous: true, capacity: 64 << 20 });
  const disk = lib.BlockDevice.open(fake, { completion: mode, pollSpinMicros: mode === 'poll' ? 1000 : 0 });
  // The fake logs every request it served (for tests' assertions): that log is the fake's growth, not the driver's.
  for (const f of fakeLogs(fake)) f.push = () => 0;
  const blocks = (64 << 20) / 4096;
  let x = 12345;
  let left = 0;
  const loop = async () => {
    const buf = api === 'zero-copy' ? disk.allocBuffer(4096) : Buffer.alloc(4096);
    while (left-- > 0) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const offset = ((x >>> 0) % blocks) * 4096;
      if (rw === 'randwrite') await disk.write(offset, buf);
      else if (api === 'bounce') await disk.read(offset, 4096);
      else await disk.readInto(offset, buf);
    }
  };
  left = 20_000;
  await Promise.all(Array.from({ length: 32 }, loop));
  left = ios;
  globalThis.gc();
  globalThis.gc();
  const before = process.memoryUsage().heapUsed;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 32 }, loop));
  const seconds = (performance.now() - t0) / 1000;
  globalThis.gc();
  globalThis.gc();
  const growth = process.memoryUsage().heapUsed - before;
  await disk.close();
  return { mode, api, rw, qd: 32, ios, heap_growth_bytes: growth, heap_bytes_per_io: growth / ios, seconds };
}

const results = [];
for (const mode of ['interrupt', 'poll'])
  for (const api of ['zero-copy', 'bounce'])
    for (const rw of ['randread', 'randwrite']) {
      const r = await run(mode, api, rw);
      results.push(r);
      process.stderr.write(
        `${mode} ${api} ${rw}: ${r.heap_growth_bytes} B over ${ios} I/Os = ${r.heap_bytes_per_io.toFixed(4)} B/IO (${r.seconds.toFixed(1)} s)\n`,
      );
    }
process.stdout.write(
  `${JSON.stringify({ date: new Date().toISOString(), node: process.version, results })}\n`,
);
