import { strict as assert } from 'node:assert';

import {
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from '../../lib/blk/protocol';
import { ErrorCodes, VdpaError } from '../../lib/errors';
import { BlkRequestHandler, sliceViews } from '../../lib/vduse/blk-handler';
import { fillSectorNumbers, RamStore } from '../../lib/vduse/blk-store';
import type { VduseDevice } from '../../lib/vduse/device';
import type { DeviceChain, DeviceQueue, DeviceQueueState } from '../../lib/vduse/device-queue';
import { FaultPlan } from '../../lib/vduse/faults';

/** A chain as pop() hands it out: views of plain Buffers. */
function chain(
  id: number,
  readable: Buffer[],
  writable: Buffer[],
  error?: VdpaError,
  secondDescriptor?: number,
): DeviceChain {
  const sum = (list: Buffer[]): number => list.reduce((n, b) => n + b.length, 0);
  return {
    id,
    readable,
    writable,
    readableBytes: sum(readable),
    writableBytes: sum(writable),
    error,
    secondDescriptor,
  };
}

function header(type: number, sector: number): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(type, 0);
  h.writeBigUInt64LE(BigInt(sector), 8);
  return h;
}

/** A queue holding `chains`, recording completions. */
class FakeQueue implements DeviceQueue {
  readonly format = 'split' as const;
  readonly index = 0;
  readonly size = 16;
  readonly used: { id: number; written: number; raw?: boolean }[] = [];
  flushes = 0;
  constructor(private readonly chains: DeviceChain[]) {}
  get inFlight(): number {
    return 0;
  }
  pop(): DeviceChain | undefined {
    return this.chains.shift();
  }
  push(c: DeviceChain, written: number): void {
    if (written > c.writableBytes) throw new VdpaError('too long', { code: ErrorCodes.INVALID_ARG });
    this.used.push({ id: c.id, written });
  }
  pushRaw(id: number, written: number): void {
    this.used.push({ id, written, raw: true });
  }
  flush(): boolean {
    this.flushes++;
    return true;
  }
  enableKicks(): boolean {
    return false;
  }
  disableKicks(): void {}
  state(): DeviceQueueState {
    return { split: { availIndex: 0 } };
  }
}

/** The part of VduseDevice the handler calls. */
function fakeDevice(): VduseDevice & { notified: number; configWrites: Buffer[] } {
  const device = {
    notified: 0,
    configWrites: [] as Buffer[],
    notify(q: DeviceQueue) {
      device.notified++;
      q.flush();
    },
    updateConfig(_offset: number, bytes: Uint8Array) {
      device.configWrites.push(Buffer.from(bytes));
      return true;
    },
  };
  return device as unknown as VduseDevice & { notified: number; configWrites: Buffer[] };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function serve(
  chains: DeviceChain[],
  options: { readOnly?: boolean; faults?: string[]; store?: RamStore } = {},
): Promise<{
  queue: FakeQueue;
  store: RamStore;
  handler: BlkRequestHandler;
  device: ReturnType<typeof fakeDevice>;
  log: string[];
}> {
  const log: string[] = [];
  const store = options.store ?? new RamStore(1 << 20);
  const faults = options.faults;
  const handler = new BlkRequestHandler({
    store,
    readOnly: options.readOnly ?? false,
    serial: 'serial-123',
    ...(faults === undefined ? {} : { faults: new FaultPlan(faults) }),
    log: (line) => log.push(line),
  });
  const queue = new FakeQueue([...chains]);
  const device = fakeDevice();
  handler.onKick(queue, device);
  await tick();
  return { queue, store, handler, device, log };
}

describe('VDUSE virtio-blk request handler (host, fake queue)', () => {
  it('writes scattered data and reads it back scattered differently, with the status byte last', async () => {
    const data = Buffer.alloc(1536);
    for (let i = 0; i < data.length; i++) data[i] = i * 7;
    const store = new RamStore(1 << 20);
    const w = chain(
      1,
      [
        header(VIRTIO_BLK_T_OUT, 3).subarray(0, 10),
        header(VIRTIO_BLK_T_OUT, 3).subarray(10),
        data.subarray(0, 100),
        data.subarray(100),
      ],
      [Buffer.alloc(1, 0xff)],
    );
    const first = await serve([w], { store });
    assert.deepEqual(first.queue.used, [{ id: 1, written: 1 }]);
    assert.equal(w.writable[0]![0], VIRTIO_BLK_S_OK);

    const parts = [Buffer.alloc(512), Buffer.alloc(1000), Buffer.alloc(25)];
    const r = chain(2, [header(VIRTIO_BLK_T_IN, 3)], parts);
    const second = await serve([r], { store });
    assert.deepEqual(second.queue.used, [{ id: 2, written: 1537 }]);
    assert.ok(Buffer.concat(parts).subarray(0, 1536).equals(data));
    assert.equal(parts[2]![24], VIRTIO_BLK_S_OK);
    assert.ok(second.device.notified >= 1, 'the queue was flushed (interrupt decision) after completing');
  });

  it('fails out-of-range and partial-sector I/O with IOERR, and unknown types with UNSUPP', async () => {
    const beyond = chain(1, [header(VIRTIO_BLK_T_IN, (1 << 20) / 512)], [Buffer.alloc(512), Buffer.alloc(1)]);
    const partial = chain(2, [header(VIRTIO_BLK_T_IN, 0)], [Buffer.alloc(100), Buffer.alloc(1)]);
    const unknown = chain(3, [header(99, 0)], [Buffer.alloc(1)]);
    await serve([beyond, partial, unknown]);
    assert.equal(beyond.writable[1]![0], VIRTIO_BLK_S_IOERR);
    assert.equal(partial.writable[1]![0], VIRTIO_BLK_S_IOERR);
    assert.equal(unknown.writable[0]![0], VIRTIO_BLK_S_UNSUPP);
  });

  it('completes a malformed chain (error set, no status byte, short header) with 0 bytes and goes on', async () => {
    const bad = chain(4, [], [], new VdpaError('loop', { code: ErrorCodes.QUEUE_CORRUPT }));
    const noStatus = chain(5, [header(VIRTIO_BLK_T_FLUSH, 0)], []);
    const shortHeader = chain(6, [Buffer.alloc(8)], [Buffer.alloc(1)]);
    const good = chain(7, [header(VIRTIO_BLK_T_FLUSH, 0)], [Buffer.alloc(1, 0xff)]);
    const { queue, handler } = await serve([bad, noStatus, shortHeader, good]);
    assert.deepEqual(queue.used, [
      { id: 4, written: 0 },
      { id: 5, written: 0 },
      { id: 6, written: 0 },
      { id: 7, written: 1 },
    ]);
    assert.equal(good.writable[0]![0], VIRTIO_BLK_S_OK);
    assert.equal(handler.stats.errors, 3);
  });

  it('refuses writes, discards and write-zeroes on a read-only device with IOERR', async () => {
    const seg = Buffer.alloc(16);
    seg.writeUInt32LE(1, 8);
    const kinds = [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES];
    const chains = kinds.map((t, i) =>
      chain(i, [header(t, 0), t === VIRTIO_BLK_T_OUT ? Buffer.alloc(512) : seg], [Buffer.alloc(1)]),
    );
    await serve(chains, { readOnly: true });
    for (const c of chains) assert.equal(c.writable[0]![0], VIRTIO_BLK_S_IOERR);
  });

  it('write-zeroes zeroes the range; a second segment or an unknown flag is UNSUPP', async () => {
    const store = new RamStore(1 << 20);
    store.write(0, [Buffer.alloc(4096, 0xaa)]);
    const seg = (sector: number, n: number, flags = 0): Buffer => {
      const s = Buffer.alloc(16);
      s.writeBigUInt64LE(BigInt(sector), 0);
      s.writeUInt32LE(n, 8);
      s.writeUInt32LE(flags, 12);
      return s;
    };
    const zero = chain(1, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), seg(1, 2)], [Buffer.alloc(1)]);
    const two = chain(2, [header(VIRTIO_BLK_T_WRITE_ZEROES, 0), seg(0, 1), seg(4, 1)], [Buffer.alloc(1)]);
    const flag = chain(3, [header(VIRTIO_BLK_T_DISCARD, 0), seg(0, 1, 1)], [Buffer.alloc(1)]);
    await serve([zero, two, flag], { store });
    assert.equal(zero.writable[0]![0], VIRTIO_BLK_S_OK);
    const back = Buffer.alloc(4096);
    store.read(0, [back]);
    assert.ok(back.subarray(0, 512).every((b) => b === 0xaa));
    assert.ok(back.subarray(512, 1536).every((b) => b === 0));
    assert.ok(back.subarray(1536).every((b) => b === 0xaa));
    assert.equal(two.writable[0]![0], VIRTIO_BLK_S_UNSUPP);
    assert.equal(flag.writable[0]![0], VIRTIO_BLK_S_UNSUPP);
  });

  it('answers GET_ID with the serial, cut to the buffer', async () => {
    const full = chain(1, [header(VIRTIO_BLK_T_GET_ID, 0)], [Buffer.alloc(20), Buffer.alloc(1)]);
    const short = chain(2, [header(VIRTIO_BLK_T_GET_ID, 0)], [Buffer.alloc(4), Buffer.alloc(1)]);
    const { queue } = await serve([full, short]);
    assert.equal(full.writable[0]!.toString('utf8').replace(/\0+$/, ''), 'serial-123');
    assert.equal(short.writable[0]!.toString('utf8'), 'seri');
    assert.deepEqual(queue.used, [
      { id: 1, written: 21 },
      { id: 2, written: 5 },
    ]);
  });

  it('applies the fault plan: bad id, duplicate, bad length, I/O error, stall and resize (faulty-blk semantics)', async () => {
    const flush = (id: number): DeviceChain => chain(id, [header(VIRTIO_BLK_T_FLUSH, 0)], [Buffer.alloc(1)]);
    const chains = [1, 2, 3, 4, 5, 6, 7].map(flush);
    const { queue, device, handler } = await serve(chains, {
      faults: ['bad-id@1', 'dup@2', 'bad-len@3', 'ioerr-every:4', 'stall@5', 'resize@7:2097152'],
    });
    assert.deepEqual(queue.used, [
      { id: 16 + 7, written: 1, raw: true },
      { id: 2, written: 1, raw: true },
      { id: 2, written: 1, raw: true },
      { id: 3, written: 1 + 4096, raw: true },
      { id: 4, written: 1 },
      { id: 6, written: 1 },
      { id: 7, written: 1 },
    ]);
    assert.equal(chains[3]!.writable[0]![0], VIRTIO_BLK_S_IOERR);
    assert.equal(device.configWrites[0]!.readBigUInt64LE(0), BigInt((2 << 20) / 512), 'capacity in sectors');
    assert.equal(handler.capacity, 2 << 20);
    assert.equal(handler.stats.faults, 6);
  });

  it("not-head@N names the chain's second descriptor, or the queue size for a one-descriptor chain", async () => {
    const flush = (id: number, second?: number): DeviceChain =>
      chain(id, [header(VIRTIO_BLK_T_FLUSH, 0)], [Buffer.alloc(1)], undefined, second);
    const { queue, handler } = await serve([flush(4, 9), flush(5), flush(6, 2), flush(7, 3)], {
      faults: ['not-head@1', 'not-head@2', 'not-head@3', 'bad-id@3', 'dup@4'],
    });
    assert.deepEqual(queue.used, [
      { id: 9, written: 1, raw: true },
      { id: 16, written: 1, raw: true },
      { id: 16 + 7, written: 1, raw: true }, // bad-id wins over not-head, as in faulty-blk
      { id: 7, written: 1, raw: true },
      { id: 7, written: 1, raw: true },
    ]);
    assert.equal(handler.stats.faults, 4);
  });

  it("logs every fault it applies in faulty-blk's format (the hostile-device suite waits for these lines)", async () => {
    const read = (id: number, second: number): DeviceChain =>
      chain(id, [header(VIRTIO_BLK_T_IN, 0)], [Buffer.alloc(512), Buffer.alloc(1)], undefined, second);
    const { log } = await serve(
      [1, 2, 3, 4, 5, 6].map((id) => read(id, id + 8)),
      {
        faults: [
          'bad-id@1',
          'not-head@2',
          'bad-len@3',
          'dup@4',
          'stall@5',
          'ioerr-every:6',
          'resize@6:2097152',
        ],
      },
    );
    await tick();
    assert.deepEqual(log, [
      'request 1 queue 0: bad-id: used.id 23 (queue size 16) instead of head 1',
      'request 2 queue 0: not-head: used.id 10 (a descriptor inside the chain) instead of head 2',
      'request 3 queue 0: bad-len: used.len 4609, the chain has 513 writable bytes',
      'request 4 queue 0: dup: head 4 completed twice',
      'request 5 queue 0 head 5 (type 0): stall: never completed',
      'request 6 queue 0 (type 0): ioerr',
      'capacity is now 2097152 bytes (4096 sectors); config interrupt sent',
    ]);
    const bad = chain(1, [], [], new VdpaError('a loop', { code: ErrorCodes.QUEUE_CORRUPT }));
    assert.deepEqual((await serve([bad])).log, [
      'request 1 queue 0 head 1: a loop: completed with used.len 0',
    ]);
  });

  it('a resize fault on a device that refuses the ioctl logs the error and goes on serving', async () => {
    const store = new RamStore(1 << 20);
    const handler = new BlkRequestHandler({
      store,
      readOnly: false,
      serial: 's',
      faults: new FaultPlan('resize@1:2097152'),
      log: (line) => log.push(line),
    });
    const log: string[] = [];
    const device = fakeDevice();
    device.updateConfig = () => {
      throw new VdpaError('VDUSE_DEV_SET_CONFIG: EPERM', { code: 'EPERM' });
    };
    const queue = new FakeQueue([chain(1, [header(VIRTIO_BLK_T_FLUSH, 0)], [Buffer.alloc(1)])]);
    handler.onKick(queue, device);
    await tick();
    assert.deepEqual(queue.used, [{ id: 1, written: 1 }]);
    assert.deepEqual(log, ['resize to 2097152 bytes: VDUSE_DEV_SET_CONFIG: EPERM']);
  });

  it('slow:MS completes every request MS milliseconds late', async () => {
    const c = chain(1, [header(VIRTIO_BLK_T_FLUSH, 0)], [Buffer.alloc(1)]);
    const bad = chain(2, [Buffer.alloc(8)], [Buffer.alloc(1)]);
    const { queue, log } = await serve([c, bad], { faults: ['slow:40'] });
    assert.equal(queue.used.length, 0, 'a malformed chain is late too, as in faulty-blk');
    await new Promise((r) => setTimeout(r, 80));
    assert.deepEqual(queue.used, [
      { id: 1, written: 1 },
      { id: 2, written: 0 },
    ]);
    assert.deepEqual(log, [
      'request 1 queue 0: slow: completing in 40 ms',
      'request 2 queue 0 head 2: no readable 16-byte request header: completed with used.len 0',
      'request 2 queue 0: slow: completing in 40 ms',
    ]);
  });

  it("RamStore fill 'sectors' puts each sector's number in every 8 bytes, also in the space a resize adds", () => {
    const expected = (offset: number, length: number): Buffer => {
      const out = Buffer.alloc(length);
      for (let i = 0; i < length; i += 8) out.writeBigUInt64LE(BigInt(Math.floor((offset + i) / 512)), i);
      return out;
    };
    const store = new RamStore(8192, 'sectors');
    const all = Buffer.alloc(8192);
    store.read(0, [all]);
    assert.ok(all.equals(expected(0, 8192)));
    store.write(0, [Buffer.alloc(512, 1)]);
    store.resize(16384);
    const grown = Buffer.alloc(16384);
    store.read(0, [grown]);
    assert.ok(grown.subarray(0, 512).equals(Buffer.alloc(512, 1)), 'written data survives the resize');
    assert.ok(grown.subarray(512).equals(expected(512, 16384 - 512)), 'old and new space hold the pattern');
    const beyond4G = Buffer.alloc(16);
    fillSectorNumbers(beyond4G, 2 ** 32 * 512 + 504);
    assert.equal(beyond4G.readBigUInt64LE(0), 2n ** 32n, 'sector numbers above 32 bits');
    assert.equal(beyond4G.readBigUInt64LE(8), 2n ** 32n + 1n);
    const zero = Buffer.alloc(4096, 0xff);
    new RamStore(4096).read(0, [zero]);
    assert.ok(
      zero.every((b) => b === 0),
      'the default fill is zeros',
    );
  });

  it('sliceViews covers exactly the asked bytes across buffer boundaries', () => {
    const views = sliceViews([Buffer.from('abc'), Buffer.from('defg'), Buffer.from('h')], 2, 5);
    assert.deepEqual(
      views.map((v) => v.toString()),
      ['c', 'defg'],
    );
  });
});
