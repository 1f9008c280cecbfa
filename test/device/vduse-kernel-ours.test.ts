/**
 * The kernel's own virtio-blk (virtio_vdpa + virtio_ring, a driver we did not write) on devices this process
 * serves with VduseBlockDevice: split and packed rings, 1 and 2 queues, read-only — each through the validation
 * harness (vduse-kernel.ts: mkfs.ext4 + fsck -fn, an 8 MiB write/read-back, fio --verify=crc32c at iodepth 16;
 * read-only: writes refused, reads compared with the backing file). And a resize@N device: the kernel logs the
 * new capacity.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { bindDriver, describeBinding } from '../../lib/mgmt';
import { VduseBlockDevice, type VduseBlockOptions } from '../../lib/vduse/blk-device';
import { validateWithKernelDriver } from './vduse-kernel';

const log = (line: string): void => {
  if (process.env.VDUSE_KERNEL_VERBOSE !== undefined) console.log(`      ${line}`);
};
let serial = 0;
const uniqueName = (): string => `tvk-${process.pid}-${++serial}`;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** /dev/vdX of vdpa device `name` once virtio_vdpa bound it. */
async function diskOf(name: string): Promise<string> {
  for (let i = 0; i < 300; i++) {
    const dir = `/sys/bus/vdpa/devices/${name}`;
    for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
      const blockDir = path.join(dir, entry, 'block');
      if (entry.startsWith('virtio') && fs.existsSync(blockDir)) {
        const [disk] = fs.readdirSync(blockDir);
        if (disk !== undefined && fs.existsSync(`/dev/${disk}`)) return `/dev/${disk}`;
      }
    }
    await sleep(100);
  }
  throw new Error(`no /dev/vdX for ${name}`);
}

describe('kernel virtio-blk (virtio_vdpa) on VDUSE devices this process serves', function () {
  this.timeout(600_000);
  const images: string[] = [];
  let device: VduseBlockDevice | undefined;
  afterEach(async () => {
    await device?.stop();
    device = undefined;
  });
  after(() => {
    for (const image of images) fs.rmSync(image, { force: true });
  });

  // /var/tmp: the overlay's tmpfs upper layer, never the 9p share; statfs says overlayfs, so the device uses the
  // thread pool. /dev/shm: a tmpfs, where the device reads and writes inline.
  const image = (bytes: number, content?: Buffer, dir = '/var/tmp'): string => {
    const file = `${dir}/${uniqueName()}.img`;
    images.push(file);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, bytes);
    if (content !== undefined) {
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, content, 0, content.length, 0);
      fs.closeSync(fd);
    }
    return file;
  };

  const variants: { label: string; options: Partial<VduseBlockOptions>; queues: number; dir?: string }[] = [
    { label: 'split rings, 1 queue', options: {}, queues: 1 },
    { label: 'split rings, 1 queue, file on tmpfs (inline I/O)', options: {}, queues: 1, dir: '/dev/shm' },
    { label: 'packed rings, 1 queue', options: { packed: true }, queues: 1 },
    { label: 'split rings, 2 queues', options: { queues: 2 }, queues: 2 },
    { label: 'packed rings, 2 queues', options: { packed: true, queues: 2 }, queues: 2 },
  ];
  for (const variant of variants) {
    it(`${variant.label}: mkfs.ext4 + fsck, 8 MiB read-back and fio crc32c verify pass`, async () => {
      device = await VduseBlockDevice.start({
        name: uniqueName(),
        file: image(64 << 20, undefined, variant.dir),
        attach: true,
        ...variant.options,
      });
      if (variant.dir === '/dev/shm') assert.match(device.store, /in memory: inline I\/O/);
      const result = await validateWithKernelDriver(device.name, { log });
      console.log(`      ${variant.label}: ${JSON.stringify(result)}`);
      assert.equal(result.capacityBytes, 64 << 20);
      assert.equal(result.queues, variant.queues);
      assert.equal(result.kernelReadOnly, false);
      assert.ok(result.fio !== undefined && result.fio.writeIops > 0 && result.fio.verifyErrors === 0);
      assert.equal(describeBinding(device.name).driver, 'vhost_vdpa', 'bound back to vhost_vdpa');
    });
  }

  it('read-only: the kernel marks the disk read-only, writes fail with EPERM, reads return the file', async () => {
    const content = randomBytes(1 << 20);
    const file = image(16 << 20, content);
    device = await VduseBlockDevice.start({ name: uniqueName(), file, readOnly: true, attach: true });
    const result = await validateWithKernelDriver(device.name, { readOnly: true, backingFile: file, log });
    console.log(`      read-only: ${JSON.stringify(result)}`);
    assert.equal(result.kernelReadOnly, true);
    assert.equal(result.writeRefusal?.writeError, 'EPERM');
    assert.notEqual(result.writeRefusal?.mkfsStatus, 0);
  });

  it('resize@N: after the Nth request the kernel logs the new capacity and /dev/vdX grows', async () => {
    device = await VduseBlockDevice.start({
      name: uniqueName(),
      ramBytes: 16 << 20,
      faults: ['resize@8:50331648'],
      attach: true,
    });
    await bindDriver(device.name, 'virtio_vdpa', { timeoutMs: 30_000 });
    try {
      const disk = await diskOf(device.name);
      const sizeFile = `/sys/block/${path.basename(disk)}/size`;
      assert.equal(Number(fs.readFileSync(sizeFile, 'utf8')), (16 << 20) / 512);
      execFileSync('dd', [`if=${disk}`, 'of=/dev/null', 'bs=4096', 'count=64', 'iflag=direct'], {
        stdio: 'ignore',
      });
      for (let i = 0; i < 100 && Number(fs.readFileSync(sizeFile, 'utf8')) !== 50331648 / 512; i++)
        await sleep(100);
      assert.equal(Number(fs.readFileSync(sizeFile, 'utf8')), 50331648 / 512, 'the block device grew');
      const dmesg = execFileSync('dmesg', { encoding: 'utf8' });
      const line = dmesg
        .split('\n')
        .find((l) => l.includes(path.basename(disk)) && /new size: 98304 512-byte/.test(l));
      assert.ok(
        line !== undefined,
        `dmesg logs the new capacity:\n${dmesg.split('\n').slice(-15).join('\n')}`,
      );
      console.log(`      ${line.trim()}`);
    } finally {
      await bindDriver(device.name, 'vhost_vdpa', { timeoutMs: 30_000 });
    }
  });
});
