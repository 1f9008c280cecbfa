import { strict as assert } from 'node:assert';
import {
  attachVirtqueue,
  CompletionDriver,
  DmaRegion,
  Doorbell,
  EventFd,
  QueueNotifier,
  SplitVirtqueue,
  splitRingLayout,
  VdpaError,
  VirtqueueTransport,
  VRING_AVAIL_F_NO_INTERRUPT,
} from '../../lib';
import { DeviceRing, IovaSpace } from './virtqueue-fake-device';

const RING_IOVA = 0x10000;
const DATA_IOVA = 0x100000;

/** A queue over a DmaRegion, the device side over the same memory, and a kick counter. */
function setup(size: number, options: { indirectEntries?: number; eventIdx?: boolean } = {}) {
  const layout = splitRingLayout(size, options.indirectEntries ?? 0);
  const region = DmaRegion.allocate(layout.bytes);
  const data = new Uint8Array(1 << 20);
  const space = new IovaSpace();
  space.add(RING_IOVA, region.bytes);
  space.add(DATA_IOVA, data);
  let kicks = 0;
  const vq = new SplitVirtqueue<string>({
    index: 0,
    size,
    memory: region.buffer,
    byteOffset: 0,
    iova: RING_IOVA,
    indirectEntries: options.indirectEntries ?? 0,
    eventIdx: options.eventIdx ?? false,
    notify: () => kicks++,
  });
  const device = new DeviceRing(space.translate, size, vq.addresses, {
    eventIdx: options.eventIdx,
    indirect: (options.indirectEntries ?? 0) > 0,
  });
  return { vq, device, region, data, kicks: () => kicks };
}

function add(vq: SplitVirtqueue<string>, token: string, segments: [number, number, boolean][]): number {
  const head = vq.begin(segments.length);
  if (head < 0) return head;
  for (const [iova, length, writable] of segments) vq.push(iova, length, writable);
  return vq.end(token);
}

function collectAll(vq: SplitVirtqueue<string>): [string, number][] {
  const out: [string, number][] = [];
  vq.collect((token, length) => out.push([token, length]));
  return out;
}

/**
 * Replaces performance.now() (which CompletionDriver measures its poll slice
 * with) by a clock that moves only when told, until restore().
 */
function frozenClock(): { advance(ms: number): void; restore(): void } {
  const real = Object.getOwnPropertyDescriptor(performance, 'now');
  let now = performance.now();
  performance.now = () => now;
  return {
    advance: (ms) => {
      now += ms;
    },
    restore: () => {
      if (real === undefined) delete (performance as { now?: unknown }).now;
      else Object.defineProperty(performance, 'now', real);
    },
  };
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

describe('split virtqueue', () => {
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
    it('places desc, avail and used rings per the spec alignment, the used ring on its own cache line', () => {
      const l = splitRingLayout(256);
      assert.equal(l.desc, 0);
      assert.equal(l.avail, 4096);
      assert.equal(l.used % 64, 0);
      assert.ok(l.used >= l.avail + 4 + 2 * 256 + 2);
      assert.ok(l.bytes >= l.used + 4 + 8 * 256 + 2);
      const withIndirect = splitRingLayout(256, 34);
      assert.equal(withIndirect.bytes - withIndirect.indirect, 256 * 34 * 16);
    });

    it('rejects sizes that are not a power of two up to 32768', () => {
      for (const bad of [0, 3, 100, 65536, 1.5]) {
        assert.throws(() => splitRingLayout(bad), { code: 'ERR_INVALID_ARG' });
      }
    });

    it('rejects ring memory that is too small or misaligned', () => {
      const region = DmaRegion.allocate(4096);
      regions.push(region);
      const base = { index: 0, memory: region.buffer, iova: RING_IOVA, notify: () => undefined };
      assert.throws(() => new SplitVirtqueue({ ...base, size: 1024, byteOffset: 0 }), {
        code: 'ERR_OUT_OF_RANGE',
      });
      assert.throws(() => new SplitVirtqueue({ ...base, size: 16, byteOffset: 8 }), {
        code: 'ERR_MISALIGNED',
      });
      assert.throws(() => new SplitVirtqueue({ ...base, size: 16, byteOffset: 0, iova: 12 }), {
        code: 'ERR_MISALIGNED',
      });
    });

    it('can use Atomics on DMA memory (the memory-ordering argument depends on it)', () => {
      const region = DmaRegion.allocate(4096);
      regions.push(region);
      const view = new Uint16Array(region.buffer, 0, 4);
      Atomics.store(view, 1, 0xbeef);
      assert.equal(Atomics.load(view, 1), 0xbeef);
      assert.equal(region.bytes[2] | (region.bytes[3] << 8), 0xbeef);
    });
  });

  describe('submission', () => {
    it('hands the device a chain with exactly the buffers, lengths and directions given', () => {
      const { vq, device } = make(16);
      add(vq, 'a', [
        [DATA_IOVA, 16, false],
        [DATA_IOVA + 4096, 4096, true],
        [DATA_IOVA + 8192, 1, true],
      ]);
      vq.publish();
      const chain = device.pop();
      assert.ok(chain);
      assert.deepEqual(
        chain.readable.map((b) => b.length),
        [16],
      );
      assert.deepEqual(
        chain.writable.map((b) => b.length),
        [4096, 1],
      );
      assert.deepEqual(chain.iovas, [DATA_IOVA, DATA_IOVA + 4096, DATA_IOVA + 8192]);
      assert.equal(chain.ringDescriptors, 3);
      assert.equal(vq.numFree, 13);
    });

    it('writes 64-bit IOVAs above 4 GiB correctly', () => {
      const { vq, region } = make(4);
      const high = 0x12_3456_7000;
      add(vq, 'x', [[high, 512, false]]);
      const view = new DataView(region.buffer);
      assert.equal(view.getBigUint64(0, true), BigInt(high));
    });

    it('exposes nothing until publish(), then the whole batch with one notification', () => {
      const { vq, device, kicks } = make(16);
      for (let i = 0; i < 5; i++) add(vq, `r${i}`, [[DATA_IOVA, 512, true]]);
      assert.equal(device.availIdx, 0, 'avail index must not move before publish');
      assert.equal(vq.unpublished, 5);
      assert.equal(vq.publish(), true);
      assert.equal(device.availIdx, 5);
      assert.equal(kicks(), 1);
      assert.equal(vq.publish(), false, 'nothing new: no second kick');
      assert.equal(kicks(), 1);
    });

    it('returns -1 and changes nothing when the ring is full, and reuses descriptors after completions', () => {
      const { vq, device } = make(8);
      assert.ok(
        add(vq, 'a', [
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, true],
        ]) >= 0,
      );
      assert.ok(
        add(vq, 'b', [
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, true],
        ]) >= 0,
      );
      assert.equal(vq.numFree, 2);
      assert.equal(vq.begin(3), -1);
      assert.equal(vq.numFree, 2);
      vq.publish();
      const a = device.pop();
      const b = device.pop();
      assert.ok(a && b);
      device.push(b.head, 1); // out of order
      assert.deepEqual(collectAll(vq), [['b', 1]]);
      assert.equal(vq.numFree, 5);
      assert.ok(
        add(vq, 'c', [
          [DATA_IOVA, 1, false],
          [DATA_IOVA, 1, true],
          [DATA_IOVA, 1, true],
          [DATA_IOVA, 1, true],
        ]) >= 0,
      );
      device.push(a.head, 1);
      vq.publish();
      const c = device.pop();
      assert.ok(c);
      assert.equal(c.writable.length, 3);
      device.push(c.head, 3);
      assert.deepEqual(collectAll(vq), [
        ['a', 1],
        ['c', 3],
      ]);
      assert.equal(vq.numFree, 8);
      assert.equal(vq.inFlight, 0);
    });

    it('keeps the free list intact through 70,000 chains of random length completed out of order (index wrap)', () => {
      const { vq, device } = make(8);
      let seed = 12345;
      const rand = (n: number): number => {
        seed = (seed * 1103515245 + 12345) & 0x7fffffff;
        return seed % n;
      };
      const held: number[] = [];
      let completed = 0;
      for (let i = 0; i < 70000; i++) {
        const segments = 1 + rand(3);
        if (vq.canAdd(segments)) {
          const chain: [number, number, boolean][] = [];
          for (let s = 0; s < segments; s++) chain.push([DATA_IOVA + s * 512, 512, s === segments - 1]);
          add(vq, `t${i}`, chain);
          vq.publish();
          const popped = device.pop();
          assert.ok(popped);
          held.push(popped.head);
        }
        if (held.length > 0 && (rand(2) === 0 || !vq.canAdd(3))) {
          const [head] = held.splice(rand(held.length), 1);
          device.push(head, 512);
          completed += vq.collect(() => undefined);
        }
      }
      for (const head of held) device.push(head, 0);
      completed += vq.collect(() => undefined);
      assert.equal(vq.numFree, 8);
      assert.equal(vq.inFlight, 0);
      assert.ok(completed > 60000);
    });

    it('refuses chains that can never fit, and misuse of begin/push/end', () => {
      const { vq } = make(4);
      assert.throws(() => vq.begin(5), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => vq.begin(0), { code: 'ERR_OUT_OF_RANGE' });
      assert.ok(vq.begin(2) >= 0);
      vq.push(DATA_IOVA, 1, false);
      assert.throws(() => vq.end('x'), { code: 'ERR_INVALID_ARG' });
      vq.push(DATA_IOVA, 1, true);
      assert.throws(() => vq.push(DATA_IOVA, 1, true), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => vq.begin(1), { code: 'ERR_INVALID_ARG' });
      vq.end('x');
    });
  });

  describe('indirect descriptors', () => {
    it('sends a multi-buffer chain as one ring descriptor pointing to its table', () => {
      const { vq, device } = make(8, { indirectEntries: 6 });
      add(vq, 'a', [
        [DATA_IOVA, 16, false],
        [DATA_IOVA + 512, 512, true],
        [DATA_IOVA + 1024, 512, true],
        [DATA_IOVA + 2048, 1, true],
      ]);
      vq.publish();
      assert.equal(vq.numFree, 7);
      const chain = device.pop();
      assert.ok(chain);
      assert.equal(chain.indirect, true);
      assert.equal(chain.ringDescriptors, 1);
      assert.deepEqual(chain.iovas, [DATA_IOVA, DATA_IOVA + 512, DATA_IOVA + 1024, DATA_IOVA + 2048]);
      assert.equal(vq.stats.indirectChains, 1);
      device.push(chain.head, 1025);
      assert.deepEqual(collectAll(vq), [['a', 1025]]);
      assert.equal(vq.numFree, 8);
    });

    it('lets a full queue of multi-buffer requests be in flight (one descriptor each)', () => {
      const { vq, device } = make(8, { indirectEntries: 3 });
      for (let i = 0; i < 8; i++) {
        assert.ok(
          add(vq, `r${i}`, [
            [DATA_IOVA, 16, false],
            [DATA_IOVA + 512, 512, true],
            [DATA_IOVA, 1, true],
          ]) >= 0,
        );
      }
      assert.equal(vq.numFree, 0);
      vq.publish();
      for (let i = 0; i < 8; i++) {
        const chain = device.pop();
        assert.ok(chain?.indirect);
        assert.equal(chain.iovas.length, 3);
        device.push(chain.head, 513);
      }
      assert.equal(collectAll(vq).length, 8);
    });

    it('falls back to ring descriptors for single buffers and chains longer than a table', () => {
      const { vq, device } = make(8, { indirectEntries: 2 });
      add(vq, 'one', [[DATA_IOVA, 1, true]]);
      add(vq, 'three', [
        [DATA_IOVA, 1, false],
        [DATA_IOVA, 1, true],
        [DATA_IOVA, 1, true],
      ]);
      vq.publish();
      const one = device.pop();
      const three = device.pop();
      assert.equal(one?.indirect, false);
      assert.equal(three?.indirect, false);
      assert.equal(three?.ringDescriptors, 3);
    });
  });

  describe('notification suppression', () => {
    it('skips the kick while the device sets VRING_USED_F_NO_NOTIFY', () => {
      const { vq, device, kicks } = make(8);
      device.setNoNotify(true);
      add(vq, 'a', [[DATA_IOVA, 1, true]]);
      assert.equal(vq.publish(), false);
      assert.equal(kicks(), 0);
      assert.equal(vq.stats.kicksSuppressed, 1);
      device.setNoNotify(false);
      add(vq, 'b', [[DATA_IOVA, 1, true]]);
      assert.equal(vq.publish(), true);
      assert.equal(kicks(), 1);
    });

    it('with EVENT_IDX kicks only when the batch crosses avail_event', () => {
      const { vq, device, kicks } = make(8, { eventIdx: true });
      // Device asks to be kicked when avail index 0 is published (the initial state).
      device.setAvailEvent(0);
      add(vq, 'a', [[DATA_IOVA, 1, true]]);
      assert.equal(vq.publish(), true, 'publishing 0→1 crosses avail_event 0');
      // Device is busy and will look again by itself: asks for a kick only at index 5.
      device.setAvailEvent(5);
      add(vq, 'b', [[DATA_IOVA, 1, true]]);
      add(vq, 'c', [[DATA_IOVA, 1, true]]);
      assert.equal(vq.publish(), false, '1→3 does not cross 5');
      add(vq, 'd', [[DATA_IOVA, 1, true]]);
      add(vq, 'e', [[DATA_IOVA, 1, true]]);
      add(vq, 'f', [[DATA_IOVA, 1, true]]);
      assert.equal(vq.publish(), true, '3→6 crosses 5');
      assert.equal(kicks(), 2);
      assert.equal(vq.stats.kicksSuppressed, 1);
    });

    it('with EVENT_IDX re-arms used_event on every collect so the next completion interrupts', () => {
      const { vq, device } = make(8, { eventIdx: true });
      add(vq, 'a', [[DATA_IOVA, 1, true]]);
      add(vq, 'b', [[DATA_IOVA, 1, true]]);
      vq.publish();
      const a = device.pop();
      const b = device.pop();
      assert.ok(a && b);
      assert.equal(device.push(a.head, 1), true, 'used_event 0: first completion interrupts');
      collectAll(vq);
      assert.equal(device.usedEvent, 1);
      assert.equal(device.push(b.head, 1), true);
    });

    it('asks for no interrupts when polling: NO_INTERRUPT flag, or a distant used_event with EVENT_IDX', () => {
      const plain = make(8);
      plain.vq.setInterrupts(false);
      assert.equal(plain.device.availFlags, VRING_AVAIL_F_NO_INTERRUPT);
      add(plain.vq, 'a', [[DATA_IOVA, 1, true]]);
      plain.vq.publish();
      assert.equal(plain.device.push(plain.device.pop()!.head, 1), false);
      plain.vq.setInterrupts(true);
      assert.equal(plain.device.availFlags, 0);

      const evt = make(8, { eventIdx: true });
      evt.vq.setInterrupts(false);
      for (let i = 0; i < 3; i++) {
        add(evt.vq, `r${i}`, [[DATA_IOVA, 1, true]]);
        evt.vq.publish();
        assert.equal(evt.device.push(evt.device.pop()!.head, 1), false, `completion ${i} must not interrupt`);
        collectAll(evt.vq);
      }
    });
  });

  describe('a device that corrupts the used ring', () => {
    function twoInFlight() {
      const s = make(8);
      add(s.vq, 'a', [
        [DATA_IOVA, 16, false],
        [DATA_IOVA, 1, true],
      ]);
      add(s.vq, 'b', [
        [DATA_IOVA, 16, false],
        [DATA_IOVA, 1, true],
      ]);
      s.vq.publish();
      const a = s.device.pop()!;
      const b = s.device.pop()!;
      return { ...s, a, b };
    }

    it('rejects a used id outside the descriptor table without handing anything over', () => {
      const { vq, device } = twoInFlight();
      device.push(200, 1);
      const seen: string[] = [];
      expectCorrupt(
        () => vq.collect((t) => seen.push(t)),
        /descriptor 200, which is outside the 8-entry table/,
      );
      assert.deepEqual(seen, []);
    });

    it('rejects a used id that is not the head of a chain in flight (a body descriptor)', () => {
      const { vq, device, a } = twoInFlight();
      const body = a.head + 1;
      device.push(body, 1);
      expectCorrupt(() => collectAll(vq), /not the head of a chain in flight/);
    });

    it('rejects a second completion of the same chain, after delivering the first', () => {
      const { vq, device, a } = twoInFlight();
      device.push(a.head, 1);
      device.push(a.head, 1);
      const seen: string[] = [];
      expectCorrupt(() => vq.collect((t) => seen.push(t)), /not the head of a chain in flight/);
      assert.deepEqual(seen, ['a']);
    });

    it('rejects a length larger than the chain’s device-writable bytes', () => {
      const { vq, device, b } = twoInFlight();
      device.push(b.head, 2);
      expectCorrupt(
        () => collectAll(vq),
        /reports 2 bytes written to chain \d+, which has only 1 device-writable/,
      );
    });

    it('rejects a used index that runs ahead of the chains in flight', () => {
      const { vq, device } = twoInFlight();
      device.setUsedIdx(3);
      expectCorrupt(() => collectAll(vq), /3 entries\) but only 2 chains are in flight/);
    });

    it('stays broken until reset(), which returns the orphaned tokens and makes the queue usable', () => {
      const { vq, device } = twoInFlight();
      device.push(99, 0);
      const error = expectCorrupt(() => collectAll(vq), /outside/);
      assert.equal(vq.broken, error);
      assert.throws(() => vq.begin(1), { code: 'ERR_QUEUE_CORRUPT' });
      assert.throws(() => vq.collect(() => undefined), { code: 'ERR_QUEUE_CORRUPT' });
      assert.equal(vq.canAdd(1), false);
      assert.deepEqual(vq.reset().sort(), ['a', 'b']);
      assert.equal(vq.broken, undefined);
      assert.equal(vq.numFree, 8);
      assert.ok(add(vq, 'c', [[DATA_IOVA, 1, true]]) >= 0);
    });
  });

  describe('connection to a device', () => {
    it('programs num, base, IOVAs, kick, call and enable in that order', () => {
      const { vq } = make(16);
      const calls: string[] = [];
      const transport = {
        path: '/dev/fake',
        setVringNum: (i: number, n: number) => calls.push(`num ${i} ${n}`),
        setVringBase: (i: number, b: number) => calls.push(`base ${i} ${b}`),
        setVringAddr: (i: number, a: { desc: bigint; avail: bigint; used: bigint }) =>
          calls.push(`addr ${i} ${a.desc} ${a.avail} ${a.used}`),
        setVringKick: (i: number, fd: number) => calls.push(`kick ${i} ${fd}`),
        setVringCall: (i: number, fd: number) => calls.push(`call ${i} ${fd}`),
        setVringEnable: (i: number, on: boolean) => calls.push(`enable ${i} ${on}`),
        mapDoorbell: () => {
          throw new Error('unused');
        },
      } as unknown as VirtqueueTransport;
      attachVirtqueue(transport, vq, 7, 8);
      const l = splitRingLayout(16);
      assert.deepEqual(calls, [
        'num 0 16',
        'base 0 0',
        `addr 0 ${RING_IOVA + l.desc} ${RING_IOVA + l.avail} ${RING_IOVA + l.used}`,
        'kick 0 7',
        'call 0 8',
        'enable 0 true',
      ]);
    });

    it('notifies through the kick eventfd when the parent has no doorbell', () => {
      const transport = {
        mapDoorbell: () => {
          throw new VdpaError('no notification area', { code: 'ENOTSUPP', errno: 524 });
        },
      } as unknown as VirtqueueTransport;
      const notifier = QueueNotifier.create(transport, 0);
      try {
        assert.equal(notifier.path, 'eventfd');
        notifier.notify();
        notifier.notify();
        assert.equal(notifier.kick.read(), 2);
      } finally {
        notifier.close();
      }
    });

    it('prefers a mapped doorbell, storing the queue index, and unmaps it on close', () => {
      const stores: number[] = [];
      let unmapped = false;
      const transport = {
        mapDoorbell: (index: number) =>
          new Doorbell(index, {
            mapped: true,
            notify16: (v: number) => stores.push(v),
            notify32: () => undefined,
            unmap: () => {
              unmapped = true;
            },
          }),
      } as unknown as VirtqueueTransport;
      const notifier = QueueNotifier.create(transport, 3);
      assert.equal(notifier.path, 'doorbell');
      notifier.notify();
      assert.deepEqual(stores, [3]);
      assert.equal(notifier.kick.read(), 0, 'no eventfd write when the doorbell is used');
      notifier.close();
      assert.equal(unmapped, true);
    });
  });

  describe('completion delivery', () => {
    it('interrupt mode: a signal on the call eventfd runs the service callback on the loop', async () => {
      const call = new EventFd();
      let served = 0;
      const driver = new CompletionDriver(
        [call],
        () => ++served,
        () => false,
        { mode: 'interrupt' },
      );
      try {
        call.signal();
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(served, 1);
        assert.equal(driver.interrupts, 1);
      } finally {
        driver.close();
        call.close();
      }
    });

    it('poll mode: checks after every microtask checkpoint while busy, then stops', async () => {
      // The poll slice (default 1 ms) is measured with performance.now(): with the real clock, a loaded
      // machine could use it up between two rounds and the assertion on pollYields would be about timing.
      // A clock that only moves when the test says makes the guarantee exact: rounds that find
      // completions chain while the slice lasts, and exactly one yields once it is used up.
      const clock = frozenClock();
      const call = new EventFd();
      let busy = 10;
      let served = 0;
      const driver = new CompletionDriver(
        [call],
        () => {
          served++;
          busy--;
          if (served === 5) clock.advance(1.5); // the slice (1 ms) runs out during round 5
          return 1;
        },
        () => busy > 0,
        { mode: 'poll' },
      );
      try {
        driver.submitted();
        driver.submitted(); // idempotent while polling
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(served, 10);
        assert.equal(driver.polls, 10);
        assert.equal(
          driver.pollYields,
          1,
          'rounds that found completions were chained until the slice ran out',
        );
      } finally {
        clock.restore();
        driver.close();
        call.close();
      }
    });

    it('poll mode: a round chained after the checkpoint sees what promise continuations submitted', async () => {
      const call = new EventFd();
      let inFlight = 0;
      let completed: (() => void) | undefined;
      let immediates = 0;
      const driver = new CompletionDriver(
        [call],
        () => {
          if (inFlight === 0 || completed === undefined) return 0;
          inFlight--;
          const done = completed;
          completed = undefined;
          done();
          return 1;
        },
        () => inFlight > 0,
        { mode: 'poll', sliceMicros: 10_000_000 },
      );
      const clock = frozenClock(); // the 10 s slice cannot run out, however slow the machine
      const submit = (): Promise<void> => {
        inFlight++;
        const p = new Promise<void>((resolve) => (completed = resolve));
        driver.submitted();
        return p;
      };
      try {
        let counting = true;
        const count = (): void => {
          immediates++;
          if (counting) setImmediate(count);
        };
        setImmediate(count);
        // Resubmitting from an await continuation, through an extra async hop.
        const once = async (): Promise<void> => {
          await submit();
        };
        for (let i = 0; i < 50; i++) await once();
        counting = false;
        assert.equal(driver.polls, 50);
        assert.equal(driver.pollYields, 0);
        assert.ok(immediates <= 1, `${immediates} event-loop turns`);
      } finally {
        clock.restore();
        driver.close();
        call.close();
      }
    });

    it('poll mode: sliceMicros 0 yields to the event loop after every round', async () => {
      const call = new EventFd();
      let busy = 5;
      const driver = new CompletionDriver(
        [call],
        () => {
          busy--;
          return 1;
        },
        () => busy > 0,
        { mode: 'poll', sliceMicros: 0 },
      );
      try {
        driver.submitted();
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(driver.polls, 5);
        assert.equal(driver.pollYields, 5);
      } finally {
        driver.close();
        call.close();
      }
    });

    it('poll mode with a spin budget re-checks before yielding', async () => {
      const call = new EventFd();
      let checks = 0;
      const driver = new CompletionDriver(
        [call],
        () => (++checks === 20 ? 1 : 0),
        () => checks < 20,
        { mode: 'poll', spinMicros: 100000 },
      );
      try {
        driver.submitted();
        await new Promise((resolve) => setTimeout(resolve, 50));
        assert.equal(checks, 20);
        assert.equal(driver.polls, 1, 'all checks happened inside one spin');
      } finally {
        driver.close();
        call.close();
      }
    });
  });
});
