import { strict as assert } from 'node:assert';
import { ErrorCodes, VdpaError } from '../../lib/errors';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../../lib/uapi';
import {
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
} from '../../lib/virtqueue/packed';
import { createDeviceQueue, DeviceChain, DeviceQueue } from '../../lib/vduse/device-queue';
import { DriverMemory } from '../../lib/vduse/driver-memory';

// One 64 KiB window of "driver memory": rings at the start, data buffers after.
const BASE = 0x100000;
const DESC = 0x0;
const DRIVER = 0x1000; // split: avail ring; packed: driver event area
const DEVICE = 0x2000; // split: used ring; packed: device event area
const DATA = 0x4000;
const TABLE = 0x8000;
const RO_BASE = 0x200000; // a separate device-read-only range
const SIZE = 8;

interface Raw {
  bytes: Buffer;
  memory: DriverMemory;
  queue(o?: { indirect?: boolean; eventIdx?: boolean; maxSegments?: number }): DeviceQueue;
}

function raw(format: 'split' | 'packed'): Raw {
  const bytes = Buffer.alloc(0x10000);
  const memory = new DriverMemory();
  memory.add({ start: BASE, last: BASE + bytes.length - 1, readable: true, writable: true, buffer: bytes });
  memory.add({
    start: RO_BASE,
    last: RO_BASE + 0xfff,
    readable: true,
    writable: false,
    buffer: Buffer.alloc(0x1000),
  });
  return {
    bytes,
    memory,
    queue: (o = {}) =>
      createDeviceQueue({
        format,
        index: 3,
        size: SIZE,
        descIova: BASE + DESC,
        driverIova: BASE + DRIVER,
        deviceIova: BASE + DEVICE,
        memory,
        eventIdx: o.eventIdx ?? false,
        indirect: o.indirect ?? false,
        maxSegments: o.maxSegments,
      }),
  };
}

/** Writes a 16-byte descriptor: split {addr, len, flags, next}; packed {addr, len, id, flags}. */
function writeDesc(b: Buffer, at: number, addr: number, len: number, a: number, c: number): void {
  b.writeBigUInt64LE(BigInt(addr), at);
  b.writeUInt32LE(len, at + 8);
  b.writeUInt16LE(a, at + 12);
  b.writeUInt16LE(c, at + 14);
}

/** Split: descriptor `i` of the table. */
function sdesc(r: Raw, i: number, addr: number, len: number, flags: number, next = 0): void {
  writeDesc(r.bytes, DESC + 16 * i, addr, len, flags, next);
}

/** Split: makes `heads` available (avail ring entries, then the index). */
function offer(r: Raw, ...heads: number[]): void {
  let idx = r.bytes.readUInt16LE(DRIVER + 2);
  for (const h of heads) {
    r.bytes.writeUInt16LE(h, DRIVER + 4 + 2 * (idx % SIZE));
    idx = (idx + 1) & 0xffff;
  }
  r.bytes.writeUInt16LE(idx, DRIVER + 2);
}

const usedEntry = (r: Raw, slot: number): [number, number] => [
  r.bytes.readUInt32LE(DEVICE + 4 + 8 * slot),
  r.bytes.readUInt32LE(DEVICE + 8 + 8 * slot),
];

/** Packed: descriptor at `slot`, available for wrap counter 1. */
function pdesc(r: Raw, slot: number, addr: number, len: number, id: number, flags: number): void {
  writeDesc(r.bytes, DESC + 16 * slot, addr, len, id, flags | VRING_PACKED_DESC_F_AVAIL);
}

function expectChainError(chain: DeviceChain | undefined, pattern: RegExp): DeviceChain {
  assert.ok(chain !== undefined, 'a chain was popped');
  assert.ok(chain.error instanceof VdpaError, 'the chain carries an error');
  assert.equal(chain.error.code, ErrorCodes.QUEUE_CORRUPT);
  assert.match(chain.error.message, pattern);
  assert.equal(chain.readable.length + chain.writable.length, 0, 'no views of a bad chain');
  assert.equal(chain.readableBytes + chain.writableBytes, 0);
  return chain;
}

function expectQueueCorrupt(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof VdpaError);
    assert.equal(e.code, ErrorCodes.QUEUE_CORRUPT);
    assert.match(e.message, pattern);
    return true;
  });
}

describe('VDUSE split device queue: a hostile driver', () => {
  /** Offers the bad chain at head 0 (set up by `build`), checks its error, completes it, then a good chain. */
  function badChain(build: (r: Raw) => void, pattern: RegExp, o: Parameters<Raw['queue']>[0] = {}): void {
    const r = raw('split');
    const q = r.queue(o);
    build(r);
    offer(r, 0);
    const chain = expectChainError(q.pop(), pattern);
    assert.equal(chain.id, 0);
    q.push(chain, 0);
    assert.equal(q.flush(), true);
    assert.deepEqual(usedEntry(r, 0), [0, 0], 'the bad chain is completed with used.len 0');
    // The ring is still in step: a good chain at head 5 comes next.
    sdesc(r, 5, BASE + DATA, 16, 0);
    offer(r, 5);
    const good = q.pop();
    assert.equal(good?.error, undefined);
    assert.equal(good?.id, 5);
    assert.equal(good?.readableBytes, 16);
  }

  it('fails a chain whose head index is outside the table', () => {
    const r = raw('split');
    const q = r.queue();
    offer(r, SIZE + 1);
    const chain = expectChainError(q.pop(), /head 9, outside the 8-entry table/);
    q.push(chain, 0);
    q.flush();
    assert.deepEqual(usedEntry(r, 0), [SIZE + 1, 0]);
  });
  it('fails a chain whose next index is outside the table', () =>
    badChain((r) => sdesc(r, 0, BASE + DATA, 8, VRING_DESC_F_NEXT, 200), /next 200, outside/));
  it('fails a descriptor loop instead of following it forever', () =>
    badChain((r) => {
      sdesc(r, 0, BASE + DATA, 8, VRING_DESC_F_NEXT, 1);
      sdesc(r, 1, BASE + DATA, 8, VRING_DESC_F_NEXT, 0);
    }, /runs past 8 descriptors: a loop/));
  it('fails a buffer outside every IOTLB range', () =>
    badChain(
      (r) => sdesc(r, 0, 0x7000000, 8, 0),
      /IOVA 0x7000000 \(8 bytes\) is not mapped device-readable/,
    ));
  it('fails a buffer that runs off the end of its range into a hole', () =>
    badChain((r) => sdesc(r, 0, BASE + 0xfff0, 32, 0), /not mapped/));
  it('fails a buffer above 2^53 (cannot be an IOVA we map)', () =>
    badChain((r) => {
      sdesc(r, 0, 0, 8, 0);
      r.bytes.writeUInt32LE(0xffffffff, DESC + 4);
    }, /not mapped/));
  it('fails a device-writable buffer in a range the device may only read', () =>
    badChain((r) => sdesc(r, 0, RO_BASE, 8, VRING_DESC_F_WRITE), /not mapped device-writable/));
  it('fails a device-readable buffer after a device-writable one', () =>
    badChain((r) => {
      sdesc(r, 0, BASE + DATA, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
      sdesc(r, 1, BASE + DATA + 8, 8, 0);
    }, /readable buffer follows a device-writable one/));
  it('fails a chain with more buffers than maxSegments', () =>
    badChain(
      (r) => {
        for (let i = 0; i < 4; i++) sdesc(r, i, BASE + DATA, 8, i < 3 ? VRING_DESC_F_NEXT : 0, i + 1);
      },
      /more than 3 buffers/,
      { maxSegments: 3 },
    ));
  it('fails an indirect descriptor when VIRTIO_F_RING_INDIRECT_DESC was not negotiated', () =>
    badChain((r) => sdesc(r, 0, BASE + TABLE, 32, VRING_DESC_F_INDIRECT), /not negotiated/));
  it('fails an indirect descriptor that also has NEXT', () =>
    badChain(
      (r) => sdesc(r, 0, BASE + TABLE, 32, VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT, 1),
      /both INDIRECT and NEXT/,
      {
        indirect: true,
      },
    ));
  it('fails an indirect table whose length is not a non-zero multiple of 16', () => {
    badChain(
      (r) => sdesc(r, 0, BASE + TABLE, 24, VRING_DESC_F_INDIRECT),
      /24 bytes: not a non-zero multiple/,
      {
        indirect: true,
      },
    );
    badChain((r) => sdesc(r, 0, BASE + TABLE, 0, VRING_DESC_F_INDIRECT), /0 bytes/, { indirect: true });
  });
  it('fails an indirect table that is not mapped', () =>
    badChain((r) => sdesc(r, 0, 0x9000000, 32, VRING_DESC_F_INDIRECT), /indirect table at IOVA 0x9000000/, {
      indirect: true,
    }));
  it('fails an indirect table holding an indirect descriptor (nested)', () =>
    badChain(
      (r) => {
        sdesc(r, 0, BASE + TABLE, 32, VRING_DESC_F_INDIRECT);
        writeDesc(r.bytes, TABLE, BASE + DATA, 8, VRING_DESC_F_NEXT, 1);
        writeDesc(r.bytes, TABLE + 16, BASE + TABLE, 32, VRING_DESC_F_INDIRECT, 0);
      },
      /entry 1 is itself indirect/,
      { indirect: true },
    ));
  it('fails a loop inside an indirect table', () =>
    badChain(
      (r) => {
        sdesc(r, 0, BASE + TABLE, 32, VRING_DESC_F_INDIRECT);
        writeDesc(r.bytes, TABLE, BASE + DATA, 8, VRING_DESC_F_NEXT, 1);
        writeDesc(r.bytes, TABLE + 16, BASE + DATA, 8, VRING_DESC_F_NEXT, 0);
      },
      /runs past its 2 entries: a loop/,
      { indirect: true },
    ));
  it('fails an indirect table entry whose next is outside the table', () =>
    badChain(
      (r) => {
        sdesc(r, 0, BASE + TABLE, 32, VRING_DESC_F_INDIRECT);
        writeDesc(r.bytes, TABLE, BASE + DATA, 8, VRING_DESC_F_NEXT, 7);
      },
      /next 7, outside the 2-entry table/,
      { indirect: true },
    ));
  it('serves a good indirect chain (readable then writable) with views of the right bytes', () => {
    const r = raw('split');
    const q = r.queue({ indirect: true });
    r.bytes.fill(0xab, DATA, DATA + 8);
    sdesc(r, 2, BASE + TABLE, 32, VRING_DESC_F_INDIRECT);
    writeDesc(r.bytes, TABLE, BASE + DATA, 8, VRING_DESC_F_NEXT, 1);
    writeDesc(r.bytes, TABLE + 16, BASE + DATA + 64, 4, VRING_DESC_F_WRITE, 0);
    offer(r, 2);
    const chain = q.pop();
    assert.ok(chain !== undefined && chain.error === undefined);
    assert.equal(chain.id, 2);
    assert.deepEqual([...chain.readable[0]], Array(8).fill(0xab));
    chain.writable[0].fill(0xcd);
    q.push(chain, 4);
    assert.equal(r.bytes.readUInt32LE(DATA + 64), 0xcdcdcdcd);
  });
  it('throws ERR_QUEUE_CORRUPT when the avail index jumps by more than the ring size, and keeps throwing', () => {
    const r = raw('split');
    const q = r.queue();
    r.bytes.writeUInt16LE(SIZE + 1, DRIVER + 2);
    expectQueueCorrupt(() => q.pop(), /avail index moved from 0 to 9, 9 chains in a 8-entry ring/);
    expectQueueCorrupt(() => q.pop(), /avail index/);
  });
  it('refuses a ring that is not mapped, at creation and after the IOTLB dropped it', () => {
    const r = raw('split');
    const q = r.queue();
    r.memory.remove(BASE + DEVICE, BASE + DEVICE + 8);
    expectQueueCorrupt(() => q.pop(), /used ring .* is not mapped writable/);
    expectQueueCorrupt(() => r.queue(), /used ring/);
    const ro = raw('split');
    ro.memory.add({ start: BASE, last: BASE + 0xffff, readable: true, writable: false, buffer: ro.bytes });
    expectQueueCorrupt(() => ro.queue(), /used ring .* not mapped writable/);
  });
  it('refuses a misaligned ring', () => {
    const r = raw('split');
    expectQueueCorrupt(
      () =>
        createDeviceQueue({
          format: 'split',
          index: 0,
          size: SIZE,
          descIova: BASE + 8,
          driverIova: BASE + DRIVER,
          deviceIova: BASE + DEVICE,
          memory: r.memory,
          eventIdx: false,
          indirect: false,
        }),
      /descriptor table at IOVA 0x100008 is not 16-byte aligned/,
    );
  });
  it('re-maps the rings when the IOTLB changed (the same bytes through a new range)', () => {
    const r = raw('split');
    const q = r.queue();
    sdesc(r, 0, BASE + DATA, 8, 0);
    offer(r, 0);
    r.memory.remove(BASE, BASE + 0xffff);
    r.memory.add({ start: BASE, last: BASE + 0xffff, readable: true, writable: true, buffer: r.bytes });
    const chain = q.pop();
    assert.equal(chain?.error, undefined);
  });
  it('refuses push() of a chain it did not pop, a second push(), and a length beyond the writable bytes', () => {
    const r = raw('split');
    const q = r.queue();
    const other = raw('split').queue();
    sdesc(r, 0, BASE + DATA, 8, VRING_DESC_F_WRITE);
    offer(r, 0);
    const chain = q.pop() as DeviceChain;
    assert.throws(() => other.push(chain, 0), { code: ErrorCodes.INVALID_ARG });
    assert.throws(() => q.push(chain, 9), {
      code: ErrorCodes.INVALID_ARG,
      message: /9 bytes written, chain 0 has 8/,
    });
    q.push(chain, 8);
    assert.throws(() => q.push(chain, 0), { code: ErrorCodes.INVALID_ARG, message: /already pushed/ });
    assert.equal(q.inFlight, 0);
  });
  it('pushRaw() writes any id and length (fault injection) without touching the chains in flight', () => {
    const r = raw('split');
    const q = r.queue();
    sdesc(r, 0, BASE + DATA, 8, VRING_DESC_F_WRITE);
    offer(r, 0);
    q.pop();
    q.pushRaw(SIZE + 7, 4096 + 8);
    q.pushRaw(SIZE + 7, 4096 + 8);
    q.flush();
    assert.deepEqual(usedEntry(r, 0), [SIZE + 7, 4104]);
    assert.deepEqual(usedEntry(r, 1), [SIZE + 7, 4104]);
    assert.equal(r.bytes.readUInt16LE(DEVICE + 2), 2);
    assert.equal(q.inFlight, 1);
  });
  it('decides interrupts as the spec says: NO_INTERRUPT, and with EVENT_IDX used_event', () => {
    const r = raw('split');
    const q = r.queue();
    const complete = (n: number): boolean => {
      for (let i = 0; i < n; i++) {
        sdesc(r, i, BASE + DATA, 8, 0);
        offer(r, i);
        q.push(q.pop() as DeviceChain, 0);
      }
      return q.flush();
    };
    assert.equal(q.flush(), false, 'nothing to publish');
    assert.equal(complete(1), true);
    r.bytes.writeUInt16LE(1, DRIVER); // VRING_AVAIL_F_NO_INTERRUPT
    assert.equal(complete(1), false);
    const e = raw('split');
    const eq = e.queue({ eventIdx: true });
    const ecomplete = (n: number): boolean => {
      for (let i = 0; i < n; i++) {
        sdesc(e, i, BASE + DATA, 8, 0);
        offer(e, i);
        eq.push(eq.pop() as DeviceChain, 0);
      }
      return eq.flush();
    };
    e.bytes.writeUInt16LE(1, DRIVER); // the flag is ignored with EVENT_IDX
    e.bytes.writeUInt16LE(2, DRIVER + 4 + 2 * SIZE); // used_event = 2: interrupt when used idx passes 2
    assert.equal(ecomplete(2), false, 'used 0 → 2 does not cross used_event 2');
    assert.equal(ecomplete(1), true, 'used 2 → 3 crosses it');
    assert.equal(ecomplete(3), false, 'used 3 → 6: already past');
    e.bytes.writeUInt16LE(6, DRIVER + 4 + 2 * SIZE);
    assert.equal(ecomplete(4), true, 'used 6 → 10 crosses 6');
  });
  it('asks for kicks as the spec says: NO_NOTIFY, and with EVENT_IDX avail_event; enableKicks re-checks', () => {
    const r = raw('split');
    const q = r.queue();
    q.disableKicks();
    assert.equal(r.bytes.readUInt16LE(DEVICE), 1, 'VRING_USED_F_NO_NOTIFY');
    assert.equal(q.enableKicks(), false);
    assert.equal(r.bytes.readUInt16LE(DEVICE), 0);
    sdesc(r, 0, BASE + DATA, 8, 0);
    offer(r, 0);
    assert.equal(q.enableKicks(), true, 'a chain arrived: pop it');
    const e = raw('split');
    const eq = e.queue({ eventIdx: true });
    sdesc(e, 0, BASE + DATA, 8, 0);
    offer(e, 0, 0);
    eq.pop();
    eq.disableKicks();
    assert.equal(e.bytes.readUInt16LE(DEVICE + 4 + 8 * SIZE), 0, 'avail_event left behind');
    assert.equal(eq.enableKicks(), true, 'one more chain is waiting');
    assert.equal(e.bytes.readUInt16LE(DEVICE + 4 + 8 * SIZE), 1, 'avail_event = next chain');
  });
  it('starts from a GET_VQ_STATE state and reads the used index from the ring', () => {
    const r = raw('split');
    r.bytes.writeUInt16LE(5, DEVICE + 2);
    r.bytes.writeUInt16LE(6, DRIVER + 2);
    sdesc(r, 4, BASE + DATA, 8, 0);
    r.bytes.writeUInt16LE(4, DRIVER + 4 + 2 * 5);
    const q = createDeviceQueue({
      format: 'split',
      index: 0,
      size: SIZE,
      descIova: BASE + DESC,
      driverIova: BASE + DRIVER,
      deviceIova: BASE + DEVICE,
      memory: r.memory,
      eventIdx: false,
      indirect: false,
      state: { split: { availIndex: 5 } },
    });
    const chain = q.pop() as DeviceChain;
    assert.equal(chain.id, 4);
    assert.equal(q.pop(), undefined);
    q.push(chain, 0);
    q.flush();
    assert.equal(r.bytes.readUInt16LE(DEVICE + 2), 6);
    assert.deepEqual(q.state(), { split: { availIndex: 6 } });
    assert.throws(() => createDeviceQueue({ ...baseOptions(r), state: { split: { availIndex: 70000 } } }), {
      code: ErrorCodes.INVALID_ARG,
    });
  });
});

function baseOptions(r: Raw) {
  return {
    format: 'split' as const,
    index: 0,
    size: SIZE,
    descIova: BASE + DESC,
    driverIova: BASE + DRIVER,
    deviceIova: BASE + DEVICE,
    memory: r.memory,
    eventIdx: false,
    indirect: false,
  };
}

describe('VDUSE packed device queue: a hostile driver', () => {
  /** Offers the chain `build` wrote from slot 0, checks its error, completes it; a good chain follows at `next`. */
  function badChain(build: (r: Raw) => number, pattern: RegExp, o: Parameters<Raw['queue']>[0] = {}): void {
    const r = raw('packed');
    const q = r.queue(o);
    const next = build(r);
    const chain = expectChainError(q.pop(), pattern);
    assert.equal(chain.id, 1, 'the id of the last descriptor');
    q.push(chain, 0);
    q.flush();
    assert.equal(r.bytes.readUInt16LE(DESC + 12), 1, 'used descriptor names the id');
    assert.equal(r.bytes.readUInt16LE(DESC + 14), VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED);
    pdesc(r, next, BASE + DATA, 16, 4, 0);
    const good = q.pop();
    assert.equal(good?.error, undefined);
    assert.equal(good?.id, 4);
    assert.equal(good?.readableBytes, 16);
  }

  it('fails a buffer outside every IOTLB range, consuming the whole chain', () =>
    badChain((r) => {
      pdesc(r, 0, 0x7000000, 8, 1, VRING_DESC_F_NEXT);
      pdesc(r, 1, BASE + DATA, 8, 1, 0);
      return 2;
    }, /IOVA 0x7000000 \(8 bytes\) is not mapped/));
  it('fails a device-writable buffer in a read-only range', () =>
    badChain((r) => {
      pdesc(r, 0, RO_BASE, 8, 1, VRING_DESC_F_WRITE);
      return 1;
    }, /not mapped device-writable/));
  it('fails a device-readable buffer after a device-writable one', () =>
    badChain((r) => {
      pdesc(r, 0, BASE + DATA, 8, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT);
      pdesc(r, 1, BASE + DATA, 8, 1, 0);
      return 2;
    }, /readable buffer follows a device-writable one/));
  it('fails a chain with more buffers than maxSegments', () =>
    badChain(
      (r) => {
        for (let i = 0; i < 3; i++) pdesc(r, i, BASE + DATA, 8, 1, i < 2 ? VRING_DESC_F_NEXT : 0);
        return 3;
      },
      /more than 2 buffers/,
      { maxSegments: 2 },
    ));
  it('fails an indirect descriptor when not negotiated', () =>
    badChain((r) => {
      pdesc(r, 0, BASE + TABLE, 32, 1, VRING_DESC_F_INDIRECT);
      return 1;
    }, /not negotiated/));
  it('fails an indirect descriptor inside a longer chain', () =>
    badChain(
      (r) => {
        pdesc(r, 0, BASE + DATA, 8, 1, VRING_DESC_F_NEXT);
        pdesc(r, 1, BASE + TABLE, 32, 1, VRING_DESC_F_INDIRECT);
        return 2;
      },
      /indirect inside a 2-descriptor chain/,
      { indirect: true },
    ));
  it('fails a bad indirect table length, an unmapped table, and a nested indirect entry', () => {
    badChain(
      (r) => {
        pdesc(r, 0, BASE + TABLE, 20, 1, VRING_DESC_F_INDIRECT);
        return 1;
      },
      /20 bytes: not a non-zero multiple/,
      { indirect: true },
    );
    badChain(
      (r) => {
        pdesc(r, 0, 0x9000000, 32, 1, VRING_DESC_F_INDIRECT);
        return 1;
      },
      /indirect table at IOVA 0x9000000/,
      { indirect: true },
    );
    badChain(
      (r) => {
        pdesc(r, 0, BASE + TABLE, 32, 1, VRING_DESC_F_INDIRECT);
        writeDesc(r.bytes, TABLE, BASE + DATA, 8, 1, 0);
        writeDesc(r.bytes, TABLE + 16, BASE + TABLE, 32, 1, VRING_DESC_F_INDIRECT);
        return 1;
      },
      /entry 1 is itself indirect/,
      { indirect: true },
    );
  });
  it('serves a good indirect table (consecutive entries, readable then writable)', () => {
    const r = raw('packed');
    const q = r.queue({ indirect: true });
    pdesc(r, 0, BASE + TABLE, 32, 6, VRING_DESC_F_INDIRECT);
    writeDesc(r.bytes, TABLE, BASE + DATA, 8, 6, 0);
    writeDesc(r.bytes, TABLE + 16, BASE + DATA + 64, 4, 6, VRING_DESC_F_WRITE);
    const chain = q.pop();
    assert.ok(chain !== undefined && chain.error === undefined);
    assert.deepEqual([chain.id, chain.readableBytes, chain.writableBytes], [6, 8, 4]);
    q.push(chain, 4);
    q.flush();
    assert.equal(
      r.bytes.readUInt16LE(DESC + 14),
      VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED | VRING_DESC_F_WRITE,
      'used flags with WRITE when bytes were written',
    );
    assert.equal(r.bytes.readUInt32LE(DESC + 8), 4);
  });
  it('throws ERR_QUEUE_CORRUPT for a chain with NEXT on every descriptor of the ring', () => {
    const r = raw('packed');
    const q = r.queue();
    for (let i = 0; i < SIZE; i++) pdesc(r, i, BASE + DATA, 8, 1, VRING_DESC_F_NEXT);
    expectQueueCorrupt(() => q.pop(), /NEXT on all 8 descriptors/);
  });
  it('refuses a descriptor ring the device cannot write', () => {
    const r = raw('packed');
    r.memory.add({ start: BASE, last: BASE + 0xffff, readable: true, writable: false, buffer: r.bytes });
    expectQueueCorrupt(() => r.queue(), /descriptor ring .* readable and writable/);
  });
  it('decides interrupts as the spec says: DISABLE, ENABLE, and DESC at an event slot (with the wrap counter)', () => {
    const r = raw('packed');
    const q = r.queue({ eventIdx: true });
    let slot = 0;
    const complete = (n: number): boolean => {
      for (let i = 0; i < n; i++) {
        const wrap = Math.floor(slot / SIZE) % 2 === 0;
        writeDesc(
          r.bytes,
          DESC + 16 * (slot % SIZE),
          BASE + DATA,
          8,
          i,
          wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED,
        );
        slot++;
        q.push(q.pop() as DeviceChain, 0);
      }
      return q.flush();
    };
    const driverEvent = (offWrap: number, flags: number): void => {
      r.bytes.writeUInt16LE(offWrap, DRIVER);
      r.bytes.writeUInt16LE(flags, DRIVER + 2);
    };
    driverEvent(0, VRING_PACKED_EVENT_FLAG_DISABLE);
    assert.equal(complete(1), false);
    driverEvent(0, 0);
    assert.equal(complete(1), true, 'ENABLE');
    driverEvent(4 | 0x8000, VRING_PACKED_EVENT_FLAG_DESC); // slot 4, wrap 1
    assert.equal(complete(2), false, 'slots 2, 3');
    assert.equal(complete(1), true, 'slot 4');
    driverEvent(1 | 0x0000, VRING_PACKED_EVENT_FLAG_DESC); // slot 1 of the next lap (wrap 0)
    assert.equal(complete(3), false, 'slots 5–7');
    assert.equal(complete(2), true, 'slots 0, 1 of the next lap');
    const plain = raw('packed').queue({ eventIdx: false });
    assert.equal(plain.flush(), false, 'nothing to publish');
  });
  it('asks for kicks: DISABLE, ENABLE, or DESC at the next avail slot; enableKicks re-checks', () => {
    const r = raw('packed');
    const q = r.queue({ eventIdx: true });
    q.disableKicks();
    assert.equal(r.bytes.readUInt16LE(DEVICE + 2), VRING_PACKED_EVENT_FLAG_DISABLE);
    pdesc(r, 0, BASE + DATA, 8, 0, 0);
    assert.equal(q.enableKicks(), true);
    q.pop();
    assert.equal(q.enableKicks(), false);
    assert.equal(r.bytes.readUInt16LE(DEVICE + 2), VRING_PACKED_EVENT_FLAG_DESC);
    assert.equal(r.bytes.readUInt16LE(DEVICE), 1 | 0x8000, 'next avail slot 1, wrap 1');
  });
  it('starts from a packed state and reports it back', () => {
    const r = raw('packed');
    const state = { packed: { availCounter: 0, availIndex: 3, usedCounter: 0, usedIndex: 2 } };
    const q = createDeviceQueue({ ...baseOptions(r), format: 'packed', state });
    assert.deepEqual(q.state(), state);
    writeDesc(r.bytes, DESC + 48, BASE + DATA, 8, 9, VRING_PACKED_DESC_F_USED); // available for wrap 0
    const chain = q.pop() as DeviceChain;
    assert.equal(chain.id, 9);
    q.push(chain, 0);
    q.flush();
    assert.equal(r.bytes.readUInt16LE(DESC + 32 + 12), 9, 'used at slot 2');
    assert.equal(r.bytes.readUInt16LE(DESC + 32 + 14), 0, 'used flags for wrap 0');
    assert.deepEqual(q.state(), { packed: { availCounter: 0, availIndex: 4, usedCounter: 0, usedIndex: 3 } });
    assert.throws(
      () =>
        createDeviceQueue({
          ...baseOptions(r),
          format: 'packed',
          state: { packed: { availCounter: 2, availIndex: 0, usedCounter: 1, usedIndex: 0 } },
        }),
      { code: ErrorCodes.INVALID_ARG },
    );
  });
});
