import { strict as assert } from 'node:assert';
import { performance } from 'node:perf_hooks';
import { inspect } from 'node:util';
import {
  bit,
  BlockDevice,
  VdpaError,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VirtioBlkF,
  VirtioF,
} from '../../lib';
import { fakeBlockDevices } from './blk-fake-device';
import { rejects } from '../assertions';

const KiB = 1024;

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

const tick = (ms = 20): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('BlockDevice (host, fake device)', () => {
  const start = fakeBlockDevices();

  describe('open', () => {
    it('negotiates the block features the device offers and reads typed config in bytes', () => {
      const { fake, dev } = start({
        capacity: 8 << 20,
        eventIdx: true,
        indirect: true,
        segMax: 16,
        sizeMax: 8192,
      });
      assert.ok(dev.features & bit(VirtioF.ACCESS_PLATFORM));
      assert.ok(dev.features & bit(VirtioF.RING_EVENT_IDX));
      assert.ok(dev.features & bit(VirtioF.RING_INDIRECT_DESC));
      assert.ok(dev.features & bit(VirtioBlkF.DISCARD));
      assert.equal(dev.capacity, 8 << 20);
      assert.equal(dev.logicalBlockSize, 512);
      assert.equal(dev.physicalBlockSize, 512);
      assert.equal(dev.limits.segMax, 16);
      assert.equal(dev.limits.sizeMax, 8192);
      assert.equal(dev.limits.maxTransferBytes, 16 * 8192);
      assert.equal(dev.limits.maxBounceTransferBytes, 16 * 4096);
      assert.equal(dev.readOnly, false);
      assert.equal(dev.queueSize, 256);
      assert.equal(dev.eventIdx, true);
      assert.equal(dev.indirect, true);
      assert.equal(dev.notification, 'doorbell');
      assert.ok(fake.status & VIRTIO_CONFIG_S_DRIVER_OK);
      assert.ok(dev.featureNames.includes('RING_EVENT_IDX'));
    });

    it('leaves out features the caller excludes', () => {
      const { dev } = start(
        { eventIdx: true, indirect: true },
        { excludeFeatures: bit(VirtioF.RING_EVENT_IDX) | bit(VirtioF.RING_INDIRECT_DESC) },
      );
      assert.equal(dev.eventIdx, false);
      assert.equal(dev.indirect, false);
    });

    it('refuses a device that is not a block device, leaving it reset', () => {
      const fake = start.fake({ deviceId: 1 });
      assert.throws(() => BlockDevice.open(fake), {
        code: 'ERR_UNSUPPORTED',
        message: /virtio device 1, not a block/,
      });
      assert.equal(fake.status, 0);
    });

    it('refuses more queues than the device offers, and frees what it set up', () => {
      const fake = start.fake({ numQueues: 2 });
      assert.throws(() => BlockDevice.open(fake, { queues: 3 }), {
        code: 'ERR_OUT_OF_RANGE',
        message: /offers 2/,
      });
      assert.equal(fake.mappings.length, 0);
    });

    it('rejects an unknown completion mode before the device starts', () => {
      const fake = start.fake();
      assert.throws(() => BlockDevice.open(fake, { completion: 'spin' as never }), {
        code: 'ERR_INVALID_ARG',
      });
      assert.equal(fake.status, 0);
    });
  });

  describe('reads and writes', () => {
    it('round-trips ordinary Buffers through the bounce pool', async () => {
      const { fake, dev } = start();
      const data = pattern(12 * KiB, 1);
      await dev.write(8 * KiB, data);
      assert.deepEqual(fake.disk.subarray(8 * KiB, 20 * KiB), data);
      const back = await dev.read(8 * KiB, 12 * KiB);
      assert.deepEqual(back, data);
      const into = new Uint8Array(4 * KiB);
      assert.equal(await dev.readInto(12 * KiB, into), into);
      assert.deepEqual(Buffer.from(into), data.subarray(4 * KiB, 8 * KiB));
      assert.ok(dev.stats.bounced >= 3);
    });

    it('reads into and writes from allocBuffer() memory without the bounce pool', async () => {
      const { fake, dev } = start();
      const buffer = dev.allocBuffer(16 * KiB);
      pattern(16 * KiB, 2).copy(buffer);
      await dev.write(0, buffer);
      const view = buffer.subarray(4 * KiB, 8 * KiB);
      view.fill(0);
      await dev.readInto(4 * KiB, view);
      assert.deepEqual(fake.disk.subarray(0, 16 * KiB), buffer);
      assert.equal(dev.stats.bounced, 0);
      dev.freeBuffer(buffer);
      assert.equal(buffer.length, 0, 'freed memory is detached');
    });

    it('never uses a freed zero-copy buffer: the lookup relies on freeBuffer() removing it first', async () => {
      const { dev } = start();
      const a = dev.allocBuffer(4 * KiB);
      const b = dev.allocBuffer(4 * KiB);
      await dev.readInto(0, a);
      await dev.readInto(0, b); // b is now the lookup's cached entry, a only in the map
      dev.freeBuffer(a);
      await rejects(dev.readInto(0, a), 'ERR_INVALID_ARG', /length/);
      await dev.readInto(4 * KiB, b);
      dev.freeBuffer(b);
      await rejects(dev.readInto(0, b), 'ERR_INVALID_ARG', /length/);
      assert.equal(dev.stats.bounced, 0);
      const c = dev.allocBuffer(4 * KiB);
      await dev.readInto(0, c);
      assert.equal(dev.stats.bounced, 0, 'a new buffer is zero-copy again');
    });

    it('recognises an allocBuffer() view by a hidden tag that cannot be copied onto other memory', async () => {
      const { fake, dev } = start();
      const buffer = dev.allocBuffer(4 * KiB);
      const tags = Object.getOwnPropertySymbols(buffer);
      assert.equal(tags.length, 1, 'the view carries one symbol-keyed tag');
      assert.equal(Object.getOwnPropertySymbols({ ...buffer }).length, 0, 'the tag is not enumerable');
      assert.doesNotMatch(inspect(buffer), /Symbol/);
      // Copied by hand onto ordinary memory, the tag must not send the device to the tagged buffer.
      const ordinary = Buffer.alloc(4 * KiB);
      Object.defineProperty(ordinary, tags[0], {
        value: Object.getOwnPropertyDescriptor(buffer, tags[0])?.value as unknown,
      });
      fake.disk.fill(0x5a, 0, 4 * KiB);
      buffer.fill(0);
      assert.equal(await dev.readInto(0, ordinary), ordinary);
      assert.ok(
        ordinary.every((b) => b === 0x5a),
        'the data lands in the buffer that was passed',
      );
      assert.ok(
        buffer.every((b) => b === 0),
        'and not in the tagged one',
      );
      assert.equal(dev.stats.bounced, 1, 'ordinary memory goes through the bounce pool');
      await dev.readInto(0, buffer);
      assert.equal(dev.stats.bounced, 1, 'the tagged view itself is zero-copy');
      dev.freeBuffer(buffer);
      assert.equal(
        (buffer as unknown as Record<symbol, unknown>)[tags[0]],
        undefined,
        'a freed view no longer leads to its mapping',
      );
    });

    it('gives an allocBuffer() view an own, hidden `then` that is undefined, where the thenable check of V8 stops', async () => {
      const { dev } = start();
      const buffer = dev.allocBuffer(4 * KiB);
      // Resolving a Promise with an object looks up `then`; an own property ends that lookup at the view.
      assert.deepEqual(Object.getOwnPropertyDescriptor(buffer, 'then'), {
        value: undefined,
        writable: false,
        enumerable: false,
        configurable: false,
      });
      assert.ok(!Object.keys(buffer).includes('then'), 'not enumerable');
      assert.doesNotMatch(inspect(buffer), /then/);
      assert.equal(await dev.readInto(0, buffer), buffer, 'a read still resolves to the view itself');
      dev.freeBuffer(buffer);
    });

    it('splits requests larger than seg_max × size_max into device requests within the limits', async () => {
      const { fake, dev } = start({ segMax: 4, sizeMax: 4096 });
      const data = pattern(100 * KiB, 3);
      await dev.write(0, data);
      const writes = fake.seen.filter((s) => s.type === VIRTIO_BLK_T_OUT);
      assert.equal(writes.length, Math.ceil((100 * KiB) / (16 * KiB)));
      assert.ok(writes.every((s) => s.dataSegments <= 4));
      assert.deepEqual(await dev.read(0, 100 * KiB), data);
      const zc = dev.allocBuffer(64 * KiB);
      await dev.readInto(0, zc);
      assert.deepEqual(zc, data.subarray(0, 64 * KiB));
    });

    it('keeps more requests than ring slots waiting, in order, and completes them all (back-pressure)', async () => {
      const { fake, dev } = start({}, { queueSize: 8 });
      const writes = Array.from({ length: 40 }, (_, i) => dev.write(i * 4096, pattern(4096, 100 + i)));
      await Promise.all(writes);
      const sectors = fake.seen.map((s) => s.sector);
      assert.deepEqual(
        sectors,
        Array.from({ length: 40 }, (_, i) => i * 8),
        'dispatched in submission order',
      );
      const reads = await Promise.all(Array.from({ length: 40 }, (_, i) => dev.read(i * 4096, 4096)));
      reads.forEach((r, i) => assert.deepEqual(r, pattern(4096, 100 + i)));
    });

    it('waits for bounce space when the pool is exhausted', async () => {
      const { dev } = start({ segMax: 4 }, { bounceBytes: 1 });
      // The pool is at its minimum: two maximal requests (2 × 4 chunks).
      const data = pattern(256 * KiB, 4);
      await Promise.all([dev.write(0, data), dev.write(512 * KiB, data)]);
      assert.deepEqual(await dev.read(512 * KiB, 256 * KiB), data);
    });

    it('sends one kick for requests made in one tick, and one for a submit() batch', async () => {
      const { fake, dev } = start();
      const before = fake.kicks;
      await Promise.all(Array.from({ length: 16 }, (_, i) => dev.read(i * 512, 512)));
      assert.equal(fake.kicks - before, 1);
      const again = fake.kicks;
      const results = dev.submit([
        { op: 'write', offset: 0, data: pattern(512, 5) },
        { op: 'read', offset: 4096, length: 1024 },
        { op: 'flush' },
        { op: 'writeZeroes', offset: 8192, length: 512 },
        { op: 'discard', offset: 16384, length: 512 },
      ]);
      assert.equal(fake.kicks - again, 1, 'submit() kicks synchronously, once');
      await Promise.all(results);
      assert.equal(dev.stats.kicks, 2);
    });

    it('notifies through the kick eventfd when the device has no doorbell', async () => {
      const { dev } = start({ doorbell: false });
      assert.equal(dev.notification, 'eventfd');
      const data = pattern(4096, 6);
      await dev.write(4096, data);
      assert.deepEqual(await dev.read(4096, 4096), data);
    });

    it('uses one indirect descriptor per request when INDIRECT_DESC is offered', async () => {
      const { fake, dev } = start({ indirect: true, segMax: 8 }, { queueSize: 4 });
      await Promise.all(Array.from({ length: 12 }, (_, i) => dev.write(i * 8192, pattern(8192, i))));
      assert.ok(fake.seen.every((s) => s.indirect));
      assert.equal(dev.stats.indirect, 12);
    });

    it('with EVENT_IDX, completes everything with interrupts re-armed each time', async () => {
      const { fake, dev } = start({ eventIdx: true });
      for (let i = 0; i < 20; i++) await dev.write(i * 512, pattern(512, i));
      assert.equal(fake.interruptsSent, 20);
      assert.equal(dev.stats.completions, 20);
    });

    it('poll mode completes requests with interrupts suppressed', async () => {
      const { fake, dev } = start({}, { completion: 'poll' });
      await Promise.all(Array.from({ length: 10 }, (_, i) => dev.write(i * 512, pattern(512, i))));
      assert.equal(fake.interruptsSent, 0, 'VRING_AVAIL_F_NO_INTERRUPT honoured by the device');
      assert.ok(dev.stats.polls > 0);
    });

    it('spreads requests over several queues with MQ', async () => {
      const { fake, dev } = start({ numQueues: 3 }, { queues: 3 });
      await Promise.all(Array.from({ length: 9 }, (_, i) => dev.read(i * 512, 512)));
      assert.deepEqual(
        [0, 1, 2].map((q) => fake.seen.filter((s) => s.queue === q).length),
        [3, 3, 3],
      );
    });
  });

  describe('poll mode and the event loop', () => {
    it('picks up a request resubmitted from an await continuation without an event-loop turn', async () => {
      const { dev } = start({ synchronous: true }, { completion: 'poll', pollSliceMicros: 10_000_000 });
      const buffer = dev.allocBuffer(4096);
      await dev.readInto(0, buffer); // polling is running from here on
      let turns = 0;
      let counting = true;
      const count = (): void => {
        turns++;
        if (counting) setImmediate(count);
      };
      setImmediate(count);
      const before = dev.stats;
      for (let i = 0; i < 100; i++) await dev.readInto(i * 4096, buffer);
      counting = false;
      const after = dev.stats;
      assert.equal(after.completions - before.completions, 100);
      assert.equal(after.pollYields - before.pollYields, 0, 'no round waited for setImmediate');
      assert.equal(after.polls - before.polls, 100, 'one poll round per request');
      assert.ok(turns <= 1, `${turns} event-loop turns for 100 sequential requests`);
    });

    it('shares one kick among the requests resubmitted in one microtask checkpoint', async () => {
      const { dev } = start(
        { synchronous: true, perPass: 64 },
        { completion: 'poll', pollSliceMicros: 10_000_000 },
      );
      const buffers = Array.from({ length: 8 }, () => dev.allocBuffer(4096));
      await Promise.all(buffers.map((b, i) => dev.readInto(i * 4096, b)));
      const before = dev.stats;
      // Eight loops at QD8: each round completes all eight, each checkpoint resubmits all eight.
      await Promise.all(
        buffers.map(async (b, i) => {
          for (let n = 0; n < 10; n++) await dev.readInto(((i * 10 + n) % 64) * 4096, b);
        }),
      );
      const after = dev.stats;
      assert.equal(after.completions - before.completions, 80);
      assert.equal(after.kicks - before.kicks, 10, 'one kick per batch of 8');
    });

    it('lets timers and I/O run while completions keep coming (bounded slices)', async () => {
      const { dev } = start({ synchronous: true }, { completion: 'poll', pollSliceMicros: 2000 });
      const buffer = dev.allocBuffer(4096);
      const t0 = performance.now();
      let stop = false;
      let ios = 0;
      const loop = (async () => {
        // The time guard only matters if the loop starved the timer below (the test then fails).
        while (!stop && performance.now() - t0 < 3000) {
          await dev.readInto(0, buffer);
          ios++;
        }
      })();
      await new Promise((resolve) => setTimeout(resolve, 5));
      const waited = performance.now() - t0;
      stop = true;
      await loop;
      assert.ok(ios > 0);
      assert.ok(waited < 1000, `a 5 ms timer fired after ${waited.toFixed(1)} ms`);
      assert.ok(dev.stats.pollYields > 0, 'the poll loop yielded to the event loop');
    });

    it('publishes a lone request made right after a lone completion at once; a burst still batches', async () => {
      for (const completion of ['interrupt', 'poll'] as const) {
        const { fake, dev } = start({}, { completion });
        await dev.read(0, 512); // this continuation runs after a service that found exactly one completion
        const kicks = fake.kicks;
        const first = dev.read(512, 512);
        assert.equal(fake.kicks, kicks + 1, `${completion}: published without waiting for the microtask`);
        const second = dev.read(1024, 512);
        const third = dev.read(1536, 512);
        assert.equal(fake.kicks, kicks + 1, `${completion}: the requests after it wait for the batch`);
        await Promise.all([first, second, third]);
        assert.equal(fake.kicks, kicks + 2, `${completion}: one kick for the rest of the burst`);
        const burst = Array.from({ length: 8 }, (_, i) => dev.read(i * 512, 512));
        assert.equal(
          fake.kicks,
          kicks + 2,
          `${completion}: after a batch of completions nothing is published early`,
        );
        await Promise.all(burst);
        assert.equal(fake.kicks, kicks + 3);
      }
    });

    it('stops polling when nothing is in flight', async () => {
      const { dev } = start({}, { completion: 'poll' });
      await dev.read(0, 512);
      await tick();
      const polls = dev.stats.polls;
      await tick();
      assert.equal(dev.stats.polls, polls);
    });
  });

  describe('poll()', () => {
    it('publishes, collects and resolves synchronously; reactions run at the next checkpoint', async () => {
      const { fake, dev } = start({ synchronous: true }, { completion: 'interrupt' });
      const data = pattern(4096, 9);
      let settled = false;
      const written = dev.write(8192, data).then(() => {
        settled = true;
      });
      assert.equal(fake.kicks, 0, 'nothing published before the microtask');
      assert.equal(dev.poll(), 1, 'published and completed in one call');
      assert.equal(fake.kicks, 1);
      assert.equal(settled, false, 'promise reactions wait for the microtask checkpoint');
      await written;
      assert.equal(settled, true);
      assert.deepEqual(fake.disk.subarray(8192, 8192 + 4096), data);
      assert.equal(dev.poll(), 0);
      assert.equal(dev.stats.syncPolls, 2);
      await tick(); // the call-eventfd wake-up finds nothing left
      assert.equal(dev.stats.completions, 1);
    });

    it('lets a caller spin without the event loop', async () => {
      const { fake, dev } = start({}, { completion: 'poll' });
      fake.hold = true;
      const read = dev.read(0, 512);
      dev.poll();
      await tick();
      assert.equal(fake.heldCount, 1);
      fake.release();
      let spins = 0;
      while (dev.poll() === 0) spins++;
      assert.ok(spins < 1000);
      assert.equal((await read).length, 512);
    });

    it('returns 0 after close', async () => {
      const { dev } = start();
      await dev.close();
      assert.equal(dev.poll(), 0);
    });
  });

  describe('flush, discard, write-zeroes, id', () => {
    it('flushes with VIRTIO_BLK_T_FLUSH, and resolves without a request when the device has no FLUSH', async () => {
      const { fake, dev } = start();
      await dev.flush();
      assert.equal(fake.seen.filter((s) => s.type === VIRTIO_BLK_T_FLUSH).length, 1);
      const noFlush = start({}, { excludeFeatures: bit(VirtioBlkF.FLUSH) });
      await noFlush.dev.flush();
      assert.equal(noFlush.fake.seen.length, 0);
    });

    it('writes zeroes (with the unmap flag on request) and discards, split by the device maxima', async () => {
      const { fake, dev } = start({ maxWriteZeroesSectors: 16, maxDiscardSectors: 8 });
      await dev.write(0, pattern(32 * KiB, 7));
      await dev.writeZeroes(4096, 16 * KiB, { unmap: true });
      assert.ok(fake.disk.subarray(4096, 4096 + 16 * KiB).every((b) => b === 0));
      assert.notEqual(fake.disk[4095], 0);
      const wz = fake.seen.filter((s) => s.type === VIRTIO_BLK_T_WRITE_ZEROES);
      assert.deepEqual(
        wz.map((s) => [s.sector, s.bytes, s.flags]),
        [
          [8, 8192, 1],
          [24, 8192, 1],
        ],
      );
      await dev.discard(0, 8192);
      const discards = fake.seen.filter((s) => s.type === VIRTIO_BLK_T_DISCARD);
      assert.deepEqual(
        discards.map((s) => [s.sector, s.bytes, s.flags]),
        [
          [0, 4096, 0],
          [8, 4096, 0],
        ],
      );
    });

    it('reads the device id', async () => {
      const { dev } = start({ id: 'serial-1234' });
      assert.equal(await dev.getId(), 'serial-1234');
    });

    it('sends raw requests and resolves to the bytes the device wrote', async () => {
      const { dev } = start({ id: 'abc' });
      const id = await dev.rawRequest({ type: 8, responseLength: 20 });
      assert.equal(id.subarray(0, 3).toString(), 'abc');
      await rejects(dev.rawRequest({ type: 10, responseLength: 8 }), 'ERR_DEVICE_UNSUPP', /GET_LIFETIME/);
      await rejects(dev.rawRequest({ type: 8, responseLength: 65 }), 'ERR_OUT_OF_RANGE');
      await rejects(dev.rawRequest({ type: -1 }), 'ERR_INVALID_ARG');
    });
  });

  describe('validation before the device sees anything', () => {
    it('rejects misaligned offsets and lengths with ERR_MISALIGNED', async () => {
      const { fake, dev } = start();
      await rejects(
        dev.read(100, 512),
        'ERR_MISALIGNED',
        /read of 512 bytes at offset 100 .*512-byte logical block/,
      );
      await rejects(dev.write(512, Buffer.alloc(100)), 'ERR_MISALIGNED');
      await rejects(dev.discard(0, 1000), 'ERR_MISALIGNED');
      await rejects(dev.writeZeroes(1, 512), 'ERR_MISALIGNED');
      assert.equal(fake.seen.length, 0);
    });

    it('rejects ranges beyond the capacity with ERR_OUT_OF_RANGE', async () => {
      const { fake, dev } = start({ capacity: 1 << 20 });
      await rejects(dev.read(1 << 20, 512), 'ERR_OUT_OF_RANGE', /beyond the device capacity of 1048576/);
      await rejects(dev.write((1 << 20) - 512, Buffer.alloc(1024)), 'ERR_OUT_OF_RANGE');
      await rejects(dev.discard(0, 2 << 20), 'ERR_OUT_OF_RANGE');
      assert.equal(fake.seen.length, 0);
    });

    it('rejects zero, negative and non-integer sizes and non-buffers with ERR_INVALID_ARG', async () => {
      const { dev } = start();
      await rejects(dev.read(0, 0), 'ERR_INVALID_ARG');
      await rejects(dev.read(-512, 512), 'ERR_INVALID_ARG');
      await rejects(dev.read(0.5, 512), 'ERR_INVALID_ARG');
      await rejects(dev.write(0, 'text' as unknown as Uint8Array), 'ERR_INVALID_ARG');
      await rejects(dev.submit([{ op: 'trim' } as never])[0], 'ERR_INVALID_ARG', /unknown operation/);
    });

    it('refuses writes, discards and write-zeroes on a read-only device (VIRTIO_BLK_F_RO) with ERR_READ_ONLY', async () => {
      const { fake, dev } = start({ readOnly: true });
      assert.equal(dev.readOnly, true);
      await rejects(dev.write(0, Buffer.alloc(512)), 'ERR_READ_ONLY', /VIRTIO_BLK_F_RO/);
      await rejects(dev.discard(0, 512), 'ERR_READ_ONLY');
      await rejects(dev.writeZeroes(0, 512), 'ERR_READ_ONLY');
      await dev.read(0, 512);
      assert.deepEqual(
        fake.seen.map((s) => s.type),
        [VIRTIO_BLK_T_IN],
      );
    });

    it('refuses writes when opened readOnly', async () => {
      const { dev } = start({}, { readOnly: true });
      await rejects(dev.write(0, Buffer.alloc(512)), 'ERR_READ_ONLY', /opened with readOnly/);
    });

    it('refuses discard and write-zeroes when the device lacks them with ERR_UNSUPPORTED', async () => {
      const { fake, dev } = start(
        {},
        { excludeFeatures: bit(VirtioBlkF.DISCARD) | bit(VirtioBlkF.WRITE_ZEROES) },
      );
      await rejects(dev.discard(0, 512), 'ERR_UNSUPPORTED', /VIRTIO_BLK_F_DISCARD/);
      await rejects(dev.writeZeroes(0, 512), 'ERR_UNSUPPORTED', /VIRTIO_BLK_F_WRITE_ZEROES/);
      assert.equal(fake.seen.length, 0);
    });

    it('refuses to free a buffer in use, or one it did not allocate', async () => {
      const { fake, dev } = start();
      const buffer = dev.allocBuffer(4096);
      fake.hold = true;
      const pending = dev.readInto(0, buffer);
      await tick();
      assert.throws(() => dev.freeBuffer(buffer), { code: 'ERR_BUSY', message: /queued or in flight/ });
      fake.release();
      await pending;
      dev.freeBuffer(buffer);
      assert.throws(() => dev.freeBuffer(buffer), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => dev.freeBuffer(Buffer.alloc(10)), { code: 'ERR_INVALID_ARG' });
    });
  });

  describe('device errors', () => {
    it('turns VIRTIO_BLK_S_IOERR into EIO naming the request', async () => {
      const { fake, dev } = start();
      fake.statusFor = (s) => (s.type === VIRTIO_BLK_T_IN ? VIRTIO_BLK_S_IOERR : undefined);
      const error = await rejects(
        dev.read(4096, 1024),
        'EIO',
        /read of 1024 bytes at offset 4096 .*VIRTIO_BLK_S_IOERR/,
      );
      assert.equal(error.errno, 5);
      await dev.write(0, Buffer.alloc(512)); // other requests unaffected
    });

    it('names the failing piece of a split request and fails the whole request once', async () => {
      const { fake, dev } = start({ segMax: 1 });
      fake.statusFor = (s) => (s.sector === 16 ? VIRTIO_BLK_S_IOERR : undefined);
      await rejects(
        dev.write(0, Buffer.alloc(5 * 4096)),
        'EIO',
        /write of 20480 bytes at offset 0 .*device request VIRTIO_BLK_T_OUT of 4096 bytes at offset 8192/,
      );
    });

    it('turns VIRTIO_BLK_S_UNSUPP into ERR_DEVICE_UNSUPP naming the request', async () => {
      const { fake, dev } = start();
      fake.statusFor = (s) => (s.type === VIRTIO_BLK_T_DISCARD ? VIRTIO_BLK_S_UNSUPP : undefined);
      await rejects(dev.discard(8192, 4096), 'ERR_DEVICE_UNSUPP', /discard of 4096 bytes at offset 8192/);
    });

    it('reports a completion without a status byte as EIO', async () => {
      const { fake, dev } = start();
      fake.skipStatus = true;
      await rejects(dev.flush(), 'EIO', /without writing a status byte/);
    });

    it('fails every request in flight with ERR_QUEUE_CORRUPT on a corrupt used entry, resets the device, and hands no data over', async () => {
      const { fake, dev } = start();
      await dev.write(0, pattern(8192, 9));
      fake.corrupt = (head) => ({ id: head + 1000, length: 1 });
      const target = Buffer.alloc(4096, 0xee);
      const results = await Promise.allSettled([dev.readInto(0, target), dev.read(4096, 4096)]);
      for (const r of results) {
        assert.equal(r.status, 'rejected');
        assert.equal((r.reason as VdpaError).code, 'ERR_QUEUE_CORRUPT');
        assert.match(
          (r.reason as VdpaError).message,
          /read of 4096 bytes at offset \d+: .*outside the 256-entry table/,
        );
      }
      assert.ok(
        target.every((b) => b === 0xee),
        'bounce data never copied into the target',
      );
      assert.ok(fake.resets >= 1, 'device reset');
      // The driver recovered: once the device behaves, requests succeed with the right data.
      fake.corrupt = undefined;
      assert.deepEqual(await dev.read(0, 8192), pattern(8192, 9));
      assert.equal(dev.stats.resets, 1);
    });

    it('gives up after resets in a row that bring no progress: ERR_DEVICE_FAILED and a failed event', async () => {
      const { fake, dev } = start();
      fake.corrupt = (head) => ({ id: head + 1000, length: 1 });
      let failed: VdpaError | undefined;
      dev.on('failed', (error: VdpaError) => (failed = error));
      for (let i = 0; i < 3; i++) await rejects(dev.read(0, 512), 'ERR_QUEUE_CORRUPT');
      await rejects(dev.read(0, 512), 'ERR_QUEUE_CORRUPT');
      assert.equal(failed?.code, 'ERR_DEVICE_FAILED');
      assert.equal(dev.state, 'failed');
      await rejects(
        dev.read(0, 512),
        'ERR_DEVICE_FAILED',
        /resets in a row without progress.*close the device/,
      );
    });

    it('detects a used length larger than the request’s writable bytes', async () => {
      const { fake, dev } = start();
      fake.corrupt = (head) => ({ id: head, length: 1 << 20 });
      await rejects(dev.read(0, 512), 'ERR_QUEUE_CORRUPT', /device-writable bytes/);
    });
  });

  describe('close', () => {
    it('drains requests in flight and queued, then refuses new ones with ERR_CLOSED', async () => {
      const { fake, dev } = start({}, { queueSize: 4 });
      fake.hold = true;
      const pending = Array.from({ length: 6 }, (_, i) => dev.write(i * 512, pattern(512, i)));
      await tick();
      assert.ok(fake.heldCount > 0);
      const closing = dev.close();
      await rejects(dev.read(0, 512), 'ERR_CLOSED');
      setTimeout(() => fake.release(), 30);
      // Released requests complete; the queued rest follow as slots free up.
      const hold = setInterval(() => fake.release(), 5);
      await Promise.all(pending);
      await closing;
      clearInterval(hold);
      assert.equal(dev.closed, true);
      assert.equal(fake.mappings.length, 0, 'all memory unmapped');
      await rejects(dev.write(0, Buffer.alloc(512)), 'ERR_CLOSED');
      assert.equal(dev.close(), dev.close(), 'idempotent');
    });

    it('with drain: false rejects each request in flight or queued with ERR_CLOSED naming it', async () => {
      const { fake, dev } = start({}, { queueSize: 4 });
      fake.hold = true;
      const pending = [
        dev.read(0, 4096),
        dev.write(8192, Buffer.alloc(1024)),
        dev.flush(),
        dev.read(512, 512),
      ];
      await tick();
      const closing = dev.close({ drain: false, timeoutMs: 50 });
      const settled = await Promise.allSettled(pending);
      await closing;
      const messages = settled.map((s) => {
        assert.equal(s.status, 'rejected');
        assert.equal((s.reason as VdpaError).code, 'ERR_CLOSED');
        return (s.reason as VdpaError).message;
      });
      assert.match(messages[0], /read of 4096 bytes at offset 0 .*aborted: close\(\{ drain: false \}\)/);
      assert.match(messages[1], /write of 1024 bytes at offset 8192/);
      assert.match(messages[2], /^flush/);
      assert.equal(fake.status, 0);
    });

    it('with drain: false rejects at once, but resets the device only after it finished what it holds', async () => {
      const { fake, dev } = start();
      fake.hold = true;
      const target = Buffer.alloc(4096, 0xaa);
      const pending = dev.readInto(0, target);
      await tick();
      assert.equal(fake.heldCount, 1);
      fake.disk.fill(0x55, 0, 4096);
      let closed = false;
      const closing = dev.close({ drain: false }).then(() => (closed = true));
      await rejects(pending, 'ERR_CLOSED');
      await tick();
      assert.equal(closed, false, 'close waits for the device');
      assert.ok(fake.status & VIRTIO_CONFIG_S_DRIVER_OK, 'not reset while the device holds a request');
      fake.release();
      await closing;
      assert.equal(fake.status, 0);
      assert.ok(
        target.every((b) => b === 0xaa),
        'a rejected read never writes into the caller’s buffer',
      );
    });

    it('rejects what is still pending when draining times out', async () => {
      const { fake, dev } = start();
      fake.hold = true;
      const pending = dev.read(0, 512);
      await tick();
      await dev.close({ timeoutMs: 30 });
      await rejects(pending, 'ERR_CLOSED', /waited 30 ms/);
    });
  });

  describe('packed virtqueues (VIRTIO_F_RING_PACKED, host fake only)', () => {
    it('negotiates RING_PACKED when offered (ring: auto), and keeps split when asked or not offered', () => {
      const packed = start({ packed: true });
      assert.equal(packed.dev.ring, 'packed');
      assert.ok(packed.dev.features & bit(VirtioF.RING_PACKED));
      assert.ok(packed.dev.featureNames.includes('RING_PACKED'));
      assert.equal(packed.fake.packed, true);
      const split = start({ packed: true }, { ring: 'split' });
      assert.equal(split.dev.ring, 'split');
      assert.equal(split.dev.features & bit(VirtioF.RING_PACKED), 0n);
      assert.equal(start().dev.ring, 'split');
      assert.equal(start({ packed: true }, { ring: 'packed' }).dev.ring, 'packed');
    });

    it("refuses ring: 'packed' on a device without RING_PACKED, and an unknown ring, leaving it reset", () => {
      const fake = start.fake();
      assert.throws(() => BlockDevice.open(fake, { ring: 'packed' }), {
        code: 'ERR_NEGOTIATION',
        message: /RING_PACKED/,
      });
      assert.equal(fake.status, 0);
      assert.throws(() => BlockDevice.open(fake, { ring: 'ring' as never }), { code: 'ERR_INVALID_ARG' });
    });

    for (const variant of [
      { name: 'plain', fake: {} },
      { name: 'EVENT_IDX + INDIRECT_DESC', fake: { eventIdx: true, indirect: true } },
    ]) {
      it(`reads, writes and flushes with data verified over many laps of a 16-entry ring (${variant.name})`, async () => {
        const { fake, dev } = start({ packed: true, ...variant.fake }, { queueSize: 16 });
        assert.equal(dev.ring, 'packed');
        const size = 64 * KiB;
        // 48 concurrent writes of 1–3 segments each, then reads back: far more descriptors than the ring holds.
        const writes = Array.from({ length: 48 }, (_, i) => dev.write(i * size, pattern(size, i + 1)));
        await Promise.all(writes);
        await dev.flush();
        for (let i = 0; i < 48; i++)
          assert.deepEqual(fake.disk.subarray(i * size, (i + 1) * size), pattern(size, i + 1));
        const reads = await Promise.all(Array.from({ length: 48 }, (_, i) => dev.read(i * size, size)));
        reads.forEach((r, i) => assert.deepEqual(r, pattern(size, i + 1)));
        const small = await Promise.all(Array.from({ length: 40 }, (_, i) => dev.read(i * 512, 512)));
        small.forEach((r, i) => assert.deepEqual(r, fake.disk.subarray(i * 512, (i + 1) * 512)));
        assert.equal(fake.seen.filter((s) => s.type === VIRTIO_BLK_T_FLUSH).length, 1);
        assert.ok(dev.stats.completions > 3 * 16, 'several laps of the ring');
        if (variant.fake.indirect === true) assert.ok(dev.stats.indirect > 0);
      });
    }

    it('serves zero-copy buffers and poll mode over a packed ring', async () => {
      const { fake, dev } = start({ packed: true, eventIdx: true }, { completion: 'poll', queueSize: 8 });
      const buffer = dev.allocBuffer(32 * KiB);
      pattern(32 * KiB, 9).copy(buffer);
      await dev.write(4 * KiB, buffer);
      assert.deepEqual(fake.disk.subarray(4 * KiB, 36 * KiB), buffer);
      for (let i = 0; i < 20; i++) {
        const view = buffer.subarray(0, 4 * KiB);
        view.fill(0);
        await dev.readInto(4 * KiB + (i % 8) * 4 * KiB, view);
        assert.deepEqual(
          Buffer.from(view),
          fake.disk.subarray(4 * KiB + (i % 8) * 4 * KiB, 8 * KiB + (i % 8) * 4 * KiB),
        );
      }
      dev.freeBuffer(buffer);
    });

    it('fails requests with ERR_QUEUE_CORRUPT when the device returns a bad buffer id', async () => {
      const { fake, dev } = start({ packed: true });
      await dev.write(0, pattern(4096, 3));
      fake.corrupt = (head) => ({ id: head + 1000, length: 1 });
      const target = Buffer.alloc(4096, 0xee);
      await rejects(dev.readInto(0, target), 'ERR_QUEUE_CORRUPT', /buffer id \d+, which is outside/);
      assert.ok(target.every((b) => b === 0xee));
    });
  });
});
