/**
 * What the device side of the split (device-split.ts) and packed
 * (device-packed.ts) rings share: the pooled chain records handed to the
 * device, the checks every buffer descriptor gets wherever it sits (ring or
 * indirect table), push()'s bookkeeping, and re-resolving the ring memory when
 * the IOTLB changed. Everything that reads or writes ring memory — and so
 * every memory-ordering argument — stays in the two format files.
 */
import { ErrorCodes, VdpaError } from '../errors';
import { VRING_DESC_F_WRITE } from '../uapi';
import type { DeviceChain, DeviceQueueOptions, DeviceQueueState } from './device-queue';
import type { DriverMemory } from './driver-memory';

/** Default cap on the buffers of one chain (QEMU's VIRTQUEUE_MAX_SIZE): more is "too long". */
export const DEFAULT_MAX_SEGMENTS = 1024;

/**
 * A chain as handed out by pop(). Records are pooled per queue and reused
 * after push(): the segment arrays are emptied, not reallocated.
 */
export class ChainRecord implements DeviceChain {
  id = 0;
  readonly readable: Buffer[] = [];
  readonly writable: Buffer[] = [];
  readableBytes = 0;
  writableBytes = 0;
  error: VdpaError | undefined = undefined;
  /** Ring descriptors the chain occupies (packed: how far push() moves the used slot). */
  descriptors = 0;
  secondDescriptor: number | undefined = undefined;
  /** Buffers described so far (ring and indirect). */
  segments = 0;
  /** Popped and not yet pushed. */
  inFlight = false;

  constructor(readonly owner: DeviceQueueBase) {}

  reset(id: number): void {
    this.id = id;
    this.readable.length = 0;
    this.writable.length = 0;
    this.readableBytes = 0;
    this.writableBytes = 0;
    this.error = undefined;
    this.descriptors = 0;
    this.secondDescriptor = undefined;
    this.segments = 0;
  }
}

/**
 * The format-independent half of a device-side queue: options, the chain
 * pool, buffer checks, push() bookkeeping.
 */
export abstract class DeviceQueueBase {
  abstract readonly format: 'split' | 'packed';
  readonly index: number;
  readonly size: number;
  protected readonly memory: DriverMemory;
  protected readonly eventIdx: boolean;
  protected readonly indirect: boolean;
  protected readonly maxSegments: number;
  protected readonly descIova: number;
  protected readonly driverIova: number;
  protected readonly deviceIova: number;
  protected chainsInFlight = 0;
  #pool: ChainRecord[] = [];
  #generation = -1;

  protected constructor(options: DeviceQueueOptions) {
    this.index = options.index;
    this.size = options.size;
    this.memory = options.memory;
    this.eventIdx = options.eventIdx;
    this.indirect = options.indirect;
    this.maxSegments = options.maxSegments ?? DEFAULT_MAX_SEGMENTS;
    this.descIova = options.descIova;
    this.driverIova = options.driverIova;
    this.deviceIova = options.deviceIova;
    if (!Number.isInteger(this.maxSegments) || this.maxSegments < 1) {
      throw new VdpaError(`maxSegments must be a positive integer, got ${String(options.maxSegments)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    for (let i = 0; i < this.size; i++) this.#pool.push(new ChainRecord(this));
  }

  /** Chains popped and not yet pushed. */
  get inFlight(): number {
    return this.chainsInFlight;
  }

  abstract state(): DeviceQueueState;

  /**
   * Maps the ring structures again from the driver memory (the IOTLB changed).
   * @throws VdpaError `ERR_QUEUE_CORRUPT` when a ring structure is unmapped,
   *   lacks the permission, or is misaligned.
   */
  protected abstract mapRings(): void;

  /** Re-maps the rings when the driver memory changed since the last call (one compare otherwise). */
  protected checkRings(): void {
    if (this.memory.generation !== this.#generation) {
      this.mapRings();
      this.#generation = this.memory.generation;
    }
  }

  /**
   * A typed-array-ready view of ring structure `what` at `iova`: in one range,
   * with the `access` the device needs, aligned to `align` in its ArrayBuffer.
   */
  protected ringView(
    what: string,
    iova: number,
    bytes: number,
    access: 'read' | 'write' | 'read-write',
    align: number,
  ): Buffer {
    const view = this.memory.view(iova, bytes, access !== 'read');
    if (
      view === undefined ||
      (access === 'read-write' && this.memory.view(iova, bytes, false) === undefined)
    ) {
      this.corrupt(
        `the ${what} (${bytes} bytes at IOVA 0x${iova.toString(16)}) is not mapped ` +
          `${access === 'read' ? 'readable' : access === 'write' ? 'writable' : 'readable and writable'} ` +
          'in one IOTLB range',
      );
    }
    if (iova % align !== 0 || view.byteOffset % align !== 0) {
      this.corrupt(`the ${what} at IOVA 0x${iova.toString(16)} is not ${align}-byte aligned`);
    }
    return view;
  }

  /** Throws the error of a ring the device cannot use (it then sets NEEDS_RESET). */
  protected corrupt(message: string): never {
    throw new VdpaError(
      `device queue ${this.index}: ${message}; the queue is unusable until the driver resets the device`,
      { code: ErrorCodes.QUEUE_CORRUPT },
    );
  }

  /** A record from the pool (a new one if a driver made more chains available than the ring holds). */
  protected takeChain(id: number): ChainRecord {
    const chain = this.#pool.pop() ?? new ChainRecord(this);
    chain.reset(id);
    chain.inFlight = true;
    this.chainsInFlight++;
    return chain;
  }

  /**
   * Marks `chain` malformed: its views are dropped (the device must not touch
   * them) and it still has to be pushed. Returns false for `return fail(…)`.
   */
  protected fail(chain: ChainRecord, message: string): false {
    chain.readable.length = 0;
    chain.writable.length = 0;
    chain.readableBytes = 0;
    chain.writableBytes = 0;
    chain.error = new VdpaError(`device queue ${this.index}, chain ${chain.id}: ${message}`, {
      code: ErrorCodes.QUEUE_CORRUPT,
    });
    return false;
  }

  /**
   * Adds one buffer descriptor's memory to `chain`; returns false (and marks
   * the chain) for a readable buffer after a writable one, a chain too long,
   * or memory not mapped with the permission.
   */
  protected addBuffer(
    chain: ChainRecord,
    addrLow: number,
    addrHigh: number,
    length: number,
    flags: number,
  ): boolean {
    const deviceWrites = (flags & VRING_DESC_F_WRITE) !== 0;
    if (!deviceWrites && chain.writableBytes > 0) {
      return this.fail(chain, 'a device-readable buffer follows a device-writable one');
    }
    if (++chain.segments > this.maxSegments) {
      return this.fail(chain, `more than ${this.maxSegments} buffers (too long, or a loop)`);
    }
    // An address above 2^53 is not a safe integer: views() finds no range for it.
    const iova = addrHigh * 0x100000000 + addrLow;
    const out = deviceWrites ? chain.writable : chain.readable;
    if (!this.memory.views(iova, length, deviceWrites, out)) {
      return this.fail(
        chain,
        `buffer at IOVA 0x${iova.toString(16)} (${length} bytes) is not mapped ` +
          `${deviceWrites ? 'device-writable' : 'device-readable'}`,
      );
    }
    if (deviceWrites) chain.writableBytes += length;
    else chain.readableBytes += length;
    return true;
  }

  /**
   * The checks of push(): `chain` is this queue's and in flight, `written`
   * fits its writable bytes. Returns the record, released to the pool.
   */
  protected release(chain: DeviceChain, written: number): ChainRecord {
    const record = chain as ChainRecord;
    if (!(record instanceof ChainRecord) || record.owner !== this || !record.inFlight) {
      throw new VdpaError(
        `push() of a chain that queue ${this.index} did not pop or that was already pushed`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    if (!Number.isInteger(written) || written < 0 || written > record.writableBytes || written > 0xffffffff) {
      throw new VdpaError(
        `push(): ${String(written)} bytes written, chain ${record.id} has ${record.writableBytes} device-writable ` +
          'bytes (use pushRaw() to report an impossible length on purpose)',
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    record.inFlight = false;
    this.chainsInFlight--;
    if (this.#pool.length < this.size) this.#pool.push(record);
    return record;
  }
}
