// The floor under the plain user loop: what `await device.readInto(offset, buffer)` costs with no driver at all.
// A stand-in `readInto` makes one Promise per request the way the driver does (an executor that stores the
// resolve function in a pooled record), and a batch round resolves every pending request — with the caller's
// Buffer, as readInto does, or with undefined (`--resolve undefined`, as write() does) — from a microtask, a
// nextTick or setImmediate (`--round`). Count its instructions per I/O with
// `node bench/host-icount.mjs --floor [--resolve undefined]`.
//
// Measured with it (2026-11-30, QD32, microtask round): 1,860 instructions per I/O when resolving with the
// Buffer, 1,271 with undefined. The difference, about 590, is V8's lookup of a `then` property along Buffer's
// prototype chain: the thenable check every resolve with an object makes (callgrind: Builtins_GetProperty).
const options = { qd: 32, ios: 100000, warmup: 100000, resolve: 'buffer', round: 'microtask' };
for (let i = 2; i < process.argv.length; i += 2) {
  const [name, value] = [process.argv[i].replace(/^--/, ''), process.argv[i + 1]];
  if (!(name in options) || value === undefined) throw new Error(`unknown option or missing value: ${name}`);
  options[name] = typeof options[name] === 'number' ? Number(value) : value;
}
const schedule = {
  microtask: (fn) => void Promise.resolve().then(fn),
  nextTick: (fn) => process.nextTick(fn),
  immediate: (fn) => setImmediate(fn),
}[options.round];
if (schedule === undefined) throw new Error(`--round must be microtask, nextTick or immediate`);

class Record {
  resolve = null;
  result = undefined;
}
const pool = [];
const pending = [];
let roundQueued = false;
let binding;
function bind(resolve) {
  binding.resolve = resolve;
}

function round() {
  roundQueued = false;
  for (let i = 0; i < pending.length; i++) {
    const record = pending[i];
    const resolve = record.resolve;
    record.resolve = null;
    pool.push(record);
    resolve(record.result);
  }
  pending.length = 0;
}

function readInto(offset, buffer) {
  const record = pool.pop() ?? new Record();
  record.result = options.resolve === 'buffer' ? buffer : undefined;
  binding = record;
  const promise = new Promise(bind);
  binding = undefined;
  pending.push(record);
  if (!roundQueued) {
    roundQueued = true;
    schedule(round);
  }
  return promise;
}

let left = 0;
let x = 12345;
function nextOffset() {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return ((x >>> 0) % 16384) * 4096;
}
async function loop(buffer) {
  while (left-- > 0) await readInto(nextOffset(), buffer);
}

const buffers = Array.from({ length: options.qd }, () => Buffer.alloc(4096));
left = options.warmup;
await Promise.all(buffers.map(loop));
left = options.ios;
await Promise.all(buffers.map(loop));
