/**
 * What the split ({@link SplitVirtqueue}) and packed ({@link PackedVirtqueue})
 * rings share, whatever their layout in memory: argument checks, the counters
 * and getters, the begin()/push()/end() protocol (how many buffers a chain
 * announced, whether it goes out indirect, its device-writable bytes), the
 * per-chain records collect() checks the device against (length, writable
 * bytes, in flight, token), and how a queue breaks.
 *
 * {@link VirtqueueBase} drives a chain top to bottom and calls one
 * format-specific hook per step ({@link VirtqueueBase.startChain},
 * {@link VirtqueueBase.writeDescriptor}, {@link VirtqueueBase.closeChain});
 * everything touching ring memory — and so every memory-ordering argument —
 * stays in split.ts and packed.ts. Nothing here allocates per request.
 */
import { ErrorCodes, VdpaError } from '../errors';
import type { VringAddresses } from '../uapi';
import type { VirtqueueFormat, VirtqueueStats } from './types';

/** sizeof(struct vring_desc) (and of a packed ring descriptor). */
export const VRING_DESC_SIZE = 16;
/** Largest ring size the virtio spec allows. */
export const VIRTQUEUE_MAX_SIZE = 32768;
/** Error code of a queue whose used ring the device corrupted: `ErrorCodes.QUEUE_CORRUPT`, kept as a public name. */
export const ERR_QUEUE_CORRUPT = ErrorCodes.QUEUE_CORRUPT;

export const CACHE_LINE = 64;
export const alignUp = (value: number, to: number): number => Math.ceil(value / to) * to;

/** Throws unless `indirectEntries` is a valid indirect table size for a ring of `size`. */
export function checkIndirectEntries(size: number, indirectEntries: number): void {
  if (!Number.isInteger(indirectEntries) || indirectEntries < 0 || indirectEntries > size) {
    throw new VdpaError(
      `indirect table size must be an integer in [0, ${size}], got ${String(indirectEntries)}`,
      { code: ErrorCodes.INVALID_ARG },
    );
  }
}

/** vring_need_event(): true when the event index lies in [old, now) (16-bit wrap-around). */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}

/** The parts of a ring layout both formats have ({@link SplitRingLayout}, {@link PackedRingLayout}). */
export interface RingLayout {
  /** Byte offset of the descriptors. */
  desc: number;
  /** Byte offset of the indirect tables. */
  indirect: number;
  /** Total bytes. */
  bytes: number;
}

/** The options both ring formats take ({@link SplitVirtqueueOptions}, {@link PackedVirtqueueOptions}). */
export interface VirtqueueBaseOptions {
  /** Queue index (for messages and VHOST_SET_VRING_*). */
  index: number;
  /** Number of descriptors. */
  size: number;
  /** The memory holding the ring (a DmaRegion's buffer), laid out by the format's layout function. */
  memory: ArrayBuffer;
  /** Byte offset of the ring inside `memory`; a multiple of 64. */
  byteOffset: number;
  /** IOVA at which the device sees `byteOffset`. */
  iova: number;
  /** Descriptors per indirect table; 0 (default) when VIRTIO_F_RING_INDIRECT_DESC is not negotiated. */
  indirectEntries?: number;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx?: boolean;
  /** Notifies the device (kick eventfd or doorbell). Called at most once per publish(). */
  notify: () => void;
}

/**
 * The format-independent half of a driver-side virtqueue. `T` is the caller's
 * token for a chain. Chains are identified by an index in [0, size) — the split
 * ring's head descriptor, the packed ring's buffer id — which keys the records.
 */
export abstract class VirtqueueBase<T> {
  /** Ring format. */
  abstract readonly format: VirtqueueFormat;
  /** IOVAs for VHOST_SET_VRING_ADDR (see {@link Virtqueue.addresses}). */
  abstract readonly addresses: VringAddresses;
  /** Queue index. */
  readonly index: number;
  /** Number of descriptors. */
  readonly size: number;
  /** Descriptors per indirect table (0 = indirect descriptors not used). */
  readonly indirectEntries: number;
  /** VIRTIO_F_RING_EVENT_IDX in use. */
  readonly eventIdx: boolean;
  /** Counters (monotonic). */
  readonly stats: VirtqueueStats = {
    chains: 0,
    indirectChains: 0,
    publishes: 0,
    kicks: 0,
    kicksSuppressed: 0,
    completions: 0,
  };

  protected readonly notify: () => void;
  // Ring memory both formats have, as seen by the device: the descriptors
  // (split: table; packed: ring) and one indirect table per chain index.
  protected readonly desc32: Uint32Array;
  protected readonly desc16: Uint16Array;
  protected readonly indirect32: Uint32Array;
  protected readonly indirect16: Uint16Array;
  /** IOVA of indirect table 0; table `i` follows at `i * indirectEntries` descriptors. */
  protected readonly indirectIova: number;
  // Shadow state in JavaScript memory, per chain index: the device cannot corrupt it.
  /** Ring descriptors the chain occupies. */
  protected readonly chainLength: Uint16Array;
  /** Device-writable bytes of the chain (the most a used length may report). */
  protected readonly writable: Float64Array;
  /** 1 while the chain is in flight. */
  protected readonly active: Uint8Array;
  protected readonly tokens: (T | undefined)[];
  /** Free ring descriptors ({@link numFree}). */
  protected freeCount: number;
  /** Chains ended and not completed ({@link inFlight}). */
  protected chainsInFlight = 0;
  protected interrupts = true;
  protected brokenBy: VdpaError | undefined;
  // The chain being built: its index (-1 when none is open), buffers pushed
  // of those announced, device-writable bytes so far, and whether it goes out
  // as an indirect table.
  protected chain = -1;
  protected count = 0;
  protected expected = 0;
  protected chainWritable = 0;
  protected chainIndirect = false;

  /**
   * Checks the placement of a ring laid out as `layout` (`ring` names it in
   * messages), maps the descriptors and indirect tables, and sets up the
   * shared records. The size and indirect table size were checked by the
   * layout function.
   */
  protected constructor(options: VirtqueueBaseOptions, layout: RingLayout, ring: string) {
    const { size, memory, byteOffset, iova } = options;
    const { bytes } = layout;
    if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % CACHE_LINE !== 0) {
      throw new VdpaError(`ring byte offset must be a non-negative multiple of ${CACHE_LINE}`, {
        code: ErrorCodes.MISALIGNED,
      });
    }
    if (byteOffset + bytes > memory.byteLength) {
      throw new VdpaError(
        `a ${size}-entry ${ring} needs ${bytes} bytes at offset ${byteOffset}; the memory has ${memory.byteLength}`,
        { code: ErrorCodes.OUT_OF_RANGE },
      );
    }
    if (!Number.isSafeInteger(iova) || iova < 0 || iova % CACHE_LINE !== 0) {
      throw new VdpaError(`ring IOVA must be a non-negative safe integer, multiple of ${CACHE_LINE}`, {
        code: ErrorCodes.MISALIGNED,
      });
    }
    this.index = options.index;
    this.size = size;
    this.indirectEntries = options.indirectEntries ?? 0;
    this.eventIdx = options.eventIdx ?? false;
    this.notify = options.notify;
    this.desc32 = new Uint32Array(memory, byteOffset + layout.desc, size * 4);
    this.desc16 = new Uint16Array(memory, byteOffset + layout.desc, size * 8);
    const indirectWords = this.indirectEntries > 0 ? size * this.indirectEntries * 4 : 0;
    this.indirect32 = new Uint32Array(memory, byteOffset + layout.indirect, indirectWords);
    this.indirect16 = new Uint16Array(memory, byteOffset + layout.indirect, indirectWords * 2);
    this.indirectIova = iova + layout.indirect;
    this.chainLength = new Uint16Array(size);
    this.writable = new Float64Array(size);
    this.active = new Uint8Array(size);
    this.tokens = new Array<T | undefined>(size).fill(undefined);
    this.freeCount = size;
  }

  /** Free descriptors in the ring. */
  get numFree(): number {
    return this.freeCount;
  }

  /** Chains added and not yet completed. */
  get inFlight(): number {
    return this.chainsInFlight;
  }

  /** The error that broke this queue (a corrupt used ring), if any. */
  get broken(): VdpaError | undefined {
    return this.brokenBy;
  }

  /**
   * Ring descriptors a chain of `segments` buffers needs: 1 when it goes out
   * as an indirect table, otherwise one per segment.
   */
  descriptorsFor(segments: number): number {
    return segments > 1 && segments <= this.indirectEntries ? 1 : segments;
  }

  /** True when a chain of `segments` buffers fits now. */
  canAdd(segments: number): boolean {
    return this.brokenBy === undefined && this.descriptorsFor(segments) <= this.freeCount;
  }

  /**
   * Starts a chain of exactly `segments` buffers and returns its index
   * (stable until the chain completes: callers index per-request memory by
   * it). Returns -1 (and changes nothing) when the ring lacks free
   * descriptors: the caller waits for completions. Throws for a chain that can
   * never fit.
   */
  begin(segments: number): number {
    if (this.brokenBy !== undefined) throw this.brokenBy;
    if (this.chain >= 0)
      throw new VdpaError('begin() while a chain is open; call end() first', {
        code: ErrorCodes.INVALID_ARG,
      });
    const indirect = segments > 1 && segments <= this.indirectEntries;
    const needed = indirect ? 1 : segments;
    if (!Number.isInteger(segments) || segments < 1 || needed > this.size) {
      throw new VdpaError(
        `a chain of ${String(segments)} buffers cannot fit queue ${this.index} ` +
          `(${this.size} descriptors, indirect tables of ${this.indirectEntries})`,
        { code: ErrorCodes.OUT_OF_RANGE },
      );
    }
    if (needed > this.freeCount) return -1;
    this.chainIndirect = indirect;
    this.expected = segments;
    this.count = 0;
    this.chainWritable = 0;
    this.chain = this.startChain(indirect);
    return this.chain;
  }

  /** Adds one buffer (device-readable, or device-writable when `deviceWritable`) to the open chain. */
  push(iova: number, length: number, deviceWritable: boolean): void {
    if (this.count >= this.expected) {
      throw new VdpaError(`push() beyond the ${this.expected} buffers announced to begin()`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (deviceWritable) this.chainWritable += length;
    this.writeDescriptor(iova, length, deviceWritable);
    this.count++;
  }

  /**
   * Closes the chain (not yet visible to the device: see `publish()`) and
   * records it as in flight with `token`. Returns the index {@link begin}
   * returned.
   */
  end(token: T): number {
    const id = this.chain;
    if (id < 0 || this.count !== this.expected) {
      throw new VdpaError(`end() after ${this.count} of ${this.expected} buffers`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const length = this.closeChain(id);
    if (this.chainIndirect) this.stats.indirectChains++;
    this.chainLength[id] = length;
    this.freeCount -= length;
    this.writable[id] = this.chainWritable;
    this.active[id] = 1;
    this.tokens[id] = token;
    this.chainsInFlight++;
    this.chain = -1;
    this.stats.chains++;
    return id;
  }

  /** Tokens of the chains in flight (in index order), without changing anything. */
  inFlightTokens(): T[] {
    const tokens: T[] = [];
    for (let i = 0; i < this.size; i++) if (this.active[i] !== 0) tokens.push(this.tokens[i] as T);
    return tokens;
  }

  /**
   * Takes the ring descriptors (or the id) of a chain `begin()` accepted and
   * returns its index. Enough free descriptors were checked.
   */
  protected abstract startChain(indirect: boolean): number;

  /** Writes buffer number {@link count} of the open chain (into its indirect table when {@link chainIndirect}). */
  protected abstract writeDescriptor(iova: number, length: number, deviceWritable: boolean): void;

  /**
   * Terminates the open chain `id` in the ring (the indirect descriptor, or the
   * last NEXT flag) and queues it for publish(). Returns the ring descriptors
   * it occupies.
   */
  protected abstract closeChain(id: number): number;

  /** Notifies the device when `kick` (the publish() decision) and counts it either way; returns `kick`. */
  protected kickIf(kick: boolean): boolean {
    if (kick) {
      this.stats.kicks++;
      this.notify();
    } else {
      this.stats.kicksSuppressed++;
    }
    return kick;
  }

  /**
   * The shared half of reset(): forgets every chain and the open one, unbreaks
   * the queue, and returns the orphaned tokens (in index order).
   */
  protected resetChains(): T[] {
    const orphans: T[] = [];
    for (let i = 0; i < this.size; i++) {
      if (this.active[i] !== 0) orphans.push(this.tokens[i] as T);
      this.active[i] = 0;
      this.tokens[i] = undefined;
    }
    this.freeCount = this.size;
    this.chainsInFlight = 0;
    this.chain = -1;
    this.brokenBy = undefined;
    return orphans;
  }

  /** Breaks the queue: `broken` is set and thrown now and by every later call. */
  protected corrupt(message: string): never {
    this.brokenBy = new VdpaError(
      `virtqueue ${this.index}: ${message}; the queue is unusable until the device is reset`,
      { code: ErrorCodes.QUEUE_CORRUPT },
    );
    throw this.brokenBy;
  }
}
