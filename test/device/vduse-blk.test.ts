/**
 * VduseBlockDevice: a virtio-blk device served by this very process (in a Worker), attached with `vdpa dev add`
 * through lib/mgmt and driven through /dev/vhost-vdpa-N by our own BlockDevice on the main thread — the
 * same-process case the VDUSE threading rule is about. Each ring/queue variant gets the 100,000-op integrity run
 * (test/device/blk-integrity.test.ts, in a child mocha pointed at the device with VDPA_DEVICE) while this process
 * serves it.
 *
 * VDPA_VDUSE_INTEGRITY_OPS overrides the integrity run's operation count (default 100,000).
 */
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

import { bit, BlockDevice, VhostVdpaDevice, VirtioBlkF, VirtioF, type BlkConfig } from '../../lib';
import { deviceExists } from '../../lib/mgmt/sysfs';
import { VduseBlockDevice, type VduseBlockOptions } from '../../lib/vduse/blk-device';

const OPS = Number(process.env.VDPA_VDUSE_INTEGRITY_OPS ?? 100_000);
const ROOT = resolve(__dirname, '..', '..', '..');
let serial = 0;
const uniqueName = (): string => `tvd-${process.pid}-${++serial}`;

interface Variant {
  label: string;
  options: Partial<VduseBlockOptions>;
  ring: 'split' | 'packed';
  queues: number;
}

const VARIANTS: Variant[] = [
  { label: 'split rings, 1 queue', options: {}, ring: 'split', queues: 1 },
  { label: 'packed rings, 1 queue', options: { packed: true }, ring: 'packed', queues: 1 },
  { label: 'split rings, 2 queues', options: { queues: 2 }, ring: 'split', queues: 2 },
];

/** Runs blk-integrity.test.js in a child process against `chardev`; resolves with its output. */
function integrityRun(chardev: string, ops: number, queues: number): Promise<string> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(
      process.execPath,
      [
        join(ROOT, 'node_modules', 'mocha', 'bin', 'mocha.js'),
        '--timeout',
        '900000',
        join(ROOT, 'dist-test', 'test', 'device', 'blk-integrity.test.js'),
      ],
      {
        env: {
          ...process.env,
          VDPA_DEVICE: chardev,
          VDPA_BLK_INTEGRITY_OPS: String(ops),
          VDPA_BLK_INTEGRITY_QUEUES: String(queues),
        },
        cwd: ROOT,
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) =>
      code === 0 ? resolveRun(out) : reject(new Error(`integrity run failed:\n${out}`)),
    );
  });
}

async function startAttached(options: Partial<VduseBlockOptions>): Promise<VduseBlockDevice> {
  const device = await VduseBlockDevice.start({
    name: uniqueName(),
    ramBytes: 64 << 20,
    attach: true,
    ...options,
  });
  if (process.env.VDPA_VDUSE_LOG !== undefined)
    device.on('log', (line: string) => console.error(`[vduse] ${line}`));
  assert.ok(device.chardev !== undefined, 'vhost_vdpa bound the new device');
  return device;
}

describe('VduseBlockDevice served by this process, driven by BlockDevice over vhost-vdpa', function () {
  this.timeout(1_200_000);
  let device: VduseBlockDevice | undefined;
  let disk: BlockDevice | undefined;
  afterEach(async () => {
    await disk?.close({ drain: false });
    disk = undefined;
    await device?.stop();
    device = undefined;
  });

  for (const variant of VARIANTS) {
    describe(variant.label, () => {
      it('negotiates the variant and reads back what it wrote, with flush, write-zeroes, discard and get-id', async () => {
        device = await startAttached({ ...variant.options, serial: 'vduse-test-serial' });
        disk = BlockDevice.open(device.chardev as string, { ring: variant.ring, queues: variant.queues });
        assert.equal(disk.capacity, 64 << 20);
        assert.equal((disk.features & bit(VirtioF.RING_PACKED)) !== 0n, variant.ring === 'packed');
        assert.equal(disk.queueCount, variant.queues);
        const data = randomBytes(1 << 20);
        await Promise.all(
          Array.from({ length: 16 }, (_, i) =>
            disk!.write(i * (1 << 20), data.subarray(0, 65536 * ((i % 4) + 1))),
          ),
        );
        await disk.flush();
        for (let i = 0; i < 16; i++) {
          const n = 65536 * ((i % 4) + 1);
          assert.ok((await disk.read(i * (1 << 20), n)).equals(data.subarray(0, n)), `block run ${i}`);
        }
        await disk.writeZeroes(0, 8192);
        assert.ok(
          (await disk.read(0, 8192)).every((b) => b === 0),
          'write-zeroes left zeros',
        );
        await disk.discard(1 << 20, 65536);
        assert.equal(await disk.getId(), 'vduse-test-serial');
        const stats = await device.stats();
        assert.ok(stats.reads >= 17 && stats.writes >= 16, JSON.stringify(stats));
      });

      it(`survives the ${OPS}-op integrity run of blk-integrity.test.ts while this process serves it`, async () => {
        device = await startAttached(variant.options);
        const out = await integrityRun(device.chardev as string, OPS, variant.queues);
        assert.match(out, /1 passing/);
        const stats = await device.stats();
        assert.ok(stats.requests >= OPS, `the device served ${stats.requests} requests`);
      });
    });
  }

  it('carries requests on both queues of a 2-queue device (GET_VRING_BASE asks this process for GET_VQ_STATE)', async () => {
    device = await startAttached({ queues: 2 });
    const transport = VhostVdpaDevice.open(device.chardev as string);
    try {
      disk = BlockDevice.open(transport, { queues: 2 });
      assert.ok((disk.features & bit(VirtioBlkF.MQ)) !== 0n);
      const before = [transport.getVringBase(0), transport.getVringBase(1)];
      await Promise.all(Array.from({ length: 64 }, (_, i) => disk!.write(i * 4096, randomBytes(4096))));
      const moved = [0, 1].map((q) => (transport.getVringBase(q) - (before[q] as number)) & 0xffff);
      assert.ok(
        moved[0]! > 0 && moved[1]! > 0,
        `both queues took requests (${moved.join(' + ')}); GET_VQ_STATE answered by the worker`,
      );
      await disk.close();
      disk = undefined;
    } finally {
      if (!transport.closed) transport.close();
    }
  });

  it('offers VIRTIO_BLK_F_RO read-only: BlockDevice reads and refuses writes', async () => {
    device = await startAttached({ readOnly: true });
    disk = BlockDevice.open(device.chardev as string);
    assert.equal(disk.config.readOnly, true);
    assert.ok((await disk.read(0, 4096)).every((b) => b === 0));
    await assert.rejects(disk.write(0, Buffer.alloc(512)), { code: 'ERR_READ_ONLY' });
  });

  it("resize: the driver gets a config interrupt and emits 'config-change' with the new capacity", async () => {
    device = await startAttached({});
    disk = BlockDevice.open(device.chardev as string);
    const changed = new Promise<BlkConfig>((ok) => disk!.once('config-change', ok));
    assert.equal(await device.resize(96 << 20), 96 << 20);
    const config = await changed;
    assert.equal(config.capacity, BigInt((96 << 20) / 512));
    assert.equal(disk.capacity, 96 << 20);
    const data = randomBytes(4096);
    await disk.write((96 << 20) - 4096, data);
    assert.ok((await disk.read((96 << 20) - 4096, 4096)).equals(data), 'I/O beyond the old end works');
  });

  it("the resize@N fault resizes after the Nth request: BlockDevice emits 'config-change'", async () => {
    device = await startAttached({ faults: ['resize@3:33554432'] });
    disk = BlockDevice.open(device.chardev as string);
    const changed = new Promise<BlkConfig>((ok) => disk!.once('config-change', ok));
    for (let i = 0; i < 4; i++) await disk.read(i * 4096, 4096);
    assert.equal((await changed).capacity, BigInt(33554432 / 512));
    assert.equal(disk.capacity, 33554432);
  });

  it('stop() deletes the vdpa device it added and destroys /dev/vduse/NAME', async () => {
    const d = await startAttached({});
    await d.stop();
    assert.equal(deviceExists(d.name), false);
    assert.equal(existsSync(`/dev/vduse/${d.name}`), false);
  });

  it('refuses a name in use with EEXIST and says what to do', async () => {
    device = await VduseBlockDevice.start({ name: uniqueName(), ramBytes: 1 << 20 });
    await assert.rejects(
      VduseBlockDevice.start({ name: device.name, ramBytes: 1 << 20 }),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'EEXIST');
        assert.match(e.message, /name is in use.*destroy the stale device/s);
        return true;
      },
    );
  });
});
