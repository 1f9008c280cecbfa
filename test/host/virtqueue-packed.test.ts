import { strict as assert } from 'node:assert';
import {
  DmaRegion,
  PackedVirtqueue,
  packedRingLayout,
  VdpaError,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
} from '../../lib';
import { PackedDeviceChain, PackedDeviceRing } from './virtqueue-packed-fake-device';
import { IovaSpace } from './virtqueue-fake-device';

const RING_IOVA = 0x10000;
const DATA_IOVA = 0x100000;

function setup(size: number, options: { indirectEntries?: number; eventIdx?: boolean } = {}) {
  const layout = packedRingLayout(size, options.indirectEntries ?? 0);
  const region = DmaRegion.allocate(layout.bytes);
  const data = new Uint8Array(1 << 20);
  const space = new IovaSpace();
  space.add(RING_IOVA, region.bytes);
  space.add(DATA_IOVA, data);
  let kicks = 0;
  const vq = new PackedVirtqueue<string>({
    index: 0,
    size,
    memory: region.buffer,
    byteOffset: 0,
    iova: RING_IOVA,
    indirectEntries: options.indirectEntries ?? 0,
    eventIdx: options.eventIdx ?? false,
    notify: () => kicks++,
  });
  const device = new PackedDeviceRing(space.translate, size, vq.addresses, {
    eventIdx: options.eventIdx,
    indirect: (options.indirectEntries ?? 0) > 0,
    base: vq.vringBase,
  });
  return { vq, device, region, data, layout, kicks: () => kicks };
}

function add(vq: PackedVirtqueue<string>, token: string, segments: [number, number, boolean][]): number {
  const id = vq.begin(segments.length);
  if (id < 0) return id;
  for (const [iova, length, writable] of segments) vq.push(iova, length, writable);
  return vq.end(token);
}

function collectAll(vq: PackedVirtqueue<string>): [string, number][] {
  const out: [string, number][] = [];
  vq.collect((token, length) => out.push([token, length]));
  return out;
}

function expectCorrupt(fn: () => unknown, pattern: RegExp): VdpaError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof VdpaError, `expected a VdpaError, got ${String(caught)}`);
  assert.equal(caught.code, 'ERR_QUEUE_CORRUPT');
  assert.match(caught.message, pattern);
  return caught;
}

/** A deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('packed virtqueue', () => {
  const regions: DmaRegion[] = [];
  afterEach(() => {
    for (const r of regions.splice(0)) r.free();
  });
  const make = (size: number, options?: Parameters<typeof setup>[1]) => {
    const s = setup(size, options);
    regions.push(s.region);
    return s;
  };

  describe('layout', () => {
    it('places the 16-byte-aligned descriptor ring, then the 4-byte-aligned event structures', () => {
      const l = packedRingLayout(256, 8);
      assert.equal(l.desc, 0);
      assert.equal(l.driver, 256 * 16);
      assert.equal(l.driver % 4, 0);
      assert.equal(l.device % 64, 0);
      assert.ok(l.device >= l.driver + 4);
      assert.ok(l.indirect >= l.device + 4);
      assert.equal(l.bytes, l.indirect + 256 * 8 * 16);
      const odd = packedRingLayout(3);
      assert.equal(odd.driver, 48);
      assert.equal(odd.bytes, odd.indirect);
    });

    it('accepts any size in [1, 32768] (no power of two needed) and rejects others', () => {
      packedRingLayout(1);
      packedRingLayout(100);
      packedRingLayout(32768);
      for (const bad of [0, -1, 1.5, 32769])
        assert.throws(() => packedRingLayout(bad), /packed virtqueue size/);
      assert.throws(() => packedRingLayout(8, 9), /indirect table size/);
    });

    it('rejects ring memory that is too small or misaligned', () => {
      const region = DmaRegion.allocate(4096);
      regions.push(region);
      const base = {
        index: 0,
        size: 256,
        memory: region.buffer,
        byteOffset: 0,
        iova: 0x1000,
        notify: () => {},
      };
      assert.throws(() => new PackedVirtqueue(base), /needs \d+ bytes/);
      assert.throws(() => new PackedVirtqueue({ ...base, size: 8, byteOffset: 8 }), /multiple of 64/);
      assert.throws(() => new PackedVirtqueue({ ...base, size: 8, iova: 0x1008 }), /multiple of 64/);
    });

    it('reports the packed VHOST_SET_VRING_BASE encoding: slot | wrap << 15, used side in the upper half', () => {
      const { vq } = make(4);
      assert.equal(vq.format, 'packed');
      assert.equal(vq.vringBase, 0x80008000);
    });
  });

  describe('submission', () => {
    it('round trip: the device sees the buffers, lengths, directions and buffer id; the token comes back', () => {
      const { vq, device, data, kicks } = make(8);
      data.set([1, 2, 3], 0);
      const id = add(vq, 'a', [
        [DATA_IOVA, 3, false],
        [DATA_IOVA + 64, 4, true],
        [DATA_IOVA + 128, 1, true],
      ]);
      assert.equal(id, 0);
      assert.equal(device.hasAvailable, false, 'nothing is visible before publish()');
      assert.equal(vq.unpublished, 1);
      assert.equal(vq.publish(), true);
      assert.equal(kicks(), 1);
      const chain = device.pop() as PackedDeviceChain;
      assert.equal(chain.id, id);
      assert.equal(chain.ringDescriptors, 3);
      assert.deepEqual([...chain.readable[0]], [1, 2, 3]);
      assert.deepEqual(
        chain.writable.map((b) => b.length),
        [4, 1],
      );
      assert.deepEqual(chain.iovas, [DATA_IOVA, DATA_IOVA + 64, DATA_IOVA + 128]);
      chain.writable[1][0] = 7;
      assert.equal(vq.hasCompletions(), false);
      device.complete(chain, 5);
      assert.equal(vq.hasCompletions(), true);
      assert.deepEqual(collectAll(vq), [['a', 5]]);
      assert.equal(data[128], 7);
      assert.equal(vq.numFree, 8);
      assert.equal(vq.inFlight, 0);
    });

    it('writes 64-bit IOVAs above 4 GiB correctly', () => {
      const { vq, region } = make(4);
      add(vq, 'x', [[0x1_2345_6780, 16, false]]);
      vq.publish();
      const view = new DataView(region.buffer);
      assert.equal(view.getBigUint64(0, true), 0x1_2345_6780n);
      assert.equal(view.getUint32(8, true), 16);
      const flags = view.getUint16(14, true);
      assert.equal(flags & VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_AVAIL);
      assert.equal(flags & VRING_PACKED_DESC_F_USED, 0);
    });

    it('exposes a batch only on publish(), in order, with one kick', () => {
      const { vq, device, kicks } = make(16);
      for (let i = 0; i < 5; i++) add(vq, `t${i}`, [[DATA_IOVA + i * 16, 16, i % 2 === 1]]);
      assert.equal(device.hasAvailable, false);
      assert.equal(vq.unpublished, 5);
      vq.publish();
      assert.equal(vq.unpublished, 0);
      assert.equal(kicks(), 1);
      assert.deepEqual(
        device.popAll().map((c) => c.id),
        [0, 1, 2, 3, 4],
      );
      assert.equal(vq.publish(), false, 'nothing new: no kick');
      assert.equal(kicks(), 1);
    });

    it('returns -1 when the ring lacks descriptors, and reuses them after completions', () => {
      const { vq, device } = make(4);
      assert.ok(
        add(vq, 'a', [
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, true],
        ]) >= 0,
      );
      assert.ok(add(vq, 'b', [[DATA_IOVA, 1, false]]) >= 0);
      assert.equal(vq.numFree, 1);
      assert.equal(vq.canAdd(2), false);
      assert.equal(vq.begin(2), -1);
      assert.ok(add(vq, 'c', [[DATA_IOVA, 1, true]]) >= 0);
      assert.equal(vq.begin(1), -1);
      vq.publish();
      const chains = device.popAll();
      assert.equal(chains.length, 3);
      device.complete(chains[0], 1);
      assert.deepEqual(collectAll(vq), [['a', 1]]);
      assert.equal(vq.numFree, 2);
      // The next chain wraps around the end of the ring: slot 3 then slot 0.
      assert.ok(
        add(vq, 'd', [
          [DATA_IOVA, 2, false],
          [DATA_IOVA, 3, true],
        ]) >= 0,
      );
      vq.publish();
      const d = device.pop() as PackedDeviceChain;
      assert.equal(d.ringDescriptors, 2);
      assert.equal(device.availWrap, 0, 'the device crossed into the second lap');
    });

    it('keeps ids and slots consistent over many laps with random chains completed out of order', () => {
      const size = 16;
      const { vq, device } = make(size);
      const random = rng(7);
      const held: PackedDeviceChain[] = [];
      const lengths = new Map<string, number>();
      let next = 0;
      let done = 0;
      const tokens = new Map<number, string>();
      for (let round = 0; round < 3000; round++) {
        // Add as many random chains as fit.
        for (;;) {
          const segments = 1 + Math.floor(random() * 4);
          const id = vq.begin(segments);
          if (id < 0) break;
          assert.equal(tokens.has(id), false, `id ${id} handed out while in flight`);
          for (let s = 0; s < segments; s++) vq.push(DATA_IOVA + s * 32, 32, s === segments - 1);
          const token = `c${next++}`;
          tokens.set(id, token);
          vq.end(token);
          if (random() < 0.3) break;
        }
        vq.publish();
        held.push(...device.popAll());
        // Complete a random subset, in random order.
        while (held.length > 0 && random() < 0.7) {
          const chain = held.splice(Math.floor(random() * held.length), 1)[0];
          const length = Math.floor(random() * 33);
          lengths.set(tokens.get(chain.id) as string, length);
          device.complete(chain, length);
        }
        vq.collect((token, length) => {
          assert.equal(length, lengths.get(token));
          for (const [id, t] of tokens) if (t === token) tokens.delete(id);
          done++;
        });
        assert.equal(vq.numFree + held.reduce((n, c) => n + c.ringDescriptors, 0), size);
        assert.equal(vq.inFlight, held.length);
      }
      for (const chain of held.splice(0)) device.complete(chain, 0);
      vq.collect(() => done++);
      assert.equal(done, next);
      assert.equal(vq.numFree, size);
      assert.ok(next > 10 * size, `only ${next} chains: not several laps`);
    });

    it('refuses chains that can never fit, and misuse of begin/push/end', () => {
      const { vq } = make(4);
      assert.throws(() => vq.begin(5), /cannot fit/);
      assert.throws(() => vq.begin(0), /cannot fit/);
      vq.begin(1);
      assert.throws(() => vq.begin(1), /chain is open/);
      assert.throws(() => vq.end('x'), /after 0 of 1/);
      vq.push(DATA_IOVA, 1, false);
      assert.throws(() => vq.push(DATA_IOVA, 1, false), /beyond/);
      vq.end('x');
    });
  });

  describe('indirect descriptors', () => {
    it('sends a multi-buffer chain as one ring descriptor pointing to its table', () => {
      const { vq, device, data } = make(4, { indirectEntries: 4 });
      data[0] = 9;
      const id = add(vq, 'i', [
        [DATA_IOVA, 16, false],
        [DATA_IOVA + 512, 512, true],
        [DATA_IOVA + 1024, 1, true],
      ]);
      assert.equal(vq.numFree, 3);
      vq.publish();
      const chain = device.pop() as PackedDeviceChain;
      assert.equal(chain.indirect, true);
      assert.equal(chain.id, id);
      assert.equal(chain.ringDescriptors, 1);
      assert.equal(chain.readable[0][0], 9);
      assert.deepEqual(
        chain.writable.map((b) => b.length),
        [512, 1],
      );
      device.complete(chain, 513);
      assert.deepEqual(collectAll(vq), [['i', 513]]);
      assert.equal(vq.stats.indirectChains, 1);
    });

    it('lets a full queue of multi-buffer requests be in flight, and keeps working over laps', () => {
      const { vq, device } = make(4, { indirectEntries: 3 });
      for (let lap = 0; lap < 5; lap++) {
        for (let i = 0; i < 4; i++) {
          assert.ok(
            add(vq, `${lap}.${i}`, [
              [DATA_IOVA, 16, false],
              [DATA_IOVA + 64, 8, true],
              [DATA_IOVA + 96, 1, true],
            ]) >= 0,
          );
        }
        assert.equal(vq.numFree, 0);
        vq.publish();
        const chains = device.popAll();
        assert.equal(chains.length, 4);
        for (const c of chains.reverse()) device.complete(c, 9);
        assert.deepEqual(
          collectAll(vq).map(([t]) => t),
          [3, 2, 1, 0].map((i) => `${lap}.${i}`),
        );
      }
    });

    it('uses ring descriptors for single buffers and chains longer than a table', () => {
      const { vq, device } = make(8, { indirectEntries: 2 });
      add(vq, 'one', [[DATA_IOVA, 1, false]]);
      add(vq, 'three', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, true],
        [DATA_IOVA, 1, true],
      ]);
      vq.publish();
      const [a, b] = device.popAll();
      assert.deepEqual([a.indirect, a.ringDescriptors, b.indirect, b.ringDescriptors], [false, 1, false, 3]);
    });
  });

  describe('notification suppression', () => {
    it('skips the kick while the device event structure says DISABLE', () => {
      const { vq, device, kicks } = make(8);
      device.setEvent(VRING_PACKED_EVENT_FLAG_DISABLE);
      add(vq, 'a', [[DATA_IOVA, 1, false]]);
      assert.equal(vq.publish(), false);
      assert.equal(kicks(), 0);
      assert.equal(vq.stats.kicksSuppressed, 1);
      device.setEvent(VRING_PACKED_EVENT_FLAG_ENABLE);
      add(vq, 'b', [[DATA_IOVA, 1, false]]);
      assert.equal(vq.publish(), true);
      assert.equal(kicks(), 1);
    });

    it('with EVENT_IDX and RING_EVENT_FLAGS_DESC kicks only when the batch covers the event descriptor', () => {
      const { vq, device, kicks } = make(8, { eventIdx: true });
      device.setEvent(VRING_PACKED_EVENT_FLAG_DESC, 3, 1);
      add(vq, 'a', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
      ]); // slots 0-1
      assert.equal(vq.publish(), false);
      add(vq, 'b', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
      ]); // slots 2-3
      assert.equal(vq.publish(), true);
      assert.equal(kicks(), 1);
      const chains = device.popAll();
      for (const c of chains) device.complete(c, 0);
      collectAll(vq);
      // Event at slot 1 of the next lap (wrap 0): slots 4-7 do not cover it, slots 0-1 of lap 2 do.
      device.setEvent(VRING_PACKED_EVENT_FLAG_DESC, 1, 0);
      add(vq, 'c', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
      ]);
      assert.equal(vq.publish(), false);
      for (const c of device.popAll()) device.complete(c, 0);
      collectAll(vq);
      add(vq, 'd', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, false],
      ]);
      assert.equal(vq.publish(), true);
      assert.equal(kicks(), 2);
      // An event descriptor on the current lap but already behind the batch: no kick.
      device.setEvent(VRING_PACKED_EVENT_FLAG_DESC, 0, 0);
      add(vq, 'e', [[DATA_IOVA, 1, false]]);
      assert.equal(vq.publish(), false);
    });

    it('asks for interrupts (ENABLE) by default and for none (DISABLE) when polling', () => {
      const { vq, device } = make(8);
      add(vq, 'a', [[DATA_IOVA, 1, false]]);
      vq.publish();
      const a = device.pop() as PackedDeviceChain;
      assert.equal(device.driverFlags, VRING_PACKED_EVENT_FLAG_ENABLE);
      assert.equal(device.complete(a, 0), true);
      collectAll(vq);
      vq.setInterrupts(false);
      assert.equal(device.driverFlags, VRING_PACKED_EVENT_FLAG_DISABLE);
      add(vq, 'b', [[DATA_IOVA, 1, false]]);
      vq.publish();
      assert.equal(device.complete(device.pop() as PackedDeviceChain, 0), false);
      assert.deepEqual(collectAll(vq), [['b', 0]]);
      vq.setInterrupts(true);
      assert.equal(device.driverFlags, VRING_PACKED_EVENT_FLAG_ENABLE);
    });

    it('with EVENT_IDX arms DESC at the next used slot and re-arms it on every collect', () => {
      const { vq, device } = make(4, { eventIdx: true });
      assert.equal(device.driverFlags, VRING_PACKED_EVENT_FLAG_DESC);
      assert.equal(device.driverOffWrap, 0x8000);
      for (let i = 0; i < 6; i++) {
        add(vq, `t${i}`, [
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, true],
        ]);
        vq.publish();
        const c = device.pop() as PackedDeviceChain;
        assert.equal(device.complete(c, 1), true, `completion ${i} interrupts`);
        assert.deepEqual(collectAll(vq), [[`t${i}`, 1]]);
        const slot = ((i + 1) * 2) % 4;
        const wrap = Math.floor(((i + 1) * 2) / 4) % 2 === 0 ? 1 : 0;
        assert.equal(device.driverOffWrap, slot | (wrap << 15));
      }
      // Two completions before a collect: the second lies past the armed slot, no second interrupt.
      add(vq, 'x', [[DATA_IOVA, 1, true]]);
      add(vq, 'y', [[DATA_IOVA, 1, true]]);
      vq.publish();
      const [x, y] = device.popAll();
      assert.equal(device.complete(x, 1), true);
      assert.equal(device.complete(y, 1), false);
      assert.deepEqual(collectAll(vq), [
        ['x', 1],
        ['y', 1],
      ]);
      vq.setInterrupts(false);
      assert.equal(device.driverFlags, VRING_PACKED_EVENT_FLAG_DISABLE);
    });
  });

  describe('a device that corrupts the ring', () => {
    const twoInFlight = () => {
      const s = make(8);
      add(s.vq, 'a', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 4, true],
      ]);
      add(s.vq, 'b', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 4, true],
      ]);
      s.vq.publish();
      const chains = s.device.popAll();
      return { ...s, chains };
    };

    it('rejects a used id outside [0, size) without handing anything over', () => {
      const { vq, device } = twoInFlight();
      device.push(8, 0, 2);
      const seen: string[] = [];
      expectCorrupt(() => vq.collect((t) => seen.push(t)), /buffer id 8, which is outside/);
      assert.deepEqual(seen, []);
      assert.ok(vq.broken);
      assert.throws(() => vq.begin(1), /unusable/);
      assert.equal(vq.hasCompletions(), false);
    });

    it('rejects an id that is not in flight', () => {
      const { vq, device } = twoInFlight();
      device.push(5, 0, 2);
      expectCorrupt(() => collectAll(vq), /buffer id 5, which is not in flight/);
    });

    it('rejects a second completion of the same buffer, after delivering the first', () => {
      const { vq, device, chains } = twoInFlight();
      device.complete(chains[0], 4);
      device.complete(chains[0], 4);
      const seen: string[] = [];
      expectCorrupt(() => vq.collect((t) => seen.push(t)), /buffer id 0, which is not in flight/);
      assert.deepEqual(seen, ['a']);
    });

    it('rejects a length larger than the buffer’s device-writable bytes', () => {
      const { vq, device, chains } = twoInFlight();
      device.complete(chains[1], 5);
      expectCorrupt(() => collectAll(vq), /5 bytes written to buffer 1, which has only 4/);
    });

    it('stays broken until reset(), which returns the orphans and restarts both wrap counters', () => {
      const { vq, device, region, data } = twoInFlight();
      device.push(9, 0, 1);
      expectCorrupt(() => collectAll(vq), /outside/);
      assert.deepEqual(vq.reset().sort(), ['a', 'b']);
      assert.equal(vq.broken, undefined);
      assert.equal(vq.vringBase, 0x80008000);
      assert.equal(vq.numFree, 8);
      const space = new IovaSpace();
      space.add(RING_IOVA, region.bytes);
      space.add(DATA_IOVA, data);
      const fresh = new PackedDeviceRing(space.translate, 8, vq.addresses, { base: vq.vringBase });
      add(vq, 'c', [[DATA_IOVA, 1, true]]);
      vq.publish();
      fresh.complete(fresh.pop() as PackedDeviceChain, 1);
      assert.deepEqual(collectAll(vq), [['c', 1]]);
    });
  });
});
