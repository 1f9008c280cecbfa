import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { BlockDevice, VdpaError } from '../../lib';
import { fakeBlockDevices } from './blk-fake-device';

type Outcome<T> = { error: Error | null; result: T; sync: boolean };

/** Runs a callback-form call; resolves with what the callback got and whether it ran before the call returned. */
function viaCallback<T>(
  call: (callback: (error: Error | null, result: T) => void) => void,
): Promise<Outcome<T>> {
  return new Promise((resolve) => {
    let returned = false;
    call((error, result) => resolve({ error, result, sync: !returned }));
    returned = true;
  });
}

function assertCode(error: Error | null, code: string): VdpaError {
  assert.ok(error instanceof VdpaError, `expected a VdpaError ${code}, got ${String(error)}`);
  assert.equal(error.code, code, error.message);
  return error;
}

describe('BlockDevice callback API: readIntoCallback / writeCallback (host, fake device)', () => {
  const start = fakeBlockDevices();

  for (const completion of ['interrupt', 'poll'] as const) {
    it(`writes and reads back, zero-copy and through the bounce pool, never calling back synchronously (${completion})`, async () => {
      const { dev } = start({ synchronous: true }, { completion });
      const zeroCopy = dev.allocBuffer(8192).fill(0x3c);
      const w1 = await viaCallback<undefined>((cb) => dev.writeCallback(0, zeroCopy, cb));
      assert.deepEqual(w1, { error: null, result: undefined, sync: false });
      const plain = Buffer.alloc(4096, 0x7e);
      const w2 = await viaCallback<undefined>((cb) => dev.writeCallback(8192, plain, cb));
      assert.equal(w2.error, null);
      const target = dev.allocBuffer(12288);
      const r1 = await viaCallback<Buffer>((cb) => dev.readIntoCallback(0, target, cb));
      assert.equal(r1.error, null);
      assert.equal(r1.sync, false);
      assert.equal(r1.result, target, 'the callback gets the target buffer');
      assert.ok(target.subarray(0, 8192).equals(Buffer.alloc(8192, 0x3c)));
      assert.ok(target.subarray(8192).equals(plain));
      const bounceTarget = Buffer.alloc(4096);
      const r2 = await viaCallback<Buffer>((cb) => dev.readIntoCallback(8192, bounceTarget, cb));
      assert.equal(r2.error, null);
      assert.ok(bounceTarget.equals(plain));
    });

    it(`keeps 16 requests in flight from callbacks that resubmit, each completing once with its own data (${completion})`, async () => {
      const { dev } = start({}, { completion });
      const blocks = 64;
      const seed = dev.allocBuffer(blocks * 4096);
      for (let b = 0; b < blocks; b++) seed.fill(b, b * 4096, (b + 1) * 4096);
      await dev.write(0, seed);
      const perSlot = 50;
      const calls = new Array<number>(16).fill(0);
      await Promise.all(
        calls.map(
          (_, slot) =>
            new Promise<void>((resolve, reject) => {
              const buf = dev.allocBuffer(4096);
              let n = 0;
              let block = 0;
              const issue = (): void => {
                block = (slot * 7 + n * 13) % blocks;
                dev.readIntoCallback(block * 4096, buf, done);
              };
              const done = (error: Error | null, result: Buffer): void => {
                calls[slot]++;
                if (error !== null) return reject(error);
                if (result !== buf || buf[0] !== block || buf[4095] !== block)
                  return reject(new Error(`slot ${slot}: block ${block} came back as ${buf[0]}`));
                if (++n === perSlot) return resolve();
                issue();
              };
              issue();
            }),
        ),
      );
      assert.deepEqual(calls, new Array<number>(16).fill(perSlot), 'every callback ran exactly once');
      assert.equal(dev.pending, 0);
    });
  }

  it('reports invalid requests through the callback on a later tick, and a non-function callback at once', async () => {
    const { dev } = start({ capacity: 1 << 20 });
    const buf = dev.allocBuffer(4096);
    const outside = await viaCallback<Buffer>((cb) => dev.readIntoCallback(1 << 20, buf, cb));
    assert.equal(outside.sync, false);
    assertCode(outside.error, 'ERR_OUT_OF_RANGE');
    assert.equal(outside.result, buf);
    const misaligned = await viaCallback<undefined>((cb) => dev.writeCallback(100, buf, cb));
    assertCode(misaligned.error, 'ERR_MISALIGNED');
    const notBuffer = await viaCallback<undefined>((cb) =>
      dev.writeCallback(0, 'text' as unknown as Uint8Array, cb),
    );
    assertCode(notBuffer.error, 'ERR_INVALID_ARG');
    for (const bad of [undefined, null, 42, {}]) {
      assert.throws(
        () => dev.readIntoCallback(0, buf, bad as unknown as () => void),
        (error: unknown) => error instanceof VdpaError && error.code === 'ERR_INVALID_ARG',
      );
    }
    assert.equal(dev.pending, 0, 'nothing was submitted');
    await dev.close();
    const closed = await viaCallback<Buffer>((cb) => dev.readIntoCallback(0, buf, cb));
    assertCode(closed.error, 'ERR_CLOSED');
  });

  for (const completion of ['interrupt', 'poll'] as const) {
    it(`calls back once with ETIMEDOUT when the device holds a request, and once only when it completes after the reset (${completion})`, async () => {
      const { fake, dev } = start({}, { requestTimeoutMs: 200, completion });
      fake.hold = true;
      const buf = dev.allocBuffer(4096);
      let calls = 0;
      const first = await new Promise<Error | null>((resolve) =>
        dev.readIntoCallback(0, buf, (error) => {
          calls++;
          resolve(error);
        }),
      );
      assertCode(first, 'ETIMEDOUT');
      fake.hold = false;
      // The device is reset and serves again; the timed-out request never calls back a second time.
      const next = await viaCallback<Buffer>((cb) => dev.readIntoCallback(4096, buf, cb));
      assert.equal(next.error, null);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(calls, 1);
    });
  }

  it('fails callback requests still queued or in flight when the device is closed without draining', async () => {
    const { fake, dev } = start({ queueMax: 4 });
    fake.hold = true;
    const buf = dev.allocBuffer(4096);
    // A 4-entry ring holds one 3-descriptor chain; the others wait in the driver's FIFO.
    const outcomes = [0, 1, 2].map(() => viaCallback<Buffer>((cb) => dev.readIntoCallback(0, buf, cb)));
    await new Promise((resolve) => setTimeout(resolve, 20));
    await dev.close({ drain: false, timeoutMs: 100 });
    for (const outcome of await Promise.all(outcomes)) {
      assert.ok(outcome.error instanceof VdpaError, String(outcome.error));
      assert.equal(outcome.sync, false);
    }
  });

  it('rethrows an exception from a callback as an uncaught exception, and the other requests complete', () => {
    // A child process: the exception must reach 'uncaughtException', which mocha owns here.
    const source = `
      const lib = require(${JSON.stringify(path.resolve(__dirname, '../../lib'))});
      const { FakeBlkDevice } = require(${JSON.stringify(path.resolve(__dirname, 'blk-fake-device'))});
      const fake = new FakeBlkDevice({});
      const dev = lib.BlockDevice.open(fake, {});
      const buf = dev.allocBuffer(4096);
      const seen = [];
      process.on('uncaughtException', (error) => seen.push('uncaught ' + error.message));
      dev.readIntoCallback(0, buf, () => { seen.push('first'); throw new Error('boom'); });
      dev.readIntoCallback(4096, dev.allocBuffer(4096), (error) => seen.push('second ' + error));
      setTimeout(async () => {
        dev.readIntoCallback(8192, buf, async (error) => {
          seen.push('third ' + error);
          await dev.close();
          fake.close();
          console.log(JSON.stringify(seen));
        });
      }, 50);
    `;
    const result = spawnSync(process.execPath, ['-e', source], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(result.status, 0, result.stderr);
    const seen = JSON.parse(result.stdout) as string[];
    assert.deepEqual(seen.slice().sort(), ['first', 'second null', 'third null', 'uncaught boom'].sort());
    assert.ok(seen.indexOf('uncaught boom') > seen.indexOf('first'));
  });

  it('is typed: BlockCallback<T> gives the read target type to the callback', () => {
    // Compile-time check: `result` is the Buffer passed in (no cast needed).
    const check = (dev: BlockDevice, buf: Buffer): void =>
      dev.readIntoCallback(0, buf, (error, result: Buffer) => void [error, result.length]);
    assert.equal(typeof check, 'function');
  });
});
