import { strict as assert } from 'node:assert';
import { ErrorCodes } from '../../lib/errors';
import { DriverMemory } from '../../lib/vduse/driver-memory';

function range(
  start: number,
  bytes: number,
  fill: number,
  perm: { readable?: boolean; writable?: boolean } = {},
) {
  return {
    start,
    last: start + bytes - 1,
    readable: perm.readable ?? true,
    writable: perm.writable ?? true,
    buffer: Buffer.alloc(bytes, fill),
  };
}

describe('VDUSE DriverMemory', () => {
  it('gives views of the mapped bytes, several when a buffer spans ranges', () => {
    const m = new DriverMemory();
    m.add(range(0x1000, 0x1000, 1));
    m.add(range(0x2000, 0x1000, 2));
    const out: Buffer[] = [];
    assert.equal(m.views(0x1ff0, 0x20, false, out), true);
    assert.deepEqual(
      out.map((v) => [v.length, v[0]]),
      [
        [0x10, 1],
        [0x10, 2],
      ],
    );
    out[0][0] = 9;
    assert.equal(m.view(0x1ff0, 1, false)?.[0], 9, 'views share the memory');
    assert.equal(m.views(0x1000, 0, true, out), true, 'zero bytes: nothing to map');
    assert.equal(out.length, 2);
  });
  it('appends nothing and returns false for an unmapped byte or a missing permission', () => {
    const m = new DriverMemory();
    m.add(range(0x1000, 0x1000, 1, { writable: false }));
    m.add(range(0x3000, 0x1000, 2));
    const out: Buffer[] = [Buffer.alloc(1)];
    assert.equal(m.views(0x1ff0, 0x20, false, out), false, 'runs into a hole');
    assert.equal(m.views(0x1000, 0x10, true, out), false, 'device-read-only');
    assert.equal(m.views(0x3000, 0x10, false, out), true);
    assert.equal(m.views(Number.MAX_SAFE_INTEGER, 2, false, out), false, 'beyond 2^53');
    assert.equal(out.length, 2);
    assert.equal(m.view(0x1ff0, 0x20, false), undefined);
    assert.equal(m.view(0x1000, 0x10, true), undefined);
    assert.equal(m.view(0x1000, 0x10, false)?.length, 0x10);
  });
  it('view() wants one range: a structure spanning two is undefined', () => {
    const m = new DriverMemory();
    m.add(range(0x1000, 0x1000, 1));
    m.add(range(0x2000, 0x1000, 2));
    assert.equal(m.view(0x1ff0, 0x20, false), undefined);
  });
  it('add() replaces what it overlaps and remove() trims ranges that straddle its ends', () => {
    const m = new DriverMemory();
    m.add(range(0x1000, 0x3000, 1));
    const g = m.generation;
    m.remove(0x2000, 0x2fff);
    assert.ok(m.generation > g);
    assert.deepEqual(
      m.regions().map((r) => [r.start, r.last, r.buffer.length]),
      [
        [0x1000, 0x1fff, 0x1000],
        [0x3000, 0x3fff, 0x1000],
      ],
    );
    assert.equal(m.view(0x2000, 1, false), undefined);
    m.add(range(0x1800, 0x1000, 7));
    assert.deepEqual(
      m.regions().map((r) => [r.start, r.last]),
      [
        [0x1000, 0x17ff],
        [0x1800, 0x27ff],
        [0x3000, 0x3fff],
      ],
    );
    assert.equal(m.view(0x1900, 1, false)?.[0], 7);
    m.clear();
    assert.equal(m.regions().length, 0);
  });
  it('asks onMiss once for an unmapped IOVA and retries, not for a permission miss', () => {
    const m = new DriverMemory();
    const asked: [number, number][] = [];
    m.onMiss = (iova, length) => {
      asked.push([iova, length]);
      if (iova === 0x5000) m.add(range(0x5000, 0x1000, 5));
      return iova === 0x5000;
    };
    m.add(range(0x4000, 0x1000, 4, { writable: false }));
    const out: Buffer[] = [];
    assert.equal(m.views(0x4ff0, 0x20, false, out), true);
    assert.deepEqual(asked, [[0x5000, 0x10]]);
    assert.equal(m.views(0x4000, 0x10, true, out), false);
    assert.equal(asked.length, 1, 'a permission miss is not an IOTLB miss');
    assert.equal(m.views(0x9000, 0x10, false, out), false);
    assert.deepEqual(asked[1], [0x9000, 0x10]);
    assert.equal(asked.length, 2, 'one retry only');
    assert.equal(m.view(0xa000, 4, false), undefined);
    assert.deepEqual(asked[2], [0xa000, 4]);
  });
  it('refuses a range whose buffer does not match it', () => {
    const m = new DriverMemory();
    assert.throws(() => m.add({ ...range(0x1000, 0x1000, 0), last: 0x1ffe }), {
      code: ErrorCodes.INVALID_ARG,
    });
    assert.throws(() => m.add({ ...range(0x1000, 16, 0), start: -1 }), { code: ErrorCodes.INVALID_ARG });
  });
});
