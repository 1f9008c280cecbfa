import { strict as assert } from 'node:assert';
import { performance } from 'node:perf_hooks';
import { BlockDevice, BlkConfig, ResetEvent, VdpaError } from '../../lib';
import { fakeBlockDevices } from './blk-fake-device';
import { rejects } from '../assertions';

/** Awaits `promise` and asserts it rejects with Node's AbortError shape. */
async function rejectsAborted(
  promise: Promise<unknown>,
  message?: RegExp,
): Promise<Error & { code?: string }> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error);
    assert.equal(error.name, 'AbortError');
    assert.equal((error as { code?: string }).code, 'ABORT_ERR');
    if (message !== undefined) assert.match(error.message, message);
    return error;
  }
  assert.fail('expected an AbortError');
}

const tick = (ms = 20): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

describe('BlockDevice deadlines, recovery, cancellation and config changes (host, fake device)', () => {
  const start = fakeBlockDevices();

  describe('deadlines', () => {
    for (const completion of ['interrupt', 'poll'] as const) {
      it(`rejects a request the device never completes with ETIMEDOUT, resets the device and goes on (${completion})`, async () => {
        const { fake, dev } = start({}, { requestTimeoutMs: 200, completion });
        const resets: ResetEvent[] = [];
        dev.on('reset', (event: ResetEvent) => resets.push(event));
        await dev.write(0, Buffer.alloc(4096, 7));
        fake.hold = true;
        const began = performance.now();
        const error = await rejects(
          dev.read(0, 4096),
          'ETIMEDOUT',
          /read of 4096 bytes at offset 0 .*200 ms/,
        );
        const waited = performance.now() - began;
        assert.equal(error.errno, 110);
        assert.ok(waited >= 200 && waited < 200 + 1000, `timed out after ${waited.toFixed(0)} ms`);
        fake.hold = false;
        await tick();
        assert.equal(resets.length, 1);
        assert.equal(resets[0].reason.code, 'ETIMEDOUT');
        assert.ok(fake.resets >= 1);
        assert.deepEqual(
          await dev.read(0, 4096),
          Buffer.alloc(4096, 7),
          'the device serves again after recovery',
        );
        assert.equal(dev.stats.timeouts, 1);
        assert.equal(dev.state, 'open');
      });
    }

    it('fails the other requests in flight with ERR_RESET and serves those still queued after the reset', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 150, queueSize: 8 });
      fake.hold = true;
      // 8 descriptors hold 2 three-descriptor chains; the rest wait in the driver's FIFO.
      const requests = Array.from({ length: 5 }, (_, i) => dev.write(i * 512, Buffer.alloc(512, i + 1)));
      await tick();
      assert.equal(fake.heldCount, 2);
      fake.hold = false; // the device drops what it held on reset and then serves normally
      const results = await Promise.allSettled(requests);
      const codes = results.map((r) => (r.status === 'rejected' ? (r.reason as VdpaError).code : 'ok'));
      assert.deepEqual(codes, ['ETIMEDOUT', 'ETIMEDOUT', 'ok', 'ok', 'ok']);
      for (let i = 2; i < 5; i++) assert.equal(fake.disk[i * 512], i + 1);
    });

    it('names ERR_RESET as retryable for a request in flight on another queue', async () => {
      const { fake, dev } = start({ numQueues: 2 }, { requestTimeoutMs: 150, queues: 2 });
      fake.hold = true;
      const first = dev.read(0, 512);
      await tick(100);
      const second = dev.read(512, 512); // dispatched 100 ms later: not late when the first times out
      await rejects(first, 'ETIMEDOUT');
      await rejects(second, 'ERR_RESET', /in flight when the driver reset the device .*retry it/);
    });

    it('does not time out a slow device that completes within the deadline', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 300 });
      fake.hold = true;
      const pending = dev.read(0, 4096);
      await tick(150);
      fake.release();
      await pending;
      assert.equal(dev.stats.resets, 0);
    });

    it('poll mode stops spinning on a device that stops completing, and wakes on its next interrupt', async () => {
      const { fake, dev } = start({ eventIdx: true }, { completion: 'poll', requestTimeoutMs: 0 });
      await dev.read(0, 4096);
      fake.hold = true;
      const pending = dev.read(0, 4096);
      await tick(200);
      const polls = dev.stats.polls;
      await tick(200);
      assert.equal(dev.stats.polls, polls, 'no poll rounds while parked');
      assert.equal(dev.stats.pollParks, 1);
      fake.release();
      await pending;
      await dev.read(4096, 4096); // polling again
      assert.ok(dev.stats.polls > polls);
    });

    it('with requestTimeoutMs 0 waits as long as the device takes', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 0 });
      fake.hold = true;
      const pending = dev.read(0, 4096);
      await tick(300);
      fake.release();
      await pending;
      assert.equal(dev.stats.timeouts, 0);
    });

    it('refuses a negative or fractional requestTimeoutMs', () => {
      const fake = start.fake();
      assert.throws(() => BlockDevice.open(fake, { requestTimeoutMs: -1 }), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => BlockDevice.open(fake, { requestTimeoutMs: 1.5 }), { code: 'ERR_INVALID_ARG' });
      assert.equal(fake.status, 0, 'left reset');
    });

    it('fails for good when the reset fails: ERR_DEVICE_FAILED for every request, a failed event, close settles', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 100 });
      fake.resetError = new VdpaError('ioctl(VHOST_VDPA_SET_STATUS) failed: EIO', { code: 'EIO', errno: 5 });
      const failed: VdpaError[] = [];
      dev.on('failed', (error: VdpaError) => failed.push(error));
      fake.hold = true;
      const inFlight = dev.read(0, 512);
      await rejects(inFlight, 'ETIMEDOUT');
      await tick(50);
      assert.equal(failed.length, 1);
      assert.equal(failed[0].code, 'ERR_DEVICE_FAILED');
      assert.match(failed[0].message, /the reset failed .*EIO/);
      assert.equal(dev.state, 'failed');
      await rejects(dev.read(0, 512), 'ERR_DEVICE_FAILED', /close the device/);
      await dev.close();
      assert.equal(dev.closed, true);
    });

    it('queues requests made while the reset is under way and serves them afterwards', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 100 });
      fake.resetDelayMs = 200;
      fake.hold = true;
      const late = dev.read(0, 512);
      await rejects(late, 'ETIMEDOUT');
      fake.hold = false;
      assert.equal(dev.state, 'recovering');
      const during = dev.write(0, Buffer.alloc(512, 3));
      await during;
      assert.equal(fake.disk[0], 3);
      assert.equal(dev.state, 'open');
    });

    it('keeps the event loop running while a slow reset is under way (the reset is awaited, not blocking)', async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 100 });
      fake.resetDelayMs = 300;
      fake.hold = true;
      await rejects(dev.read(0, 512), 'ETIMEDOUT');
      fake.hold = false;
      // Timers run while the device takes 300 ms to reset: a blocking reset would have finished first.
      assert.equal(dev.state, 'recovering');
      await tick(50);
      assert.equal(dev.state, 'recovering', 'a timer ran during the reset');
      await dev.read(0, 512);
      assert.equal(dev.state, 'open');
    });
  });

  describe('cancellation', () => {
    it('rejects at once with AbortError when the signal is already aborted, and sends nothing', async () => {
      const { fake, dev } = start();
      const error = await rejectsAborted(dev.read(0, 512, { signal: AbortSignal.abort() }));
      assert.match(error.message, /read on \/dev\/fake-vhost-vdpa was aborted/);
      assert.equal(fake.seen.length, 0);
    });

    it('drops a queued request when aborted: it never reaches the device, the others are untouched', async () => {
      const { fake, dev } = start({}, { queueSize: 4 });
      fake.hold = true;
      const inRing = dev.write(0, Buffer.alloc(512, 1));
      const controller = new AbortController();
      const queued = dev.write(512, Buffer.alloc(512, 2), { signal: controller.signal });
      const after = dev.write(1024, Buffer.alloc(512, 3));
      await tick();
      assert.equal(fake.heldCount, 1, 'a 4-entry ring holds one 3-descriptor chain');
      controller.abort();
      await rejectsAborted(queued, /write of 512 bytes at offset 512 .*aborted/);
      fake.release();
      await inRing;
      await after;
      assert.equal(fake.disk[512], 0, 'the aborted write never reached the device');
      assert.equal(fake.disk[1024], 3);
      assert.deepEqual(
        fake.seen.map((s) => s.sector),
        [0, 2],
      );
    });

    it('rejects an in-flight request at once when aborted; its zero-copy buffer stays reserved until the device returns it', async () => {
      const { fake, dev } = start();
      const buffer = dev.allocBuffer(4096);
      fake.hold = true;
      const controller = new AbortController();
      const pending = dev.readInto(0, buffer, { signal: controller.signal });
      await tick();
      controller.abort(new Error('user gave up'));
      const error = await rejectsAborted(pending);
      assert.equal((error.cause as Error).message, 'user gave up');
      assert.throws(() => dev.freeBuffer(buffer), { code: 'ERR_BUSY' });
      const other = dev.write(8192, Buffer.alloc(512, 4)); // other requests go on
      await tick();
      fake.release();
      await other;
      assert.equal(fake.disk[8192], 4);
      assert.equal(dev.pending, 0);
      dev.freeBuffer(buffer);
    });

    it('counts a zero-copy buffer in use from the moment a request is queued (ERR_BUSY before dispatch)', async () => {
      const { fake, dev } = start({}, { queueSize: 4 });
      const buffer = dev.allocBuffer(4096);
      fake.hold = true;
      const first = dev.read(0, 512);
      const queued = dev.readInto(0, buffer);
      await tick();
      assert.equal(fake.heldCount, 1, 'the zero-copy read is still in the driver FIFO');
      assert.throws(() => dev.freeBuffer(buffer), { code: 'ERR_BUSY' });
      fake.release();
      await first;
      fake.release();
      await queued;
      dev.freeBuffer(buffer);
    });
  });

  describe('config changes', () => {
    it("emits 'config-change' with the new capacity, updated first, and serves the new end of the disk", async () => {
      const { fake, dev } = start({ capacity: 1 << 20 });
      assert.equal(dev.capacity, 1 << 20);
      await rejects(dev.write(1 << 20, Buffer.alloc(512)), 'ERR_OUT_OF_RANGE');
      const changed = new Promise<{ config: BlkConfig; capacity: number }>((resolve) =>
        dev.once('config-change', (config: BlkConfig) => resolve({ config, capacity: dev.capacity })),
      );
      fake.resize(2 << 20);
      const { config, capacity } = await changed;
      assert.equal(config.capacity, BigInt((2 << 20) / 512));
      assert.equal(capacity, 2 << 20, 'capacity is updated before the event');
      await dev.write((2 << 20) - 512, Buffer.alloc(512, 9));
      assert.equal(fake.disk[(2 << 20) - 512], 9);
      assert.equal(dev.stats.configInterrupts, 1);
    });

    it('resets and recovers when the device sets NEEDS_RESET, failing what was in flight with ERR_RESET', async () => {
      const { fake, dev } = start();
      fake.hold = true;
      const inFlight = dev.read(0, 512);
      await tick();
      const reset = new Promise<ResetEvent>((resolve) => dev.once('reset', resolve));
      fake.needsReset();
      await rejects(inFlight, 'ERR_RESET');
      const event = await reset;
      assert.match(event.reason.message, /NEEDS_RESET/);
      assert.equal(event.failed, 1);
      fake.hold = false;
      await dev.read(0, 512);
    });
  });

  describe('misbehaving callers', () => {
    it('fails only the request whose buffer was detached while it waited, without crashing', async () => {
      const { fake, dev } = start({}, { queueSize: 4 });
      fake.hold = true;
      const first = dev.write(0, Buffer.alloc(512, 1));
      const data = new Uint8Array(512).fill(2);
      const victim = dev.write(512, data);
      const after = dev.write(1024, Buffer.alloc(512, 3));
      structuredClone(data.buffer, { transfer: [data.buffer] }); // detaches `data`
      await tick();
      fake.release();
      await first;
      fake.release();
      await rejects(victim, 'ERR_INVALID_ARG', /transferred or detached/);
      fake.release();
      await after;
      assert.equal(fake.disk[1024], 3);
    });
  });
});
