/** VduseBlockDevice.start() refuses bad options in the caller's thread, before any worker or kernel call. */
import { strict as assert } from 'node:assert';
import { ErrorCodes } from '../../lib/errors';
import { VduseBlockDevice, type VduseBlockOptions } from '../../lib/vduse/blk-device';

async function refuses(options: VduseBlockOptions, message: RegExp): Promise<void> {
  await assert.rejects(VduseBlockDevice.start(options), (e: Error & { code?: string }) => {
    assert.equal(e.code, ErrorCodes.INVALID_ARG);
    assert.match(e.message, message);
    return true;
  });
}

describe('VduseBlockDevice options (host, no device)', () => {
  it("refuses fill on a file, and a fill other than 'zero' or 'sectors'", async () => {
    await refuses({ name: 'v0', file: '/nonexistent.img', fill: 'sectors' }, /fill is for RAM disks/);
    await refuses(
      { name: 'v0', ramBytes: 1 << 20, fill: 'stripes' as VduseBlockOptions['fill'] },
      /fill must be 'zero' or 'sectors', not stripes/,
    );
  });

  it('refuses a bad not-head fault spec with the valid forms', async () => {
    await refuses({ name: 'v0', ramBytes: 1 << 20, faults: ['not-head@0'] }, /'not-head@0': N must be/);
  });
});
