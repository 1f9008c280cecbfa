import { strict as assert } from 'node:assert';
import { setImmediate as nextTurn } from 'node:timers/promises';

import { DmaRegion, VdpaError } from '../../lib';
import { IotlbMapper } from '../../lib/iotlb';

// The IOTLB mapper against a device that accepts every message: what a
// mapping holds and what DmaRegion.free() allows while it is live.
function fakeMapper(): { mapper: IotlbMapper; writes: number[] } {
  const writes: number[] = [];
  const device = {
    path: '/dev/vhost-vdpa-fake',
    getIovaRange: () => ({ first: 0n, last: 2n ** 40n - 1n }),
    getAsNum: () => 1,
    ackedBackendFeatures: 0n,
  };
  return { mapper: new IotlbMapper(device, (bytes) => writes.push(bytes.length), 'ignore'), writes };
}

function gc(): void {
  const collect = (globalThis as { gc?: () => void }).gc;
  assert.ok(collect !== undefined, 'run mocha with --expose-gc (test/mocharc.host.json does)');
  collect();
}

describe('IOTLB mappings and their DmaRegion', () => {
  it('a mapping holds its region: one passed straight to map() is not collected while mapped', async () => {
    const { mapper } = fakeMapper();
    const mapped: WeakRef<DmaRegion>[] = [];
    const unmapped: WeakRef<DmaRegion>[] = [];
    for (let i = 0; i < 4; i++) {
      mapped.push(new WeakRef(mapper.mapBatch([{ memory: DmaRegion.allocate(4096) }])[0].region!));
      unmapped.push(new WeakRef(DmaRegion.allocate(4096)));
    }
    // WeakRef targets stay alive until the current job ends.
    await nextTurn();
    gc();
    await nextTurn();
    gc();
    assert.ok(
      unmapped.some((ref) => ref.deref() === undefined),
      'control: unmapped regions are collectable',
    );
    assert.ok(
      mapped.every((ref) => ref.deref() !== undefined),
      'a region collected while the device still maps it',
    );
    assert.equal(mapper.mappings.length, 4);
    for (const mapping of mapper.mappings) assert.ok(mapping.region instanceof DmaRegion);
  });

  it('free() refuses with ERR_BUSY while mapped, naming the device and IOVA, and succeeds after unmap', () => {
    const { mapper } = fakeMapper();
    const region = DmaRegion.allocate(8192);
    const [mapping] = mapper.mapBatch([{ memory: region, iova: 0x10000n }]);
    assert.equal(region.mapped, true);
    assert.throws(
      () => region.free(),
      (error: unknown) => {
        assert.ok(error instanceof VdpaError);
        assert.equal(error.code, 'ERR_BUSY');
        assert.equal(error.path, '/dev/vhost-vdpa-fake');
        assert.match(error.message, /\/dev\/vhost-vdpa-fake at IOVA \[0x10000, \+8192\) in ASID 0/);
        assert.match(error.message, /[Uu]nmap it first/);
        return true;
      },
    );
    assert.equal(region.freed, false);
    assert.equal(region.bytes.length, 8192, 'a refused free() leaves the memory usable');
    mapper.unmapBatch([mapping]);
    assert.equal(region.mapped, false);
    region.free();
    assert.equal(region.freed, true);
  });

  it('counts every mapping of a region: free() refuses until the last is gone', () => {
    const { mapper } = fakeMapper();
    const region = DmaRegion.allocate(8192);
    const [first, second] = mapper.mapBatch([
      { memory: region, size: 4096 },
      { memory: region, offset: 4096, size: 4096 },
    ]);
    mapper.unmapBatch([first]);
    assert.throws(() => region.free(), { code: 'ERR_BUSY' });
    mapper.unmapBatch([second]);
    region.free();
  });

  it('a reset or close that drops the mappings (forget) releases the regions', () => {
    const { mapper } = fakeMapper();
    const region = DmaRegion.allocate(4096);
    mapper.mapBatch([{ memory: region }]);
    mapper.forget();
    assert.equal(region.mapped, false);
    region.free();
  });

  it('a region whose mapping the kernel refused is not counted as mapped', () => {
    const device = {
      path: '/dev/vhost-vdpa-fake',
      getIovaRange: () => ({ first: 0n, last: 2n ** 40n - 1n }),
      getAsNum: () => 1,
      ackedBackendFeatures: 0n,
    };
    const mapper = new IotlbMapper(
      device,
      () => {
        throw Object.assign(new VdpaError('write failed', { code: 'EFAULT', errno: 14 }), { index: 0 });
      },
      'ignore',
    );
    const region = DmaRegion.allocate(4096);
    assert.throws(() => mapper.mapBatch([{ memory: region }]), { code: 'EFAULT' });
    region.free();
  });
});
