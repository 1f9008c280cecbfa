/**
 * A randomized run of mixed operations against an in-memory model of the
 * disk: reads, writes, discards, write-zeroes and flushes of one block up to
 * the device's largest request (and beyond, to exercise splitting), up to the
 * full queue depth in flight, half through zero-copy buffers and half through
 * the bounce pool. In-flight operations never overlap, so the model is exact;
 * a discarded block may read back as its old data or as zeros.
 *
 * VDPA_BLK_INTEGRITY_OPS overrides the operation count (default 100,000); VDPA_BLK_INTEGRITY_QUEUES the request
 * queues used (default 1).
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { BlockDevice } from '../../lib';
import { forEachDevice } from './helpers';

const OPS = Number(process.env.VDPA_BLK_INTEGRITY_OPS ?? 100_000);
const QUEUES = Number(process.env.VDPA_BLK_INTEGRITY_QUEUES ?? 1);
const WINDOW = 16 << 20;
const BLOCK = 512;

/** xorshift32: reproducible given the printed seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x100000000;
  };
}

forEachDevice('block', 'BlockDevice randomized integrity', (device) => {
  it(`survives ${OPS} mixed operations with no mismatch against a model of the disk`, async function () {
    this.timeout(600_000);
    const seed = Number(process.env.VDPA_BLK_INTEGRITY_SEED ?? Date.now() % 0x7fffffff);
    const random = rng(seed);
    const dev = BlockDevice.open(device.chardev, { queues: QUEUES });
    try {
      const base = dev.capacity - WINDOW; // the end of the disk: high sectors and the last block
      const blocks = WINDOW / BLOCK;
      const maxBlocks = dev.limits.maxTransferBytes / BLOCK;
      const model = Buffer.alloc(WINDOW);
      const maybeZero = new Uint8Array(blocks); // discarded: old data or zeros
      const locked = new Uint8Array(blocks);
      const source = randomBytes(4 << 20);
      // Zero-copy arena: slots of two maximal requests, handed to in-flight ops.
      const zcSlots = 32;
      const zcSlotBytes = 2 * dev.limits.maxTransferBytes;
      const arena = dev.allocBuffer(zcSlots * zcSlotBytes);
      const freeSlots = Array.from({ length: zcSlots }, (_, i) => i);
      await dev.writeZeroes(base, WINDOW);

      let mismatches = 0;
      const firstMismatches: string[] = [];
      const counts = { read: 0, write: 0, discard: 0, writeZeroes: 0, flush: 0, split: 0, zeroCopy: 0 };
      let inFlight = 0;
      let targetDepth = 1;
      let wake: (() => void) | undefined;
      let failure: unknown;

      const check = (offset: number, got: Uint8Array): void => {
        const at = offset - base;
        const first = at / BLOCK;
        const n = got.length / BLOCK;
        let anyDiscarded = false;
        for (let b = 0; b < n; b++) if (maybeZero[first + b] !== 0) anyDiscarded = true;
        if (!anyDiscarded && Buffer.compare(model.subarray(at, at + got.length), got) === 0) return;
        for (let b = 0; b < n; b++) {
          const want = model.subarray(at + b * BLOCK, at + (b + 1) * BLOCK);
          const have = got.subarray(b * BLOCK, (b + 1) * BLOCK);
          if (Buffer.compare(want, have) === 0) continue;
          if (maybeZero[first + b] !== 0 && have.every((x) => x === 0)) {
            model.fill(0, at + b * BLOCK, at + (b + 1) * BLOCK); // the device chose zeros; it is determined now
            continue;
          }
          mismatches++;
          if (firstMismatches.length < 5) firstMismatches.push(`block at offset ${offset + b * BLOCK}`);
        }
      };

      // Mostly small requests (what dominates real workloads and costs least under TCG), some medium,
      // a few up to the device's largest request and a few beyond it (split in two).
      const pickBlocks = (): number => {
        const r = random();
        if (r < 0.62) return 1 + Math.floor(random() * 8);
        if (r < 0.982) return 1 + Math.floor(random() * Math.min(32, maxBlocks));
        if (r < 0.997) return 1 + Math.floor(random() * maxBlocks);
        return maxBlocks + 1 + Math.floor(random() * maxBlocks);
      };

      const tryLock = (first: number, n: number): boolean => {
        for (let b = first; b < first + n; b++) if (locked[b] !== 0) return false;
        locked.fill(1, first, first + n);
        return true;
      };

      const done = (first: number, n: number, slot: number): void => {
        locked.fill(0, first, first + n);
        if (slot >= 0) freeSlots.push(slot);
        inFlight--;
        wake?.();
      };

      const issue = (): boolean => {
        const kind = random();
        if (kind < 0.04) {
          counts.flush++;
          inFlight++;
          dev.flush().then(
            () => done(0, 0, -1),
            (e: unknown) => {
              failure ??= e;
              wake?.();
            },
          );
          return true;
        }
        const n = Math.min(pickBlocks(), blocks);
        const first = Math.floor(random() * (blocks - n + 1));
        if (!tryLock(first, n)) return false;
        const offset = base + first * BLOCK;
        const length = n * BLOCK;
        if (length > dev.limits.maxTransferBytes) counts.split++;
        const slot = random() < 0.5 ? (freeSlots.pop() ?? -1) : -1;
        const zc = slot >= 0 ? arena.subarray(slot * zcSlotBytes, slot * zcSlotBytes + length) : undefined;
        if (zc !== undefined) counts.zeroCopy++;
        inFlight++;
        const fail = (e: unknown): void => {
          failure ??= e;
          wake?.();
        };
        if (kind < 0.5) {
          counts.read++;
          const p = zc !== undefined ? dev.readInto(offset, zc) : dev.read(offset, length);
          p.then((got) => {
            check(offset, got);
            done(first, n, slot);
          }, fail);
        } else if (kind < 0.9) {
          counts.write++;
          const from = Math.floor(random() * (source.length - length));
          const data = source.subarray(from, from + length);
          model.set(data, offset - base);
          maybeZero.fill(0, first, first + n);
          let p: Promise<void>;
          if (zc !== undefined) {
            zc.set(data);
            p = dev.write(offset, zc);
          } else {
            p = dev.write(offset, data);
          }
          p.then(() => done(first, n, slot), fail);
        } else if (kind < 0.95) {
          counts.discard++;
          maybeZero.fill(1, first, first + n);
          dev.discard(offset, length).then(() => done(first, n, slot), fail);
        } else {
          counts.writeZeroes++;
          const unmap = random() < 0.5;
          model.fill(0, offset - base, offset - base + length);
          maybeZero.fill(0, first, first + n);
          dev.writeZeroes(offset, length, { unmap }).then(() => done(first, n, slot), fail);
        }
        return true;
      };

      const started = process.hrtime.bigint();
      for (let issued = 0; issued < OPS; ) {
        if (failure !== undefined) throw failure;
        // Vary the depth: runs at queue depth 1 and runs up to the whole queue (and beyond: the FIFO).
        if (issued % 2000 === 0)
          targetDepth = random() < 0.1 ? 1 : 2 + Math.floor(random() * (dev.queueSize - 1));
        if (inFlight < targetDepth && issue()) {
          issued++;
          continue;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        wake = undefined;
      }
      while (inFlight > 0) {
        if (failure !== undefined) throw failure;
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
      }
      if (failure !== undefined) throw failure;
      // A final full read of the window through both paths.
      for (let at = 0; at < WINDOW; at += dev.limits.maxTransferBytes) {
        check(base + at, await dev.read(base + at, dev.limits.maxTransferBytes));
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      console.log(
        `      ${device.name}: ${OPS} ops in ${seconds.toFixed(1)} s (${Math.round(OPS / seconds)} ops/s), ` +
          `seed ${seed}, mismatches ${mismatches}, ${JSON.stringify(counts)}, stats ${JSON.stringify(dev.stats)}`,
      );
      assert.equal(mismatches, 0, `mismatches (seed ${seed}): ${firstMismatches.join(', ')}`);
      assert.ok(counts.split > 0 && counts.zeroCopy > 0 && counts.discard > 0 && counts.flush > 0);
      if (device.mgmtdev === 'vduse') {
        assert.ok(dev.eventIdx && dev.indirect, 'EVENT_IDX and INDIRECT_DESC negotiated');
        assert.equal(dev.stats.indirect, dev.stats.deviceRequests, 'every request went out indirect');
      }
    } finally {
      await dev.close({ drain: false });
    }
  });
});
