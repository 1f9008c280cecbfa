/**
 * virtio-blk requests on the device side: decodes each chain popped from a
 * queue, runs it against the {@link BlockStore}, writes the status byte and
 * completes it — or, when a {@link FaultPlan} says so, completes it wrongly
 * (bad id, twice, a bad length, an I/O error, never, late) or resizes the disk.
 * Driver memory is untrusted: a malformed request completes with 0 bytes or an
 * error status, never an exception out of the queue.
 * @module
 */
import {
  VIRTIO_BLK_DWZ_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from '../blk/protocol';
import { BLK_MAX_DISCARD_SECTORS, encodeCapacity } from './blk-config';
import type { BlockStore } from './blk-store';
import type { VduseDevice, VduseQueueHandler } from './device';
import { badUsedId, badUsedLength, notHeadUsedId, type FaultAction, type FaultPlan } from './faults';
import type { DeviceChain, DeviceQueue } from './device-queue';

/** Options of {@link BlkRequestHandler}. */
export interface BlkHandlerOptions {
  store: BlockStore;
  readOnly: boolean;
  /** The GET_ID answer (up to 20 bytes). */
  serial: string;
  faults?: FaultPlan;
  log?: (line: string) => void;
}

/** Counters a running device reports. */
export interface BlkStats {
  requests: number;
  reads: number;
  writes: number;
  errors: number;
  faults: number;
}

/** The views of `buffers` covering bytes [offset, offset + length) of their concatenation. */
export function sliceViews(buffers: readonly Buffer[], offset: number, length: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = offset;
  let want = length;
  for (const b of buffers) {
    if (want === 0) break;
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    const n = Math.min(b.length - skip, want);
    out.push(skip === 0 && n === b.length ? b : b.subarray(skip, skip + n));
    want -= n;
    skip = 0;
  }
  return out;
}

/** How fault and error log lines name a request (faulty-blk's words); built only when a line is logged. */
function where(requestNo: number, queue: DeviceQueue): string {
  return `request ${requestNo} queue ${queue.index}`;
}

/** Copies `length` bytes at `offset` of the concatenation of `buffers` into one Buffer. */
function gather(buffers: readonly Buffer[], offset: number, length: number): Buffer {
  const views = sliceViews(buffers, offset, length);
  return views.length === 1 ? (views[0] as Buffer) : Buffer.concat(views, length);
}

interface Outcome {
  status: number;
  /** Bytes written into the chain's writable part before the status byte. */
  dataWritten: number;
}

const SECTOR = 512;
const NO_FAULTS: readonly FaultAction[] = [];

/** Serves virtio-blk requests; one instance per device (all queues). */
export class BlkRequestHandler implements VduseQueueHandler {
  /** Counters since start. */
  readonly stats: BlkStats = { requests: 0, reads: 0, writes: 0, errors: 0, faults: 0 };
  /** Current capacity in bytes (a resize fault changes it). */
  capacity: number;
  private generation = 0;
  private readonly toNotify = new Set<DeviceQueue>();
  private notifyScheduled = false;
  private device: VduseDevice | undefined;
  private readonly serial: Buffer;

  constructor(private readonly options: BlkHandlerOptions) {
    this.capacity = options.store.size;
    this.serial = Buffer.alloc(VIRTIO_BLK_ID_BYTES);
    this.serial.write(options.serial, 0, VIRTIO_BLK_ID_BYTES, 'utf8');
  }

  onKick(queue: DeviceQueue, device: VduseDevice): void {
    this.device = device;
    for (;;) {
      queue.disableKicks();
      for (let chain = queue.pop(); chain !== undefined; chain = queue.pop()) this.serve(queue, chain);
      if (!queue.enableKicks()) break;
    }
    this.scheduleNotify(queue);
  }

  onReset(): void {
    this.generation++; // completions of requests in flight now belong to dropped queues
    this.toNotify.clear();
  }

  /**
   * Publishes `queue`'s used entries (and injects its interrupt when the driver wants one) once this turn of the
   * event loop is done: the check phase runs after every file-I/O completion that arrived in the poll phase, so
   * at queue depth N one VDUSE_VQ_INJECT_IRQ covers all the completions of a turn (a microtask would cover only
   * one: each completion callback ends with its own microtask checkpoint). At queue depth 1 it is the same turn.
   */
  private scheduleNotify(queue: DeviceQueue): void {
    this.toNotify.add(queue);
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    setImmediate(this.notifyQueued);
  }

  private readonly notifyQueued = (): void => {
    this.notifyScheduled = false;
    for (const q of this.toNotify) this.device?.notify(q);
    this.toNotify.clear();
  };

  private serve(queue: DeviceQueue, chain: DeviceChain): void {
    const requestNo = ++this.stats.requests;
    const faults = this.options.faults?.next(requestNo) ?? NO_FAULTS;
    if (faults.length > 0) this.stats.faults++;
    const log = this.options.log;
    const generation = this.generation;
    const delayMs =
      faults.length === 0 ? 0 : faults.reduce((ms, f) => (f.kind === 'delay' ? ms + f.ms : ms), 0);
    const malformed =
      chain.error?.message ??
      (chain.readableBytes < VIRTIO_BLK_OUTHDR_SIZE
        ? 'no readable 16-byte request header'
        : chain.writableBytes < 1
          ? 'no writable status byte'
          : undefined);
    if (malformed !== undefined) {
      this.stats.errors++;
      log?.(`${where(requestNo, queue)} head ${chain.id}: ${malformed}: completed with used.len 0`);
      const pushEmpty = (): void => {
        if (generation !== this.generation) return; // the queue was dropped by a reset meanwhile
        queue.push(chain, 0);
        this.scheduleNotify(queue);
      };
      if (delayMs > 0) {
        log?.(`${where(requestNo, queue)}: slow: completing in ${delayMs} ms`);
        setTimeout(pushEmpty, delayMs);
      } else {
        pushEmpty();
      }
      return;
    }
    if (faults.length > 0 && faults.some((f) => f.kind === 'stall')) {
      const type = gather(chain.readable, 0, 4).readUInt32LE(0);
      log?.(`${where(requestNo, queue)} head ${chain.id} (type ${type}): stall: never completed`);
      return;
    }
    if (delayMs > 0) log?.(`${where(requestNo, queue)}: slow: completing in ${delayMs} ms`);
    const settle = (outcome: Outcome): void => {
      if (delayMs > 0)
        setTimeout(() => this.finish(generation, queue, chain, outcome, faults, requestNo), delayMs);
      else this.finish(generation, queue, chain, outcome, faults, requestNo);
    };
    let result: Outcome | undefined;
    try {
      // ioerr: fail without doing the I/O, as faulty-blk does.
      if (faults.length > 0 && faults.some((f) => f.kind === 'ioerr')) {
        log?.(`${where(requestNo, queue)} (type ${gather(chain.readable, 0, 4).readUInt32LE(0)}): ioerr`);
        result = { status: VIRTIO_BLK_S_IOERR, dataWritten: 0 };
      } else {
        result = this.execute(chain, settle);
      }
    } catch (error) {
      // A synchronous store (RAM, a file in memory) throws what a system call threw.
      log?.(`I/O error: ${(error as Error).message}`);
      result = { status: VIRTIO_BLK_S_IOERR, dataWritten: 0 };
    }
    if (result !== undefined) settle(result);
  }

  private finish(
    generation: number,
    queue: DeviceQueue,
    chain: DeviceChain,
    outcome: Outcome,
    faults: readonly FaultAction[],
    requestNo: number,
  ): void {
    if (generation !== this.generation) return; // the queue was dropped by a reset meanwhile
    this.complete(queue, chain, outcome, faults, requestNo);
  }

  /** Settles with OK once `pending` resolves (IOERR if it rejects). */
  private whenDone(
    pending: Promise<void>,
    dataWritten: number,
    settle: (outcome: Outcome) => void,
  ): undefined {
    pending.then(
      () => settle({ status: VIRTIO_BLK_S_OK, dataWritten }),
      (error: unknown) => {
        this.options.log?.(`I/O error: ${(error as Error).message}`);
        settle({ status: VIRTIO_BLK_S_IOERR, dataWritten: 0 });
      },
    );
    return undefined;
  }

  private complete(
    queue: DeviceQueue,
    chain: DeviceChain,
    outcome: Outcome,
    faults: readonly FaultAction[],
    requestNo: number,
  ): void {
    if (outcome.status !== VIRTIO_BLK_S_OK) this.stats.errors++;
    const writable = chain.writable;
    let last = writable.length - 1;
    while ((writable[last] as Buffer).length === 0) last--; // writableBytes ≥ 1: some view is non-empty
    const statusView = writable[last] as Buffer;
    statusView[statusView.length - 1] = outcome.status;
    const written = outcome.dataWritten + 1;
    const has = (kind: FaultAction['kind']): boolean => faults.some((f) => f.kind === kind);
    if (faults.length === 0 || (!has('bad-id') && !has('not-head') && !has('bad-len') && !has('dup'))) {
      queue.push(chain, written);
    } else {
      // pushRaw writes what push() refuses. The chain record then stays "in flight" for good (the queue takes
      // another from its pool); the driver is expected to reset the device anyway. The log lines are
      // faulty-blk's (docs/vduse.md), which the hostile-device suite waits for.
      const log = this.options.log;
      let id = chain.id;
      if (has('bad-id')) {
        id = badUsedId(queue.size);
        log?.(
          `${where(requestNo, queue)}: bad-id: used.id ${id} (queue size ${queue.size}) instead of head ${chain.id}`,
        );
      } else if (has('not-head')) {
        id = notHeadUsedId(chain.secondDescriptor, queue.size);
        const what =
          chain.secondDescriptor === undefined
            ? 'the chain is one ring descriptor, so the queue size'
            : 'a descriptor inside the chain';
        log?.(`${where(requestNo, queue)}: not-head: used.id ${id} (${what}) instead of head ${chain.id}`);
      }
      let length = written;
      if (has('bad-len')) {
        length = badUsedLength(chain.writableBytes);
        log?.(
          `${where(requestNo, queue)}: bad-len: used.len ${length}, the chain has ${chain.writableBytes} writable bytes`,
        );
      }
      queue.pushRaw(id, length);
      if (has('dup')) {
        log?.(`${where(requestNo, queue)}: dup: head ${id} completed twice`);
        queue.pushRaw(id, length);
      }
    }
    this.scheduleNotify(queue);
    for (const f of faults) {
      // After the completion is published (the notify microtask queued above runs first).
      if (f.kind === 'resize') {
        queueMicrotask(() => {
          try {
            this.resize(f.bytes);
          } catch (error) {
            // A broken device refuses the ioctls: say so and go on serving, as faulty-blk does.
            this.options.log?.(`resize to ${f.bytes} bytes: ${(error as Error).message}`);
          }
        });
      }
    }
  }

  /** Changes the capacity in the config space and raises the config interrupt. */
  resize(bytes: number): void {
    this.options.store.resize(bytes);
    this.capacity = this.options.store.size;
    const raised = this.device?.updateConfig(0, encodeCapacity(this.capacity)) ?? false;
    this.options.log?.(
      `capacity is now ${this.capacity} bytes (${this.capacity / SECTOR} sectors); ` +
        (raised ? 'config interrupt sent' : 'no driver running: no config interrupt'),
    );
  }

  private inRange(offset: number, length: number): boolean {
    return (
      Number.isSafeInteger(offset) &&
      offset + length <= this.capacity &&
      offset + length <= this.options.store.size
    );
  }

  /**
   * Runs the request: returns its outcome, or undefined when the store works asynchronously and `settle`
   * will be called with it.
   */
  private execute(chain: DeviceChain, settle: (outcome: Outcome) => void): Outcome | undefined {
    // The 16-byte header is nearly always one buffer: read it in place (gather copies only a split one).
    const first = chain.readable[0] as Buffer;
    const header =
      first.length >= VIRTIO_BLK_OUTHDR_SIZE ? first : gather(chain.readable, 0, VIRTIO_BLK_OUTHDR_SIZE);
    const type = header.readUInt32LE(0);
    const offset = (header.readUInt32LE(8) + header.readUInt32LE(12) * 0x100000000) * SECTOR;
    const store = this.options.store;
    const ok = (dataWritten: number): Outcome => ({ status: VIRTIO_BLK_S_OK, dataWritten });
    const fail = (status: number): Outcome => ({ status, dataWritten: 0 });
    const after = (pending: Promise<void> | undefined, dataWritten: number): Outcome | undefined =>
      pending === undefined ? ok(dataWritten) : this.whenDone(pending, dataWritten, settle);
    switch (type) {
      case VIRTIO_BLK_T_IN: {
        const length = chain.writableBytes - 1;
        if (length % SECTOR !== 0 || !this.inRange(offset, length)) return fail(VIRTIO_BLK_S_IOERR);
        this.stats.reads++;
        return after(store.read(offset, sliceViews(chain.writable, 0, length)), length);
      }
      case VIRTIO_BLK_T_OUT: {
        const length = chain.readableBytes - VIRTIO_BLK_OUTHDR_SIZE;
        if (this.options.readOnly || length % SECTOR !== 0 || !this.inRange(offset, length))
          return fail(VIRTIO_BLK_S_IOERR);
        this.stats.writes++;
        return after(store.write(offset, sliceViews(chain.readable, VIRTIO_BLK_OUTHDR_SIZE, length)), 0);
      }
      case VIRTIO_BLK_T_FLUSH:
        return after(store.flush(), 0);
      case VIRTIO_BLK_T_GET_ID: {
        const n = Math.min(VIRTIO_BLK_ID_BYTES, chain.writableBytes - 1);
        let at = 0;
        for (const view of sliceViews(chain.writable, 0, n)) {
          this.serial.copy(view, 0, at, at + view.length);
          at += view.length;
        }
        return ok(n);
      }
      case VIRTIO_BLK_T_DISCARD:
      case VIRTIO_BLK_T_WRITE_ZEROES: {
        const result = this.discardOrZero(chain, type);
        return result instanceof Promise ? this.whenDone(result, 0, settle) : result;
      }
      default:
        return fail(VIRTIO_BLK_S_UNSUPP);
    }
  }

  /** An outcome now, or the store's pending work (OK once it resolves). */
  private discardOrZero(chain: DeviceChain, type: number): Outcome | Promise<void> {
    const fail = (status: number): Outcome => ({ status, dataWritten: 0 });
    if (this.options.readOnly) return fail(VIRTIO_BLK_S_IOERR);
    const bytes = chain.readableBytes - VIRTIO_BLK_OUTHDR_SIZE;
    if (bytes !== VIRTIO_BLK_DWZ_SIZE) return fail(VIRTIO_BLK_S_UNSUPP); // max_discard_seg = max_write_zeroes_seg = 1
    const segment = gather(chain.readable, VIRTIO_BLK_OUTHDR_SIZE, VIRTIO_BLK_DWZ_SIZE);
    const offset = Number(segment.readBigUInt64LE(0)) * SECTOR;
    const sectors = segment.readUInt32LE(8);
    const flags = segment.readUInt32LE(12);
    const allowedFlags = type === VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    if ((flags & ~allowedFlags) !== 0) return fail(VIRTIO_BLK_S_UNSUPP);
    if (sectors > BLK_MAX_DISCARD_SECTORS || !this.inRange(offset, sectors * SECTOR))
      return fail(VIRTIO_BLK_S_IOERR);
    const store = this.options.store;
    const pending =
      type === VIRTIO_BLK_T_DISCARD
        ? store.discard(offset, sectors * SECTOR)
        : store.writeZeroes(offset, sectors * SECTOR);
    return pending ?? { status: VIRTIO_BLK_S_OK, dataWritten: 0 };
  }
}
