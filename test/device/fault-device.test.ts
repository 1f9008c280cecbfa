/**
 * The fault device without faults is a correct virtio-blk device: our BlockDevice and the kernel's virtio-blk
 * driver both get their data back from it. The hostile-device suite (blk-hostile.test.ts) relies on this.
 */
import { strict as assert } from 'node:assert';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { BlockDevice } from '../../lib';
import { startFaultyBlk, type FaultyBlk } from './fault-device';
import { sh, waitFor } from './helpers';

describe('faulty-blk without faults (a correct device)', () => {
  let fault: FaultyBlk | undefined;
  let disk: BlockDevice | undefined;
  afterEach(async () => {
    await disk?.close({ drain: false });
    disk = undefined;
    await fault?.stop();
    fault = undefined;
  });

  it('gets every block back that BlockDevice wrote, over 3000 random reads and writes at queue depth 16', async () => {
    const size = 8 << 20;
    fault = await startFaultyBlk({ sizeBytes: size });
    disk = BlockDevice.open(fault.chardev);
    assert.equal(disk.capacity, size);
    assert.equal(disk.logicalBlockSize, 512);
    assert.equal(disk.limits.segMax, 254, 'seg_max = queue size - 2');
    assert.match(await disk.getId(), /^faulty-blk:fblk-/);
    const shadow = Buffer.alloc(size); // the disk starts zeroed
    const open = disk;
    const workers = 16;
    const region = size / workers; // each worker owns one region, so no two requests in flight overlap
    let ops = 0;
    let reads = 0;
    const worker = async (w: number): Promise<void> => {
      while (ops < 3000) {
        ops++;
        const sectors = randomInt(1, 257); // up to 128 KiB
        const offset = w * region + randomInt(0, region / 512 - sectors + 1) * 512;
        const length = sectors * 512;
        if (randomInt(2) === 0) {
          const data = randomBytes(length);
          await open.write(offset, data);
          data.copy(shadow, offset);
        } else {
          reads++;
          assert.ok(
            (await open.read(offset, length)).equals(shadow.subarray(offset, offset + length)),
            `read at ${offset}`,
          );
        }
      }
    };
    await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
    await disk.flush();
    // Finally every byte, read back in 1 MiB pieces, is what was written last.
    for (let offset = 0; offset < size; offset += 1 << 20)
      assert.ok(
        (await disk.read(offset, 1 << 20)).equals(shadow.subarray(offset, offset + (1 << 20))),
        `final ${offset}`,
      );
    assert.ok(reads > 1000);
    assert.equal(disk.stats.completions, disk.stats.deviceRequests);
    await disk.close();
    disk = undefined;
    await fault.stop();
    assert.match(fault.log(), /SIGTERM: \d+ requests .* 0 faults applied, 0 bad chains/);
    assert.match(fault.log(), /VDUSE device destroyed/);
    assert.equal(existsSync(`/dev/vduse/${fault.name}`), false);
  });

  it('serves two queues (--queues 2 offers VIRTIO_BLK_F_MQ): both carry requests, data reads back', async () => {
    fault = await startFaultyBlk({ sizeBytes: 4 << 20, queues: 2 });
    disk = BlockDevice.open(fault.chardev, { queues: 2 });
    assert.equal(disk.deviceQueues, 2);
    const open = disk;
    const data = Array.from({ length: 32 }, () => randomBytes(8192));
    await Promise.all(data.map((d, i) => open.write(i * 65536, d)));
    const back = await Promise.all(data.map((_, i) => open.read(i * 65536, 8192)));
    back.forEach((got, i) => assert.ok(got.equals(data[i]), `block ${i}`));
    await disk.close();
    disk = undefined;
    await fault.stop();
    const perQueue = /per queue (\d+)\/(\d+)/.exec(fault.log());
    assert.ok(perQueue, fault.log());
    console.log(`      requests per queue ${perQueue[1]}/${perQueue[2]}`);
    assert.equal(Number(perQueue[1]) + Number(perQueue[2]), 64);
    assert.ok(Number(perQueue[1]) > 0 && Number(perQueue[2]) > 0, 'both queues carried requests');
  });

  it('serves the kernel virtio-blk driver (virtio_vdpa): dd in, dd out, same bytes', async () => {
    fault = await startFaultyBlk({ sizeBytes: 4 << 20 });
    const name = fault.name;
    const sys = `/sys/bus/vdpa/devices/${name}`;
    writeFileSync('/sys/bus/vdpa/drivers/vhost_vdpa/unbind', name);
    writeFileSync(`${sys}/driver_override`, 'virtio_vdpa');
    writeFileSync('/sys/bus/vdpa/drivers/virtio_vdpa/bind', name);
    try {
      const disk = await waitFor('the virtio-blk disk', () => {
        const virtio = readdirSync(sys).find((e) => /^virtio\d+$/.test(e));
        if (virtio === undefined || !existsSync(`${sys}/${virtio}/block`)) return undefined;
        const [block] = readdirSync(`${sys}/${virtio}/block`);
        return block !== undefined && existsSync(`/dev/${block}`) ? block : undefined;
      });
      assert.equal(readFileSync(`/sys/block/${disk}/size`, 'utf8').trim(), String((4 << 20) / 512));
      const input = `/tmp/${name}.in`;
      writeFileSync(input, randomBytes(4 << 20));
      sh('dd', [`if=${input}`, `of=/dev/${disk}`, 'bs=64k', 'oflag=direct', 'status=none']);
      sh('dd', [`if=/dev/${disk}`, `of=/tmp/${name}.out`, 'bs=64k', 'iflag=direct', 'status=none']);
      sh('cmp', [input, `/tmp/${name}.out`]);
    } finally {
      writeFileSync('/sys/bus/vdpa/drivers/virtio_vdpa/unbind', name);
      writeFileSync(`${sys}/driver_override`, '\n');
    }
    // stop() deletes the vdpa device, unbound now; the daemon must have served every request.
    await fault.stop();
    assert.match(fault.log(), /0 bad chains/);
  });
});
