// The driver's own JavaScript per I/O, on the host, for A/B comparisons of hot-path changes: the plain user loop
// (one async loop per queue slot, `await readInto()` / `await write()` on allocBuffer() buffers) against the null
// device (bench/null-blk-device.ts: completes every chain inside the kick, touches no data), so the measurement
// is the driver, the loop and the call eventfd. Each run is its own process (its own JIT warm-up); trees and
// configurations alternate, rounds repeat, the table shows medians.
//
//   node bench/host-driver.mjs [--rounds 5] [--ios 300000] [--warmup 50000] [--api promise|callback]
//     [--configs MODE:RW:QD,…] [--cpu LIST] TREE [TREE…]
//
// (--configs e.g. interrupt:randread:32,poll:randwrite:1; --cpu runs each process under `taskset -c LIST`.)
// A TREE is a checkout built with `npx tsc -p tsconfig.test.json` (its dist-test/lib is what runs). It needs
// bench/null-blk-device.ts: for a commit older than this harness, copy the file into the tree before building. Numbers are host CPU µs per I/O (user+sys of the process): under the lab's
// TCG every JavaScript step costs 25–40× more, so a change that saves 10 % here is worth measuring there.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const self = fileURLToPath(import.meta.url);

async function child([root, qdArg, mode, rw, iosArg, warmArg, api]) {
  const require = createRequire(import.meta.url);
  const lib = require(path.join(root, 'dist-test/lib'));
  // The tree's own null device: the fake's IOTLB accepts only that tree's DmaRegions.
  const { NullBlkDevice } = require(path.join(root, 'dist-test/bench/null-blk-device'));
  const qd = Number(qdArg);
  const write = rw === 'randwrite';
  const device = new NullBlkDevice({ capacity: 64 << 20 });
  const disk = lib.BlockDevice.open(device, { completion: mode, pollSpinMicros: mode === 'poll' ? 1000 : 0 });
  const blocks = (64 << 20) / 4096;
  let x = 12345;
  let left = 0;
  const nextOffset = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return ((x >>> 0) % blocks) * 4096;
  };
  const promiseLoop = async (buf) => {
    while (left-- > 0) {
      if (write) await disk.write(nextOffset(), buf);
      else await disk.readInto(nextOffset(), buf);
    }
  };
  const callbackLoop = (buf) =>
    new Promise((resolve, reject) => {
      const next = (error) => {
        if (error) return reject(error);
        if (left-- <= 0) return resolve();
        if (write) disk.writeCallback(nextOffset(), buf, next);
        else disk.readIntoCallback(nextOffset(), buf, next);
      };
      next(null);
    });
  const loop = api === 'callback' ? callbackLoop : promiseLoop;
  const buffers = Array.from({ length: qd }, () => disk.allocBuffer(4096));
  left = Number(warmArg);
  await Promise.all(buffers.map(loop));
  const ios = Number(iosArg);
  // A marker for --trace-opt/--trace-deopt output: what V8 does after it is in the measured run.
  process.stdout.write('--- measured run\n');
  left = ios;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(buffers.map(loop));
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const stats = disk.stats;
  await disk.close();
  process.stdout.write(
    JSON.stringify({
      cpuUsPerIo: (cpu.user + cpu.system) / ios,
      iops: (ios / ms) * 1000,
      kicksPerIo: stats.kicks / stats.completions,
    }) + '\n',
  );
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function main(argv) {
  const o = { rounds: 5, ios: 300000, warmup: 50000, api: 'promise', trees: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--rounds') o.rounds = Number(argv[++i]);
    else if (a === '--ios') o.ios = Number(argv[++i]);
    else if (a === '--warmup') o.warmup = Number(argv[++i]);
    else if (a === '--api') o.api = argv[++i];
    else if (a === '--configs') o.configs = argv[++i].split(',');
    else if (a === '--cpu') o.cpu = argv[++i];
    else o.trees.push(path.resolve(a));
  }
  if (o.trees.length === 0) o.trees.push(path.resolve(here, '..'));
  const configs = (
    o.configs ?? [
      'interrupt:randread:1',
      'interrupt:randread:32',
      'poll:randread:1',
      'poll:randread:32',
      'interrupt:randwrite:32',
      'poll:randwrite:32',
    ]
  ).map((c) => {
    const [mode, rw, qd] = c.split(':');
    return { mode, rw, qd: Number(qd), name: `${rw} QD${qd} ${mode}` };
  });
  const results = new Map();
  for (let r = 0; r < o.rounds; r++) {
    for (const c of configs) {
      const order = r % 2 === 0 ? o.trees : [...o.trees].reverse();
      for (const tree of order) {
        const args = [
          self,
          '--child',
          tree,
          String(c.qd),
          c.mode,
          c.rw,
          String(o.ios),
          String(o.warmup),
          o.api,
        ];
        const out =
          o.cpu === undefined
            ? execFileSync(process.execPath, args, { encoding: 'utf8' })
            : execFileSync('taskset', ['-c', o.cpu, process.execPath, ...args], { encoding: 'utf8' });
        const run = JSON.parse(out.trim().split('\n').pop());
        const key = `${c.name}|${tree}`;
        (results.get(key) ?? results.set(key, []).get(key)).push(run);
      }
    }
    process.stderr.write(`round ${r + 1}/${o.rounds} done\n`);
  }
  const head = ['config', ...o.trees.map((t, i) => `${String.fromCharCode(65 + i)} µs/IO min / median`)];
  if (o.trees.length > 1)
    head.push(...o.trees.slice(1).map((_, i) => `${String.fromCharCode(66 + i)}÷A min / median`));
  console.log(o.trees.map((t, i) => `${String.fromCharCode(65 + i)} = ${t}`).join('\n'));
  console.log(
    `${o.api} API, ${o.ios} I/Os per run after ${o.warmup}, ${o.rounds} rounds: min / median (per-run values in ` +
      'brackets). Other load on the host only adds CPU time, so the minimum is the steadier estimate',
  );
  console.log(head.join(' | '));
  for (const c of configs) {
    const cols = o.trees.map((t) => results.get(`${c.name}|${t}`).map((x) => x.cpuUsPerIo));
    const meds = cols.map(median);
    const mins = cols.map((v) => Math.min(...v));
    const row = [
      c.name,
      ...cols.map(
        (v, i) => `${mins[i].toFixed(3)} / ${meds[i].toFixed(3)} [${v.map((x) => x.toFixed(2)).join(' ')}]`,
      ),
    ];
    for (let i = 1; i < meds.length; i++)
      row.push(`${(mins[i] / mins[0]).toFixed(3)} / ${(meds[i] / meds[0]).toFixed(3)}`);
    console.log(row.join(' | '));
  }
}

if (process.argv[2] === '--child') await child(process.argv.slice(3));
else main(process.argv.slice(2));
