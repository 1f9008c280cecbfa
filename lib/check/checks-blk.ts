/**
 * virtio-blk data-path checks, through this package's own driver
 * (`BlockDevice`): reads, GET_ID, flush; with `--destructive` an integrity run
 * against a model, write-zeroes and discard; a short performance smoke.
 */
import { performance } from 'node:perf_hooks';
import { BlockDevice } from '../blk';
import { ErrorCodes, hasCode, VdpaError } from '../errors';
import { hasBit, VirtioBlkF } from '../features';
import type { Check, CheckContext } from './run';

function fail(message: string): never {
  throw new VdpaError(message, { code: ErrorCodes.CHECK_FAILED });
}

/** Opens the device with a request deadline shorter than the check's, so a stall fails the request first. */
async function withDisk<T>(context: CheckContext, fn: (disk: BlockDevice) => Promise<T>): Promise<T> {
  const disk = BlockDevice.open(context.path, {
    requestTimeoutMs: Math.max(1000, Math.floor(context.options.checkTimeoutMs / 3)),
  });
  const failures: string[] = [];
  disk.on('reset', ({ reason }: { reason: VdpaError }) => failures.push(reason.message));
  try {
    const result = await fn(disk);
    if (failures.length > 0) fail(`the driver had to reset the device: ${failures.join('; ')}`);
    return result;
  } finally {
    await disk.close({ drain: false, timeoutMs: 2000 });
  }
}

/** xorshift32: reproducible offsets and data without allocation. */
function random(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

export const blkChecks: Check<CheckContext>[] = [
  {
    // First, so a device that breaks the ring protocol fails here, where the report says what it wrote,
    // and not in whichever data check happened to be running.
    id: 'blk.ring',
    group: 'blk',
    title: '32 reads at queue depth 8 complete once each, with valid used ring entries and status',
    run: (context) =>
      withDisk(context, async (disk) => {
        const block = disk.logicalBlockSize;
        const blocks = Math.max(1, Math.floor(Math.min(disk.capacity, 1 << 20) / block));
        let next = 0;
        const worker = async (): Promise<void> => {
          while (next < 32) {
            const offset = (next++ % blocks) * block;
            await disk.read(offset, block);
          }
        };
        await Promise.all(Array.from({ length: 8 }, () => worker()));
        return { numbers: { reads: 32 } };
      }),
  },
  {
    id: 'blk.read',
    group: 'blk',
    title: 'reads the first and the last block',
    run: (context) =>
      withDisk(context, async (disk) => {
        const block = disk.logicalBlockSize;
        await disk.read(0, block);
        await disk.read(disk.capacity - block, block);
        return { numbers: { capacityBytes: disk.capacity, blockSize: block } };
      }),
  },
  {
    id: 'blk.get-id',
    group: 'blk',
    title: 'answers VIRTIO_BLK_T_GET_ID',
    run: (context) =>
      withDisk(context, async (disk) => {
        try {
          await disk.getId();
        } catch (error) {
          if (hasCode(error, ErrorCodes.DEVICE_UNSUPP))
            return { skip: 'the device answers GET_ID with VIRTIO_BLK_S_UNSUPP (GET_ID is optional)' };
          throw error;
        }
      }),
  },
  {
    id: 'blk.flush',
    group: 'blk',
    title: 'completes VIRTIO_BLK_T_FLUSH',
    run: (context) =>
      withDisk(context, async (disk) => {
        if (!hasBit(disk.features, VirtioBlkF.FLUSH))
          return { skip: 'VIRTIO_BLK_F_FLUSH not offered (no volatile cache)' };
        await disk.flush();
      }),
  },
  {
    id: 'blk.integrity',
    group: 'blk',
    title: 'random reads and writes at queue depth 8 agree with a model (destructive)',
    run: (context) => {
      if (!context.options.destructive) return { skip: 'writes to the device: run with --destructive' };
      return withDisk(context, async (disk) => {
        if (disk.readOnly) return { skip: 'the device is read-only (VIRTIO_BLK_F_RO)' };
        const block = disk.logicalBlockSize;
        const workers = 8;
        // Each worker owns a disjoint slice, so the model is exact whatever order requests complete in.
        const sliceBlocks = Math.floor(Math.min(disk.capacity, 16 << 20) / block / workers);
        if (sliceBlocks < 16) return { skip: `capacity ${disk.capacity} bytes is too small for the run` };
        const model = await disk.read(0, sliceBlocks * workers * block);
        const ops = context.options.integrityOps;
        let issued = 0;
        let mismatches = 0;
        const worker = async (w: number): Promise<void> => {
          const next = random(0x5eed + w);
          while (issued < ops) {
            issued++;
            const count = 1 + (next() % 16);
            const offset = (w * sliceBlocks + (next() % (sliceBlocks - count + 1))) * block;
            const length = count * block;
            if (next() % 2 === 0) {
              const data = Buffer.alloc(length);
              for (let i = 0; i < length; i += 4) data.writeUInt32LE(next(), i);
              await disk.write(offset, data);
              model.set(data, offset);
            } else {
              const got = await disk.read(offset, length);
              if (!got.equals(model.subarray(offset, offset + length))) mismatches++;
            }
          }
        };
        await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
        if (mismatches > 0) fail(`${mismatches} read(s) returned data that differs from what was written`);
        return { numbers: { operations: ops } };
      });
    },
  },
  {
    id: 'blk.write-zeroes',
    group: 'blk',
    title: 'write-zeroes reads back as zeros (destructive)',
    run: (context) => {
      if (!context.options.destructive) return { skip: 'writes to the device: run with --destructive' };
      return withDisk(context, async (disk) => {
        if (!hasBit(disk.features, VirtioBlkF.WRITE_ZEROES))
          return { skip: 'VIRTIO_BLK_F_WRITE_ZEROES not offered' };
        if (disk.readOnly) return { skip: 'the device is read-only (VIRTIO_BLK_F_RO)' };
        const length = 8 * disk.logicalBlockSize;
        await disk.write(0, Buffer.alloc(length, 0xa5));
        await disk.writeZeroes(0, length);
        const back = await disk.read(0, length);
        if (!back.every((b) => b === 0)) fail('data survived VIRTIO_BLK_T_WRITE_ZEROES');
      });
    },
  },
  {
    id: 'blk.discard',
    group: 'blk',
    title: 'completes a discard (destructive)',
    run: (context) => {
      if (!context.options.destructive) return { skip: 'writes to the device: run with --destructive' };
      return withDisk(context, async (disk) => {
        if (!hasBit(disk.features, VirtioBlkF.DISCARD)) return { skip: 'VIRTIO_BLK_F_DISCARD not offered' };
        if (disk.readOnly) return { skip: 'the device is read-only (VIRTIO_BLK_F_RO)' };
        await disk.discard(0, 8 * disk.logicalBlockSize);
      });
    },
  },
  ...[1, 32].map(
    (depth): Check<CheckContext> => ({
      id: `perf.blk-randread-qd${depth}`,
      group: 'perf',
      title: `4 KiB random reads at queue depth ${depth} (zero-copy, interrupt mode)`,
      run: (context) => {
        const seconds = context.options.perfSeconds;
        if (seconds <= 0) return { skip: 'performance smoke disabled (--perf-seconds 0)' };
        return withDisk(context, async (disk) => {
          const size = 4096;
          if (disk.capacity < size * 2) return { skip: `capacity ${disk.capacity} bytes is too small` };
          const slots = disk.capacity / size;
          const next = random(depth);
          const latencies: number[] = [];
          // Buffers first, then the clock; and every worker reads at least once. Otherwise a slow setup
          // (mapping DMA memory waits on a VDUSE daemon) could leave no time to read, and a device that
          // fails every read would pass with 0 IOPS (seen against faulty-blk ioerr-every:1).
          const buffers = Array.from({ length: depth }, () => disk.allocBuffer(size));
          const end = performance.now() + seconds * 1000;
          const loop = async (buffer: Buffer): Promise<void> => {
            do {
              const start = performance.now();
              await disk.readInto((next() % slots) * size, buffer);
              latencies.push(performance.now() - start);
            } while (performance.now() < end);
          };
          await Promise.all(buffers.map((buffer) => loop(buffer)));
          latencies.sort((a, b) => a - b);
          const p = (q: number): number =>
            latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] * 1000;
          return { numbers: { iops: Math.round(latencies.length / seconds), p50us: p(0.5), p99us: p(0.99) } };
        });
      },
    }),
  ),
];
