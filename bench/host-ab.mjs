// Host-side A/B of the driver's JavaScript hot path, for refactors: the plain user loop (one async loop per
// queue slot, `await readInto()` on an allocBuffer() buffer) against a tree's own host fake device serving
// synchronously, so the TCG lab's noise is out of the picture. Run it for two trees (e.g. a git worktree of the
// commit before a change, built with `npx tsc -p tsconfig.test.json`), alternating, several rounds:
//   node bench/host-ab.mjs /path/to/tree QD IOS interrupt|poll [promise|callback]
// (`callback`: the same loop through readIntoCallback(), for trees that have it.)
// It measures JS cost per I/O, not the device: the fake does its work on the same thread.
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(import.meta.url);
const [root, qdArg, iosArg, mode, api = 'promise'] = process.argv.slice(2);
const lib = require(root + '/dist-test/lib');
const { FakeBlkDevice } = require(root + '/dist-test/test/host/blk-fake-device');
async function main() {
  const qd = Number(qdArg),
    ios = Number(iosArg);
  const fake = new FakeBlkDevice({ synchronous: true, capacity: 64 << 20, eventIdx: true, indirect: true });
  const disk = lib.BlockDevice.open(fake, { completion: mode, pollSpinMicros: mode === 'poll' ? 1000 : 0 });
  let left = ios;
  const slots = (64 << 20) / 4096;
  let x = 12345;
  const loop = async () => {
    const buf = disk.allocBuffer(4096);
    while (left-- > 0) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      await disk.readInto(((x >>> 0) % slots) * 4096, buf);
    }
  };
  const callbackLoop = () =>
    new Promise((resolve, reject) => {
      const buf = disk.allocBuffer(4096);
      const next = (error) => {
        if (error) return reject(error);
        if (left-- <= 0) return resolve();
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        disk.readIntoCallback(((x >>> 0) % slots) * 4096, buf, next);
      };
      next(null);
    });
  const run = api === 'callback' ? callbackLoop : loop;
  // warm-up
  left = 20000;
  await Promise.all(Array.from({ length: qd }, run));
  left = ios;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: qd }, run));
  const t = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  await disk.close();
  console.log(
    JSON.stringify({
      root,
      qd,
      mode,
      api,
      iops: Math.round((ios / t) * 1000),
      cpuUsPerIo: +((cpu.user + cpu.system) / ios).toFixed(2),
    }),
  );
}
main();
