/**
 * BlockDevice against real vhost-vdpa block devices (vdpa_sim_blk and VDUSE in
 * the lab): bring-up, data paths, every validation path and the device-status
 * error paths, close semantics.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import {
  bit,
  BlockDevice,
  VdpaError,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_GET_LIFETIME,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VirtioBlkF,
} from '../../lib';
import { forEachDevice } from './helpers';
import { rejects } from '../assertions';

forEachDevice('block', 'BlockDevice I/O', (device) => {
  const isVduse = device.mgmtdev === 'vduse';
  let dev: BlockDevice | undefined;
  afterEach(async () => {
    await dev?.close({ drain: false });
    dev = undefined;
  });

  it('starts the device with the features and limits it offers', () => {
    dev = BlockDevice.open(device.chardev);
    assert.ok(dev.capacity > 0 && dev.capacity % 512 === 0);
    assert.equal(dev.logicalBlockSize, 512);
    assert.ok(dev.limits.maxTransferBytes >= 4096);
    assert.equal(dev.notification, 'eventfd', 'neither lab parent has a doorbell page');
    if (isVduse) {
      assert.equal(dev.eventIdx, true, 'VDUSE offers EVENT_IDX');
      assert.equal(dev.indirect, true, 'VDUSE offers INDIRECT_DESC');
      assert.equal(dev.limits.segMax, 254);
    } else if (device.mgmtdev === 'vdpasim_blk') {
      assert.equal(dev.capacity, 128 << 20);
      assert.equal(dev.eventIdx, false);
      assert.equal(dev.indirect, false);
      assert.equal(dev.limits.segMax, 32);
      assert.equal(dev.limits.sizeMax, 4096);
      assert.equal(dev.limits.maxTransferBytes, 32 * 4096);
    }
    console.log(
      `      ${device.name}: ${dev.capacity} bytes, features ${dev.featureNames.join(',')}, ` +
        `limits ${JSON.stringify(dev.limits)}`,
    );
  });

  it('round-trips data through the bounce pool and zero-copy buffers, at every size up to beyond the maximum', async () => {
    dev = BlockDevice.open(device.chardev);
    const max = dev.limits.maxTransferBytes;
    const sizes = [512, 4096, 65536, max, max + 512, 3 * max];
    let offset = 1 << 20;
    for (const size of sizes) {
      const data = randomBytes(size);
      await dev.write(offset, data);
      assert.deepEqual(await dev.read(offset, size), data, `bounce read of ${size}`);
      const zc = dev.allocBuffer(size);
      await dev.readInto(offset, zc);
      assert.ok(zc.equals(data), `zero-copy read of ${size}`);
      randomBytes(size).copy(zc);
      await dev.write(offset, zc);
      assert.deepEqual(await dev.read(offset, size), Buffer.from(zc), `zero-copy write of ${size}`);
      dev.freeBuffer(zc);
      offset += 4 * max;
    }
    if (isVduse) assert.ok(dev.stats.indirect > 0, 'requests went out as indirect descriptors');
  });

  it('reads and writes the last block of the device', async () => {
    dev = BlockDevice.open(device.chardev);
    const data = randomBytes(512);
    await dev.write(dev.capacity - 512, data);
    assert.deepEqual(await dev.read(dev.capacity - 512, 512), data);
  });

  it('flushes, writes zeroes (with and without unmap), discards and reads the id', async () => {
    dev = BlockDevice.open(device.chardev);
    const at = 2 << 20;
    await dev.write(at, randomBytes(64 * 1024));
    await dev.flush();
    await dev.writeZeroes(at, 16 * 1024);
    await dev.writeZeroes(at + 16 * 1024, 16 * 1024, { unmap: true });
    const back = await dev.read(at, 64 * 1024);
    assert.ok(back.subarray(0, 32 * 1024).every((b) => b === 0));
    assert.ok(!back.subarray(32 * 1024).every((b) => b === 0));
    await dev.discard(at, 64 * 1024);
    const id = await dev.getId();
    if (device.mgmtdev === 'vdpasim_blk') assert.equal(id, 'vdpa_blk_sim');
    if (isVduse) assert.equal(typeof id, 'string');
  });

  it('works in poll mode', async () => {
    dev = BlockDevice.open(device.chardev, { completion: 'poll' });
    const data = randomBytes(8192);
    await Promise.all([dev.write(0, data), dev.write(65536, data)]);
    assert.deepEqual(await dev.read(65536, 8192), data);
    assert.ok(dev.stats.polls > 0);
  });

  for (const completion of ['interrupt', 'poll'] as const) {
    it(`keeps 16 requests in flight through the callback API, each block read back as written (${completion})`, async () => {
      const disk = BlockDevice.open(device.chardev, { completion });
      dev = disk;
      const blocks = 256;
      const slots = 16;
      const perSlot = 64;
      const written = new Map<number, number>();
      let callbacks = 0;
      await Promise.all(
        Array.from(
          { length: slots },
          (_, slot) =>
            new Promise<void>((resolve, reject) => {
              const buf = disk.allocBuffer(4096);
              let n = 0;
              let block = 0;
              // Even steps write the block (stamped with slot and step), odd ones read it back.
              const step = (): void => {
                if (n === perSlot) return resolve();
                if (n % 2 === 0) {
                  block = slot * (blocks / slots) + ((n / 2) % (blocks / slots));
                  buf.fill((slot * 7 + n) & 0xff);
                  disk.writeCallback(block * 4096, buf, (error) => {
                    callbacks++;
                    if (error !== null) return reject(error);
                    written.set(block, (slot * 7 + n) & 0xff);
                    n++;
                    step();
                  });
                } else {
                  disk.readIntoCallback(block * 4096, buf, (error, target) => {
                    callbacks++;
                    if (error !== null) return reject(error);
                    const want = written.get(block);
                    if (target[0] !== want || target[4095] !== want)
                      return reject(new Error(`block ${block}: read ${target[0]}, wrote ${String(want)}`));
                    n++;
                    step();
                  });
                }
              };
              step();
            }),
        ),
      );
      assert.equal(callbacks, slots * perSlot, 'each callback ran exactly once');
      assert.equal(disk.pending, 0);
    });
  }

  it('keeps a full queue and more in flight, batched into few kicks', async () => {
    dev = BlockDevice.open(device.chardev);
    const n = dev.queueSize * 2;
    const buffers = Array.from({ length: n }, (_, i) => Buffer.alloc(4096, i & 0xff));
    await Promise.all(
      dev.submit(buffers.map((data, i) => ({ op: 'write' as const, offset: i * 4096, data }))),
    );
    const reads = await Promise.all(Array.from({ length: n }, (_, i) => dev!.read(i * 4096, 4096)));
    reads.forEach((r, i) => assert.ok(r.equals(buffers[i]), `block ${i}`));
    const s = dev.stats;
    assert.ok(s.kicks < n, `${s.kicks} kicks for ${2 * n} requests`);
    console.log(`      ${device.name}: ${JSON.stringify(s)}`);
  });

  describe('validation (the device sees nothing)', () => {
    it('refuses misaligned, out-of-range and empty requests', async () => {
      dev = BlockDevice.open(device.chardev);
      const before = dev.stats.deviceRequests;
      await rejects(dev.read(511, 512), 'ERR_MISALIGNED', /aligned to the 512-byte logical block size/);
      await rejects(dev.write(0, Buffer.alloc(700)), 'ERR_MISALIGNED');
      await rejects(dev.discard(512, 100), 'ERR_MISALIGNED');
      await rejects(dev.read(dev.capacity, 512), 'ERR_OUT_OF_RANGE', /beyond the device capacity/);
      await rejects(dev.writeZeroes(dev.capacity - 512, 1024), 'ERR_OUT_OF_RANGE');
      await rejects(dev.read(0, 0), 'ERR_INVALID_ARG');
      assert.equal(dev.stats.deviceRequests, before);
    });

    it('refuses writes, discards and write-zeroes when opened read-only', async () => {
      dev = BlockDevice.open(device.chardev, { readOnly: true });
      await rejects(dev.write(0, Buffer.alloc(512)), 'ERR_READ_ONLY');
      await rejects(dev.discard(0, 512), 'ERR_READ_ONLY');
      await rejects(dev.writeZeroes(0, 512), 'ERR_READ_ONLY');
      await dev.read(0, 512);
      assert.equal(dev.stats.deviceRequests, 1);
    });

    it('refuses discard and write-zeroes when they are not negotiated', async () => {
      dev = BlockDevice.open(device.chardev, {
        excludeFeatures: bit(VirtioBlkF.DISCARD) | bit(VirtioBlkF.WRITE_ZEROES),
      });
      await rejects(dev.discard(0, 512), 'ERR_UNSUPPORTED', /VIRTIO_BLK_F_DISCARD/);
      await rejects(dev.writeZeroes(0, 512), 'ERR_UNSUPPORTED', /VIRTIO_BLK_F_WRITE_ZEROES/);
      assert.equal(dev.stats.deviceRequests, 0);
    });
  });

  describe('device status errors', () => {
    it('turns the device’s VIRTIO_BLK_S_IOERR (write-zeroes past the end, sent raw) into EIO naming the request', async () => {
      dev = BlockDevice.open(device.chardev);
      // Both devices range-check WRITE_ZEROES before touching data (vdpasim_blk_check_range,
      // QEMU's virtio_blk_sect_range_ok), so this is a safe way to make them answer IOERR.
      const payload = Buffer.alloc(16);
      payload.writeBigUInt64LE(BigInt(dev.capacity / 512), 0);
      payload.writeUInt32LE(8, 8);
      await rejects(
        dev.rawRequest({ type: VIRTIO_BLK_T_WRITE_ZEROES, payload }),
        'EIO',
        /request VIRTIO_BLK_T_WRITE_ZEROES at offset 0 on .*VIRTIO_BLK_S_IOERR/,
      );
      await dev.read(0, 512); // the queue is still healthy
    });

    it('turns VIRTIO_BLK_S_UNSUPP (a discard with the unmap flag, sent raw) into ERR_DEVICE_UNSUPP', async () => {
      dev = BlockDevice.open(device.chardev);
      const payload = Buffer.alloc(16);
      payload.writeBigUInt64LE(0n, 0);
      payload.writeUInt32LE(8, 8);
      payload.writeUInt32LE(1, 12); // VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: invalid for DISCARD
      await rejects(
        dev.rawRequest({ type: VIRTIO_BLK_T_DISCARD, payload }),
        'ERR_DEVICE_UNSUPP',
        /VIRTIO_BLK_T_DISCARD/,
      );
    });

    it('reports an unknown request type as the device answers it', async () => {
      dev = BlockDevice.open(device.chardev);
      // vdpa_sim_blk answers unknown types with IOERR, QEMU's handler with UNSUPP.
      await rejects(
        dev.rawRequest({ type: VIRTIO_BLK_T_GET_LIFETIME, responseLength: 8 }),
        isVduse ? 'ERR_DEVICE_UNSUPP' : 'EIO',
        /VIRTIO_BLK_T_GET_LIFETIME/,
      );
    });
  });

  describe('close', () => {
    it('drains every request in flight', async () => {
      dev = BlockDevice.open(device.chardev);
      const pending = Array.from({ length: 300 }, (_, i) => dev!.read((i % 64) * 4096, 4096));
      const settling = Promise.allSettled(pending);
      await dev.close();
      const settled = await settling;
      assert.deepEqual(
        settled.filter((s) => s.status === 'rejected'),
        [],
      );
      dev = undefined;
    });

    it('with drain: false settles every request: completed, or rejected with ERR_CLOSED naming it', async () => {
      dev = BlockDevice.open(device.chardev);
      const pending = Array.from({ length: 300 }, (_, i) =>
        dev!.write((i % 64) * 4096, Buffer.alloc(4096, i)),
      );
      const settling = Promise.allSettled(pending);
      await new Promise((resolve) => setImmediate(resolve));
      await dev.close({ drain: false });
      const settled = await settling;
      const rejected = settled.filter((s): s is PromiseRejectedResult => s.status === 'rejected');
      assert.ok(rejected.length > 0, 'some requests were still pending');
      for (const r of rejected) {
        assert.equal((r.reason as VdpaError).code, 'ERR_CLOSED');
        assert.match((r.reason as VdpaError).message, /write of 4096 bytes at offset \d+ on .* was aborted/);
      }
      await rejects(dev.read(0, 512), 'ERR_CLOSED');
      dev = undefined;
      // The device is usable again by a new owner.
      dev = BlockDevice.open(device.chardev);
      await dev.read(0, 4096);
    });
  });
});
