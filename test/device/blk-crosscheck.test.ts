/**
 * An independent check of the data path: what BlockDevice writes is read back
 * by the kernel's own virtio-blk driver (the same vdpa device rebound to
 * virtio_vdpa, read through /dev/vdX) and, for VDUSE, from the backing file;
 * and what the kernel (or the file) writes is read back by BlockDevice.
 */
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { BlockDevice } from '../../lib';
import { bindDriver, describeBinding } from '../../lib/mgmt';
import { forEachDevice } from './helpers';

const sha = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

function readRange(file: string, offset: number, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) done += fs.readSync(fd, out, done, length - done, offset + done);
    return out;
  } finally {
    fs.closeSync(fd);
  }
}

function writeRange(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  try {
    let done = 0;
    while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

async function waitForDisk(name: string): Promise<string> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const disk = describeBinding(name).kernelDevices?.[0];
    if (disk !== undefined && fs.existsSync(`/dev/${disk}`)) return `/dev/${disk}`;
    if (Date.now() > deadline) throw new Error(`virtio_vdpa bound ${name} but no /dev/vdX appeared in 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

forEachDevice('block', 'BlockDevice cross-checked with the kernel virtio-blk driver', (device) => {
  it('agrees with /dev/vdX (and the VDUSE backing file) in both directions', async function () {
    this.timeout(240_000);
    const ours = { offset: 3 << 20, data: randomBytes(4 << 20) };
    const kernels = { offset: 9 << 20, data: randomBytes(2 << 20) };
    const files = { offset: 13 << 20, data: randomBytes(1 << 20) };

    // 1. Our driver writes, in requests of mixed sizes, half zero-copy, then flushes.
    let dev = BlockDevice.open(device.chardev);
    const zc = dev.allocBuffer(1 << 20);
    const writes: Promise<void>[] = [];
    for (let at = 0; at < ours.data.length; ) {
      const n = Math.min([4096, 65536, 1 << 20, 512 * 7][writes.length % 4], ours.data.length - at);
      const piece = ours.data.subarray(at, at + n);
      if (writes.length % 4 === 2) {
        piece.copy(zc);
        writes.push(dev.write(ours.offset + at, zc.subarray(0, n)));
        await writes[writes.length - 1];
      } else {
        writes.push(dev.write(ours.offset + at, piece));
      }
      at += n;
    }
    await Promise.all(writes);
    await dev.flush();
    await dev.close();

    let rebound = false;
    try {
      // 2. The kernel's virtio-blk reads it back and writes its own data.
      await bindDriver(device.name, 'virtio_vdpa', { timeoutMs: 30_000 });
      rebound = true;
      const disk = await waitForDisk(device.name);
      assert.equal(
        sha(readRange(disk, ours.offset, ours.data.length)),
        sha(ours.data),
        `${disk} reads our data`,
      );
      writeRange(disk, kernels.offset, kernels.data);
      if (device.backingFile !== undefined) {
        assert.equal(
          sha(readRange(device.backingFile, ours.offset, ours.data.length)),
          sha(ours.data),
          'the backing file holds our data',
        );
        assert.equal(
          sha(readRange(device.backingFile, kernels.offset, kernels.data.length)),
          sha(kernels.data),
          'the backing file holds the kernel’s data',
        );
      }
    } finally {
      if (rebound || describeBinding(device.name).driver !== 'vhost_vdpa') {
        await bindDriver(device.name, 'vhost_vdpa', { timeoutMs: 30_000 });
      }
    }
    assert.equal(describeBinding(device.name).charDev, device.chardev, 'same char device again');

    // 3. The backing file is written behind the device's back (VDUSE only).
    if (device.backingFile !== undefined) writeRange(device.backingFile, files.offset, files.data);

    // 4. Our driver reads what the kernel (and the file) wrote.
    dev = BlockDevice.open(device.chardev);
    try {
      assert.equal(
        sha(await dev.read(kernels.offset, kernels.data.length)),
        sha(kernels.data),
        'we read the kernel’s data',
      );
      assert.equal(
        sha(await dev.read(ours.offset, ours.data.length)),
        sha(ours.data),
        'our data survived rebinding',
      );
      if (device.backingFile !== undefined) {
        assert.equal(
          sha(await dev.read(files.offset, files.data.length)),
          sha(files.data),
          'we read the file’s data',
        );
      }
    } finally {
      await dev.close();
    }
  });
});
