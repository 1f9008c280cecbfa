/**
 * The kernel-driver validation harness (vduse-kernel.ts) on the lab's
 * qemu-storage-daemon VDUSE exports — a known-good device — so that the
 * harness itself is proven before it judges ours: vduse0 (one queue), vduse-mq
 * (two queues) and vduse-ro (read-only).
 */
import { strict as assert } from 'node:assert';
import { describeBinding } from '../../lib/mgmt';
import { labDevice, labVariant, TestDevice } from './helpers';
import { validateWithKernelDriver } from './vduse-kernel';

const log = (line: string): void => {
  if (process.env.VDUSE_KERNEL_VERBOSE !== undefined) console.log(`      ${line}`);
};

function backOnVhostVdpa(device: TestDevice): void {
  const binding = describeBinding(device.name);
  assert.equal(binding.driver, 'vhost_vdpa', `${device.name} is bound back to vhost_vdpa`);
  assert.equal(binding.charDev, device.chardev, 'with the same char device');
}

describe('kernel virtio-blk on the lab VDUSE devices (validation harness)', function () {
  this.timeout(300_000);

  it('vduse0: mkfs.ext4 + fsck, 8 MiB write/read-back and fio crc32c verify at iodepth 16 pass; back on vhost_vdpa', async () => {
    const device = labDevice('vduse0');
    const result = await validateWithKernelDriver(device.name, { log });
    console.log(`      ${device.name}: ${JSON.stringify(result)}`);
    assert.equal(result.kernelReadOnly, false);
    assert.equal(result.queues, 1);
    assert.equal(result.capacityBytes, 64 << 20);
    assert.ok(result.fio !== undefined && result.fio.writeIops > 0 && result.fio.verifyErrors === 0);
    backOnVhostVdpa(device);
  });

  it('vduse-mq: the kernel sets up 2 queues and the same checks pass', async () => {
    const device = labVariant('mq');
    const result = await validateWithKernelDriver(device.name, { log });
    console.log(`      ${device.name}: ${JSON.stringify(result)}`);
    assert.equal(result.queues, 2);
    assert.ok(result.fio !== undefined && result.fio.writeIops > 0);
    backOnVhostVdpa(device);
  });

  it('vduse-ro: the kernel marks the disk read-only, fails writes with EPERM, and reads the image', async () => {
    const device = labVariant('ro');
    const result = await validateWithKernelDriver(device.name, {
      readOnly: true,
      backingFile: device.backingFile,
      log,
    });
    console.log(`      ${device.name}: ${JSON.stringify(result)}`);
    assert.equal(result.kernelReadOnly, true, '/sys/block/vdX/ro');
    assert.ok(result.writeRefusal !== undefined);
    // Linux 6.12 opens a read-only disk for writing and fails the write itself (blkdev_write_iter).
    assert.equal(result.writeRefusal.openError, 'none');
    assert.equal(result.writeRefusal.writeError, 'EPERM', 'a write to /dev/vdX fails with EPERM');
    assert.notEqual(result.writeRefusal.mkfsStatus, 0, 'mkfs.ext4 fails');
    assert.ok(device.backingFile !== undefined, 'the lab names the backing file, so reads were compared');
    backOnVhostVdpa(device);
  });
});
