/**
 * BlockDevice on the lab devices with what the general-purpose ones lack: vduse-mq (qemu-storage-daemon,
 * num-queues=2) and vduse-ro (writable=off, so the device offers VIRTIO_BLK_F_RO). Until these existed, multiqueue
 * and read-only were tested only against host fakes.
 *
 * Which queue carried a request is read from the device itself: GET_VRING_BASE on a VDUSE device asks the daemon
 * for the queue's last_avail_idx (VDUSE_GET_VQ_STATE), i.e. how many requests it took from that queue.
 */
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { bit, BlockDevice, VhostVdpaDevice, VirtioBlkF } from '../../lib';
import { rejects } from '../assertions';
import { labVariant } from './helpers';

/** The queue whose avail index the device advanced by one while `io` ran (fails if not exactly one). */
async function queueOf(
  transport: VhostVdpaDevice,
  queues: number,
  io: () => Promise<unknown>,
): Promise<number> {
  const before = Array.from({ length: queues }, (_, q) => transport.getVringBase(q));
  await io();
  const moved = before.flatMap((base, q) => (((transport.getVringBase(q) - base) & 0xffff) === 1 ? [q] : []));
  assert.equal(
    moved.length,
    1,
    `exactly one queue took the request (avail indexes ${JSON.stringify(before)})`,
  );
  return moved[0];
}

describe('BlockDevice on vduse-mq (qemu-storage-daemon, 2 queues)', () => {
  let transport: VhostVdpaDevice | undefined;
  let disk: BlockDevice | undefined;
  afterEach(async () => {
    await disk?.close({ drain: false });
    disk = undefined;
    if (transport?.closed === false) transport.close(); // BlockDevice closes only a transport it opened
    transport = undefined;
  });

  it('uses both queues and every block read back over either queue is the one written over either', async () => {
    transport = VhostVdpaDevice.open(labVariant('mq').chardev);
    disk = BlockDevice.open(transport, { queues: 2 });
    assert.ok((disk.features & bit(VirtioBlkF.MQ)) !== 0n, 'the device offers VIRTIO_BLK_F_MQ');
    assert.equal(disk.deviceQueues, 2);
    assert.equal(disk.queueCount, 2);
    const open = disk;
    const t = transport;
    // One request at a time, so the device's avail indexes tell which queue carried each.
    const blocks = 16;
    const data = Array.from({ length: blocks }, () => randomBytes(4096));
    const writtenOn: number[] = [];
    for (let i = 0; i < blocks; i++)
      writtenOn.push(await queueOf(t, 2, () => open.write(i * 65536, data[i])));
    const readOn = [0, 0];
    for (let i = blocks - 1; i >= 0; i--) {
      let got: Buffer = Buffer.alloc(0);
      readOn[await queueOf(t, 2, async () => (got = await open.read(i * 65536, 4096)))]++;
      assert.ok(got.equals(data[i]), `block ${i} (written over queue ${writtenOn[i]}) reads back the same`);
    }
    const wroteOn = [writtenOn.filter((q) => q === 0).length, writtenOn.filter((q) => q === 1).length];
    console.log(`      writes per queue ${wroteOn.join('/')}, reads per queue ${readOn.join('/')}`);
    assert.ok(wroteOn[0] > 0 && wroteOn[1] > 0, `writes went over both queues: ${wroteOn.join('/')}`);
    assert.ok(readOn[0] > 0 && readOn[1] > 0, `reads went over both queues: ${readOn.join('/')}`);
  });

  it('keeps data apart under a burst spread over both queues (queue depth 64)', async () => {
    transport = VhostVdpaDevice.open(labVariant('mq').chardev);
    disk = BlockDevice.open(transport, { queues: 2 });
    const open = disk;
    const base = [transport.getVringBase(0), transport.getVringBase(1)];
    const data = Array.from({ length: 64 }, () => randomBytes(8192));
    await Promise.all(data.map((d, i) => open.write((1 << 20) + i * 8192, d)));
    const reads = await Promise.all(data.map((_, i) => open.read((1 << 20) + i * 8192, 8192)));
    reads.forEach((got, i) => assert.ok(got.equals(data[i]), `block ${i}`));
    const perQueue = base.map((b, q) => ((transport as VhostVdpaDevice).getVringBase(q) - b) & 0xffff);
    console.log(`      device requests per queue ${perQueue.join('/')} of ${disk.stats.deviceRequests}`);
    assert.equal(
      perQueue[0] + perQueue[1],
      128,
      'the device took every request, from one queue or the other',
    );
    assert.ok(perQueue[0] > 0 && perQueue[1] > 0, 'both queues carried requests');
    assert.equal(disk.stats.completions, disk.stats.deviceRequests);
  });
});

describe('BlockDevice on vduse-ro (qemu-storage-daemon, writable=off)', () => {
  let transport: VhostVdpaDevice | undefined;
  let disk: BlockDevice | undefined;
  afterEach(async () => {
    await disk?.close({ drain: false });
    disk = undefined;
    if (transport?.closed === false) transport.close(); // BlockDevice closes only a transport it opened
    transport = undefined;
  });

  it('sees VIRTIO_BLK_F_RO, reads the image, and refuses writes before the device sees them', async () => {
    transport = VhostVdpaDevice.open(labVariant('ro').chardev);
    disk = BlockDevice.open(transport);
    assert.ok(
      (disk.features & bit(VirtioBlkF.RO)) !== 0n,
      `VIRTIO_BLK_F_RO offered: ${disk.featureNames.join(',')}`,
    );
    assert.equal(disk.readOnly, true);
    // scripts/lab/guest-devices.sh wrote this at offset 0 of the image.
    assert.equal((await disk.read(0, 512)).subarray(0, 29).toString(), 'vduse-ro: read-only lab image');
    const requests = disk.stats.deviceRequests;
    const avail = transport.getVringBase(0);
    await rejects(disk.write(0, Buffer.alloc(512)), 'ERR_READ_ONLY');
    if ((disk.features & bit(VirtioBlkF.WRITE_ZEROES)) !== 0n)
      await rejects(disk.writeZeroes(0, 4096), 'ERR_READ_ONLY');
    if ((disk.features & bit(VirtioBlkF.DISCARD)) !== 0n)
      await rejects(disk.discard(0, 4096), 'ERR_READ_ONLY');
    assert.equal(disk.stats.deviceRequests, requests, 'no request reached the ring');
    assert.equal(transport.getVringBase(0), avail, 'the device took nothing from its queue');
    assert.equal((await disk.read(0, 512)).subarray(0, 29).toString(), 'vduse-ro: read-only lab image');
    await disk.flush(); // allowed on a read-only disk
  });
});
