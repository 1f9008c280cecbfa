import { strict as assert } from 'node:assert';
import { BlockDevice, ResetEvent, VhostVdpaDevice } from '../../lib';
import { rejects } from '../assertions';
import { labDevice, waitFor } from './helpers';

// Recovery on a real parent that cleans its maps on reset (vdpa_sim without IOTLB_PERSIST): the hostile suite
// (blk-hostile.test.ts) runs on VDUSE, whose reset keeps them. A suspended device stalls like a hung one.
describe('BlockDevice recovery on vdpa_sim_blk (blk0): a request stalls, the driver resets and goes on', () => {
  it('ETIMEDOUT, a reset, the IOTLB sent again, and data intact through zero-copy and bounce buffers', async () => {
    const target = labDevice('blk0');
    const device = VhostVdpaDevice.open(target.chardev);
    const disk = BlockDevice.open(device, { requestTimeoutMs: 1000 });
    try {
      const resets: ResetEvent[] = [];
      disk.on('reset', (event: ResetEvent) => resets.push(event));
      const buffer = disk.allocBuffer(4096);
      const pattern = Buffer.alloc(4096);
      for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7 + 3) & 0xff;
      await disk.write(8192, pattern);
      assert.ok(device.capabilities().suspend, 'vdpa_sim_blk offers VHOST_BACKEND_F_SUSPEND');
      device.suspend(); // the device stops processing: the next request stalls
      await rejects(disk.readInto(8192, buffer), 'ETIMEDOUT', /within 1000 ms/);
      await waitFor('the reset event', () => (resets.length > 0 ? resets[0] : undefined), 10000);
      assert.equal(resets[0].reason.code, 'ETIMEDOUT');
      assert.equal(disk.state, 'open');
      assert.deepEqual(
        Buffer.from(await disk.readInto(8192, buffer)),
        pattern,
        'zero-copy buffer after the reset',
      );
      assert.deepEqual(await disk.read(8192, 4096), pattern, 'bounce pool after the reset');
      await disk.write(16384, pattern);
      assert.deepEqual(await disk.read(16384, 4096), pattern);
      assert.equal(disk.stats.resets, 1);
    } finally {
      await disk.close();
      device.close();
    }
  });
});
