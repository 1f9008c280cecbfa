import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as path from 'node:path';
import { GuestMemory, GuestMemoryDevice, IotlbMapping, MapRequest, PAGE_SIZE } from '../../lib';

const MiB = 1024 * 1024;

/** Records the mapBatch it gets. */
class RecordingDevice implements GuestMemoryDevice {
  readonly path = '/dev/fake';
  batches: MapRequest[][] = [];
  mapBatch(entries: readonly MapRequest[]): IotlbMapping[] {
    this.batches.push([...entries]);
    return entries.map((e) => ({
      iova: e.iova as bigint,
      size: BigInt(e.size ?? 0),
      uaddr: 0n,
      asid: 0,
      access: e.access ?? 'rw',
    }));
  }
}

describe('vmm: GuestMemory', () => {
  let guest: GuestMemory;
  beforeEach(() => {
    guest = new GuestMemory();
  });
  afterEach(() => guest.free());

  it('places regions at guest-physical addresses and translates GPAs into them', () => {
    guest.addRegion({ gpa: 0x100000000n, size: MiB });
    guest.addRegion({ gpa: 0x40000000, size: 2 * MiB });
    assert.deepEqual(
      guest.regions.map((r) => r.gpa),
      [0x40000000n, 0x100000000n],
    );
    const t = guest.translate(0x100000000n + 0x1234n, 16);
    assert.equal(t.region.gpa, 0x100000000n);
    assert.equal(t.offset, 0x1234);
    guest.write(0x40000010n, Buffer.from('guest'));
    assert.equal(guest.read(0x40000010n, 5).toString(), 'guest');
    assert.equal(guest.regions[0].memory.view(0x10, 5).toString(), 'guest');
  });

  it('refuses misaligned and overlapping regions', () => {
    assert.throws(() => guest.addRegion({ gpa: 0x1001, size: PAGE_SIZE }), { code: 'ERR_MISALIGNED' });
    assert.throws(() => guest.addRegion({ gpa: 0, size: PAGE_SIZE + 1 }), { code: 'ERR_MISALIGNED' });
    assert.throws(() => guest.addRegion({ gpa: 0x200000, size: MiB, hugepages: true }), {
      code: 'ERR_MISALIGNED',
    });
    assert.throws(() => guest.addRegion({ gpa: -1, size: PAGE_SIZE }), { code: 'ERR_INVALID_ARG' });
    guest.addRegion({ gpa: 0x10000, size: 4 * PAGE_SIZE });
    assert.throws(() => guest.addRegion({ gpa: 0x10000 + PAGE_SIZE, size: PAGE_SIZE }), {
      code: 'ERR_IOVA_OVERLAP',
    });
  });

  it('refuses a GPA range in a hole or across two regions, naming the regions', () => {
    guest.addRegion({ gpa: 0, size: PAGE_SIZE });
    guest.addRegion({ gpa: PAGE_SIZE, size: PAGE_SIZE });
    assert.throws(() => guest.translate(3 * PAGE_SIZE, 1), {
      code: 'ERR_OUT_OF_RANGE',
      message: /\[0x0, \+4096\)/,
    });
    assert.throws(() => guest.translate(PAGE_SIZE - 4, 8), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('maps every region at IOVA = GPA in one batch', () => {
    guest.addRegion({ gpa: 0x40000000, size: MiB });
    guest.addRegion({ gpa: 0x100000000n, size: MiB });
    const device = new RecordingDevice();
    guest.mapInto(device);
    assert.equal(device.batches.length, 1);
    assert.deepEqual(
      device.batches[0].map((e) => e.iova),
      [0x40000000n, 0x100000000n],
    );
  });

  it('maps the guest IOMMU mappings instead in iommu mode, and refuses one outside guest RAM', () => {
    guest.addRegion({ gpa: 0x40000000, size: MiB });
    const device = new RecordingDevice();
    guest.mapInto(device, [
      { iova: 0xfee00000n, gpa: 0x40000000n + 0x2000n, size: 2 * PAGE_SIZE, access: 'ro' },
    ]);
    const [entry] = device.batches[0];
    assert.equal(entry.iova, 0xfee00000n);
    assert.equal(entry.offset, 0x2000);
    assert.equal(entry.size, 2 * PAGE_SIZE);
    assert.equal(entry.access, 'ro');
    assert.throws(() => guest.mapInto(device, [{ iova: 0n, gpa: 0x50000000n, size: PAGE_SIZE }]), {
      code: 'ERR_OUT_OF_RANGE',
    });
  });

  it('is shared with another process through /proc/<pid>/fd/<n>: same bytes both ways', () => {
    guest.addRegion({ gpa: 0x40000000, size: MiB });
    guest.write(0x40000000n + 100n, Buffer.from('from parent'));
    const shared = guest.share();
    const lib = path.resolve(__dirname, '../../lib');
    const script =
      `const { GuestMemory } = require(${JSON.stringify(lib)});` +
      `const g = GuestMemory.attach(JSON.parse(process.argv[1]));` +
      `process.stdout.write(g.read(0x40000000n + 100n, 11).toString());` +
      `g.write(0x40000000n + 200n, Buffer.from('from child'));`;
    const out = execFileSync(process.execPath, ['-e', script, JSON.stringify(shared)]).toString();
    assert.equal(out, 'from parent');
    assert.equal(guest.read(0x40000000n + 200n, 10).toString(), 'from child');
  });

  it('refuses to attach a path that is gone, or whose size differs', () => {
    assert.throws(
      () =>
        GuestMemory.attach({
          regions: [{ gpa: '0x0', size: PAGE_SIZE, hugepages: false, path: '/proc/self/fd/999999' }],
        }),
      {
        code: 'ENOENT',
      },
    );
    guest.addRegion({ gpa: 0, size: PAGE_SIZE });
    const shared = guest.share();
    shared.regions[0].size = 2 * PAGE_SIZE;
    assert.throws(() => GuestMemory.attach(shared), { code: 'ERR_INVALID_ARG' });
  });
});
