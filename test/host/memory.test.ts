import { strict as assert } from 'node:assert';
import { DmaRegion, IovaAllocator, PAGE_SIZE, VdpaError } from '../../lib';
import { native } from '../../lib/native';
import { whyNotDmaCapable } from '../../lib/procfs';

describe('DmaRegion', () => {
  it('allocates zeroed, page-rounded, memfd-backed shared memory', () => {
    const region = DmaRegion.allocate(PAGE_SIZE + 1);
    try {
      assert.equal(region.size, 2 * PAGE_SIZE);
      assert.ok(region.bytes.every((b) => b === 0));
      assert.ok(region.fd >= 0);
      assert.equal(whyNotDmaCapable(region.address, BigInt(region.size)), undefined);
    } finally {
      region.free();
    }
  });

  it('shares memory between its views without copies', () => {
    const region = DmaRegion.allocate(PAGE_SIZE);
    try {
      region.view(100, 4).writeUInt32LE(0xdeadbeef, 0);
      assert.equal(Buffer.from(region.buffer).readUInt32LE(100), 0xdeadbeef);
    } finally {
      region.free();
    }
  });

  it('detaches every view on free so unmapped memory cannot be touched', () => {
    const region = DmaRegion.allocate(PAGE_SIZE);
    const bytes = region.bytes;
    const view = region.view(0, 16);
    region.free();
    assert.equal(bytes.length, 0);
    assert.equal(view.length, 0);
    assert.equal(region.freed, true);
    assert.throws(() => region.buffer, { code: 'ERR_CLOSED' });
    assert.throws(() => region.view(0, 1), { code: 'ERR_CLOSED' });
    region.free(); // idempotent
  });

  it('refuses bad sizes and out-of-range views with typed errors', () => {
    assert.throws(() => DmaRegion.allocate(0), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => DmaRegion.allocate(-1), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => DmaRegion.allocate(1.5), { code: 'ERR_INVALID_ARG' });
    const region = DmaRegion.allocate(PAGE_SIZE);
    try {
      assert.throws(() => region.view(PAGE_SIZE - 1, 2), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => region.view(-1, 1), VdpaError);
    } finally {
      region.free();
    }
  });

  it('reports ENOMEM-class failures of huge-page allocation as VdpaError with syscall', () => {
    // Hosts without reserved huge pages fail at mmap (ENOMEM) or memfd_create (EINVAL without hugetlbfs).
    let region: DmaRegion | undefined;
    try {
      region = DmaRegion.allocate(1, { hugetlb: true });
      assert.equal(region.size % (2 * 1024 * 1024), 0);
    } catch (error) {
      assert.ok(error instanceof VdpaError);
      assert.match(String(error.syscall), /memfd_create|ftruncate|mmap/);
    } finally {
      region?.free();
    }
  });

  it('survives garbage collection of the region while a view is alive', () => {
    let view: Uint8Array | undefined = (() => {
      const region = DmaRegion.allocate(PAGE_SIZE);
      region.bytes[7] = 42;
      return region.bytes;
    })();
    (global as { gc?: () => void }).gc?.();
    assert.equal(view[7], 42);
    view = undefined;
  });
});

describe('whyNotDmaCapable', () => {
  it('explains that a Node Buffer is private, anonymous memory', () => {
    const buffer = Buffer.alloc(64 * 1024);
    const reason = whyNotDmaCapable(native.addressOf(buffer), BigInt(buffer.length));
    assert.match(String(reason), /private mapping|anonymous/);
  });

  it('explains that an unmapped address is not mapped', () => {
    assert.match(String(whyNotDmaCapable(0x1000n, 4096n)), /not mapped/);
  });
});

describe('IovaAllocator', () => {
  const range = { first: 0n, last: 0xffffn };

  it('allocates aligned, non-overlapping ranges and never IOVA 0', () => {
    const allocator = new IovaAllocator(range, 0x1000);
    const a = allocator.allocate(0x1000n);
    const b = allocator.allocate(0x1800n);
    const c = allocator.allocate(0x1000n);
    assert.equal(a, 0x1000n);
    assert.equal(b, 0x2000n);
    assert.equal(c, 0x4000n);
    assert.equal(allocator.reservedBytes, 0x3800n);
  });

  it('reuses released gaps first-fit', () => {
    const allocator = new IovaAllocator(range, 0x1000);
    const a = allocator.allocate(0x2000n);
    allocator.allocate(0x1000n);
    assert.ok(allocator.release(a));
    assert.equal(allocator.allocate(0x1000n), a);
    assert.equal(allocator.release(0x9999n), false);
  });

  it('reports exhaustion with ENOSPC', () => {
    const allocator = new IovaAllocator({ first: 0x1000n, last: 0x2fffn }, 0x1000);
    allocator.allocate(0x2000n);
    assert.throws(() => allocator.allocate(0x1000n), { code: 'ENOSPC' });
  });

  it('refuses reservations that are misaligned, outside the range or overlapping, saying which', () => {
    const allocator = new IovaAllocator(range, 0x1000);
    allocator.reserve(0x4000n, 0x2000n);
    assert.throws(() => allocator.reserve(0x4800n, 0x1000n), { code: 'ERR_MISALIGNED' });
    assert.throws(() => allocator.reserve(0xf000n, 0x2000n), {
      code: 'ERR_OUT_OF_RANGE',
      message: /GET_IOVA_RANGE/,
    });
    assert.throws(() => allocator.reserve(0x5000n, 0x1000n), { code: 'ERR_IOVA_OVERLAP', message: /0x4000/ });
  });

  it('honours a range that starts above zero and handles the full 64-bit range', () => {
    assert.equal(new IovaAllocator({ first: 0x100000n, last: 0x1fffffn }).allocate(0x1000n), 0x100000n);
    const full = new IovaAllocator({ first: 0n, last: 0xffffffffffffffffn });
    full.reserve(0xfffffffffffff000n, 0x1000n);
    assert.throws(() => full.reserve(0xfffffffffffff000n, 0x2000n), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('rejects an empty range and a non-power-of-two alignment', () => {
    assert.throws(() => new IovaAllocator({ first: 10n, last: 9n }), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => new IovaAllocator(range, 3000), { code: 'ERR_INVALID_ARG' });
  });
});
