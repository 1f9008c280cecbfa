/**
 * The driver side of a split virtqueue (virtio 1.x §2.7) living in DMA memory.
 *
 * Everything on the submit/complete path is a typed-array access into the
 * ring memory: no per-request crossing into C++, no allocation. The device is
 * trusted for nothing: every id and length it writes into the used ring is
 * checked against the driver's own (shadow) bookkeeping, and the free list is
 * kept in JavaScript memory the device cannot write.
 *
 * ## Memory ordering
 *
 * The ring is shared with a device running concurrently (a kernel thread for
 * vdpa_sim, another process for VDUSE, hardware). Three orderings matter:
 *
 * 1. **Publish (store→store)**: descriptors and avail-ring entries must be
 *    visible before the avail index that exposes them.
 * 2. **Consume (load→load)**: the used index must be read before the used
 *    entries (and the request memory, e.g. the status byte) it covers.
 * 3. **Notification checks (store→load)**: after publishing the avail index
 *    the driver reads the device's suppression hint (VRING_USED_F_NO_NOTIFY or
 *    avail_event); after writing used_event it re-reads the used index. If the
 *    load could pass the store, driver and device could both decide the other
 *    will act and a kick or an interrupt would be lost (the classic virtio race
 *    that Linux closes with virtio_mb()).
 *
 * JavaScript gives us no fence, but it gives us `Atomics`. ECMAScript allows
 * Atomics.load/store on integer typed arrays over a *non-shared* ArrayBuffer
 * (only wait/notify require a SharedArrayBuffer), and V8 implements them with
 * the same sequentially consistent machine operations either way
 * (builtins-sharedarraybuffer-gen.cc: ValidateIntegerTypedArray, then
 * AtomicStore/AtomicLoad with kSeqCst): on x86-64 a seq-cst store is `xchg`
 * (a full barrier) and a load a plain `mov`; on arm64 a store is `stlr`
 * (release) and a load `ldar` (acquire). So:
 *
 * - the avail index is written with Atomics.store: on x86-64 ordinary stores
 *   are never reordered with each other (TSO) and V8 emits typed-array stores
 *   in program order (they are chained on the effect chain), and `xchg` is
 *   itself a barrier; on arm64 `stlr` orders every earlier store before it (1);
 * - the used index is read with Atomics.load: on x86-64 loads are not
 *   reordered with loads; on arm64 `ldar` orders every later load after it (2).
 *   Atomics.load also keeps the optimizing compiler from hoisting the read out
 *   of a polling loop, which a plain load of memory V8 believes unshared could be;
 * - store→load (3) pairs Atomics.store with Atomics.load: `xchg` drains the
 *   store buffer on x86-64, and on arm64 an `stlr` followed by an `ldar` is
 *   never reordered (RCsc).
 *
 * This is an argument about V8's code generation, not a guarantee of the
 * ECMAScript memory model (which says nothing about agents outside JavaScript);
 * the unit tests check that Atomics keeps working on DMA memory so a V8 change
 * that broke the premise would fail loudly. Each Atomics call costs one
 * builtin call (tens of ns), so they are used per batch and per collect, never
 * per descriptor.
 */
import { ErrorCodes, VdpaError } from '../errors';
import {
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  VringAddresses,
} from '../uapi';
import {
  alignUp,
  CACHE_LINE,
  checkIndirectEntries,
  needEvent,
  VIRTQUEUE_MAX_SIZE,
  VirtqueueBase,
  VirtqueueBaseOptions,
  VRING_DESC_SIZE,
} from './chain';
import type { Virtqueue } from './types';

export type { VirtqueueStats } from './types';
export { ERR_QUEUE_CORRUPT, VIRTQUEUE_MAX_SIZE, VRING_DESC_SIZE } from './chain';

/** Byte offsets of a split ring's parts inside its memory, from {@link splitRingLayout}. */
export interface SplitRingLayout {
  /** Descriptor table (16-byte aligned). */
  desc: number;
  /** Available ring: flags, idx, ring[size], used_event. */
  avail: number;
  /** Used ring: flags, idx, ring[size] of {id, len}, avail_event (own cache line). */
  used: number;
  /** Indirect descriptor tables, one per descriptor slot (absent when 0 entries). */
  indirect: number;
  /** Descriptors per indirect table. */
  indirectEntries: number;
  /** Total bytes. */
  bytes: number;
}

/**
 * Where the parts of a split ring of `size` entries go. The used ring starts a
 * new cache line so the device's writes do not share a line with the driver's.
 * With `indirectEntries` > 0, one indirect table per descriptor slot follows:
 * a chain headed by descriptor `h` uses table `h`, so tables need no allocator.
 */
export function splitRingLayout(size: number, indirectEntries = 0): SplitRingLayout {
  checkSize(size);
  checkIndirectEntries(size, indirectEntries);
  const desc = 0;
  const avail = desc + VRING_DESC_SIZE * size;
  const used = alignUp(avail + 4 + 2 * size + 2, CACHE_LINE);
  const indirect = alignUp(used + 4 + 8 * size + 2, CACHE_LINE);
  const bytes = indirect + (indirectEntries > 0 ? size * indirectEntries * VRING_DESC_SIZE : 0);
  return { desc, avail, used, indirect, indirectEntries, bytes };
}

function checkSize(size: number): void {
  if (!Number.isInteger(size) || size < 1 || size > VIRTQUEUE_MAX_SIZE || (size & (size - 1)) !== 0) {
    throw new VdpaError(
      `split virtqueue size must be a power of two in [1, ${VIRTQUEUE_MAX_SIZE}], got ${String(size)}`,
      { code: ErrorCodes.INVALID_ARG },
    );
  }
}

/** Options for {@link SplitVirtqueue}. */
export interface SplitVirtqueueOptions extends VirtqueueBaseOptions {
  /** Number of descriptors: a power of two ≤ 32768. */
  size: number;
  /** The memory holding the ring (a DmaRegion's buffer), laid out by {@link splitRingLayout}. */
  memory: ArrayBuffer;
}

/**
 * A split virtqueue, driver side. Chains are built with
 * {@link begin}/{@link push}/{@link end}, made visible with one
 * {@link publish} per batch, and completions are consumed with {@link collect}.
 * `T` is the caller's token for a chain, handed back on completion. A chain's
 * index is its head descriptor. The format-independent half (checks, records,
 * getters) is {@link VirtqueueBase}.
 */
export class SplitVirtqueue<T> extends VirtqueueBase<T> implements Virtqueue<T> {
  /** Ring format. */
  readonly format = 'split' as const;
  /** IOVAs of the three parts, for VHOST_SET_VRING_ADDR. */
  readonly addresses: VringAddresses;
  /** VHOST_SET_VRING_BASE for a new or reset split ring: the next avail index, 0. */
  readonly vringBase = 0;

  readonly #mask: number;
  // Ring memory, as seen by the device.
  readonly #avail16: Uint16Array;
  readonly #used16: Uint16Array;
  readonly #used32: Uint32Array;
  readonly #usedEventAt: number;
  readonly #availEventAt: number;
  // Shadow state in JavaScript memory: the device cannot corrupt it.
  readonly #next: Uint16Array;
  #freeHead = 0;
  #availIdx = 0;
  #publishedIdx = 0;
  #lastUsed = 0;
  // The last descriptor written of the chain being built (ring or indirect table entry).
  #last = -1;

  constructor(options: SplitVirtqueueOptions) {
    const { size, memory, byteOffset, iova } = options;
    const indirectEntries = options.indirectEntries ?? 0;
    const layout = splitRingLayout(size, indirectEntries);
    super(options, layout, 'ring');
    this.#mask = size - 1;
    this.#avail16 = new Uint16Array(memory, byteOffset + layout.avail, 3 + size);
    this.#used16 = new Uint16Array(memory, byteOffset + layout.used, 3 + 4 * size);
    this.#used32 = new Uint32Array(memory, byteOffset + layout.used, 1 + 2 * size);
    this.#usedEventAt = 2 + size;
    this.#availEventAt = 2 + 4 * size;
    this.addresses = {
      desc: BigInt(iova + layout.desc),
      avail: BigInt(iova + layout.avail),
      used: BigInt(iova + layout.used),
    };
    this.#next = new Uint16Array(size);
    this.reset();
  }

  /** Chains added but not yet exposed by {@link publish}. */
  get unpublished(): number {
    return (this.#availIdx - this.#publishedIdx) & 0xffff;
  }

  /** The chain is headed by the first free descriptor. */
  protected startChain(indirect: boolean): number {
    const head = this.#freeHead;
    this.#last = -1;
    if (indirect) {
      // The head is the only ring descriptor; its table is table `head`.
      this.#freeHead = this.#next[head];
    }
    return head;
  }

  protected writeDescriptor(iova: number, length: number, deviceWritable: boolean): void {
    const flags = (deviceWritable ? VRING_DESC_F_WRITE : 0) | VRING_DESC_F_NEXT;
    if (this.chainIndirect) {
      const entry = this.chain * this.indirectEntries + this.count;
      const w = entry * 4;
      this.indirect32[w] = iova >>> 0;
      this.indirect32[w + 1] = Math.floor(iova / 0x100000000);
      this.indirect32[w + 2] = length;
      this.indirect16[entry * 8 + 6] = flags;
      this.indirect16[entry * 8 + 7] = this.count + 1;
      this.#last = entry;
    } else {
      // Chains follow the free list, so `next` is already the free list's link.
      const d = this.#freeHead;
      this.#freeHead = this.#next[d];
      const w = d * 4;
      this.desc32[w] = iova >>> 0;
      this.desc32[w + 1] = Math.floor(iova / 0x100000000);
      this.desc32[w + 2] = length;
      this.desc16[d * 8 + 6] = flags;
      this.desc16[d * 8 + 7] = this.#next[d];
      this.#last = d;
    }
  }

  /** Ends the chain's last descriptor (and points the head at its table) and places it in the avail ring. */
  protected closeChain(head: number): number {
    let length: number;
    if (this.chainIndirect) {
      this.indirect16[this.#last * 8 + 6] &= ~VRING_DESC_F_NEXT;
      const table = this.indirectIova + head * this.indirectEntries * VRING_DESC_SIZE;
      const w = head * 4;
      this.desc32[w] = table >>> 0;
      this.desc32[w + 1] = Math.floor(table / 0x100000000);
      this.desc32[w + 2] = this.count * VRING_DESC_SIZE;
      this.desc16[head * 8 + 6] = VRING_DESC_F_INDIRECT;
      this.desc16[head * 8 + 7] = 0;
      length = 1;
    } else {
      this.desc16[this.#last * 8 + 6] &= ~VRING_DESC_F_NEXT;
      length = this.count;
    }
    this.#avail16[2 + (this.#availIdx & this.#mask)] = head;
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    return length;
  }

  /**
   * Makes every chain added since the last publish visible to the device and
   * notifies it unless it asked not to be (VRING_USED_F_NO_NOTIFY, or with
   * EVENT_IDX the avail_event it wrote). One call per batch: one kick at most.
   * Returns true when the device was notified.
   */
  publish(): boolean {
    const old = this.#publishedIdx;
    const now = this.#availIdx;
    if (old === now) return false;
    // Release: descriptors and ring entries (plain stores above) before the index. See the module comment.
    Atomics.store(this.#avail16, 1, now);
    this.#publishedIdx = now;
    this.stats.publishes++;
    // Store→load: the suppression hint must be read after the index is visible.
    let kick: boolean;
    if (this.eventIdx) {
      const event = Atomics.load(this.#used16, this.#availEventAt);
      // vring_need_event(): notify when avail_event lies in [old, now).
      kick = needEvent(event, now, old);
    } else {
      kick = (Atomics.load(this.#used16, 0) & VRING_USED_F_NO_NOTIFY) === 0;
    }
    return this.kickIf(kick);
  }

  /**
   * Asks the device for (or to stop) interrupts on completions: avail flag
   * VRING_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX the used_event index. Only a
   * hint — devices may interrupt anyway. Polling drivers turn interrupts off.
   */
  setInterrupts(enabled: boolean): void {
    this.interrupts = enabled;
    if (this.eventIdx) {
      this.#avail16[this.#usedEventAt] = enabled ? this.#lastUsed : (this.#lastUsed + 0x8000) & 0xffff;
    } else {
      this.#avail16[0] = enabled ? 0 : VRING_AVAIL_F_NO_INTERRUPT;
    }
  }

  /** True when the device has completed chains not yet collected (one atomic load). */
  hasCompletions(): boolean {
    return this.brokenBy === undefined && Atomics.load(this.#used16, 1) !== this.#lastUsed;
  }

  /**
   * Consumes every used entry, checking each against the driver's records,
   * frees its descriptors and calls `onUsed(token, length)`. With EVENT_IDX and
   * interrupts on, re-arms used_event and re-checks so no completion is missed.
   * Returns the number of completions.
   * @throws VdpaError `ERR_QUEUE_CORRUPT` when the device wrote an impossible
   *   used index, id or length; the queue is then unusable (see {@link broken})
   *   and the offending entry is not handed to `onUsed`.
   */
  collect(onUsed: (token: T, length: number) => void): number {
    if (this.brokenBy !== undefined) throw this.brokenBy;
    let total = 0;
    for (;;) {
      // Acquire: entries (and the buffers they describe) are read after the index.
      const usedIdx = Atomics.load(this.#used16, 1);
      let pending = (usedIdx - this.#lastUsed) & 0xffff;
      if (pending === 0) {
        if (this.eventIdx) {
          const event = this.interrupts ? this.#lastUsed : (this.#lastUsed + 0x8000) & 0xffff;
          // Store→load: re-arm, then re-check so a completion that raced the
          // re-arm is collected now rather than waiting for an interrupt that
          // the device decided not to send.
          Atomics.store(this.#avail16, this.#usedEventAt, event);
          if (this.interrupts && Atomics.load(this.#used16, 1) !== this.#lastUsed) continue;
        }
        return total;
      }
      if (pending > this.chainsInFlight) {
        this.corrupt(
          `used index moved from ${this.#lastUsed} to ${usedIdx} (${pending} entries) ` +
            `but only ${this.chainsInFlight} chains are in flight`,
        );
      }
      while (pending > 0) {
        const slot = this.#lastUsed & this.#mask;
        const id = this.#used32[1 + 2 * slot];
        const length = this.#used32[2 + 2 * slot];
        if (id >= this.size || this.active[id] === 0) {
          this.corrupt(
            `used ring entry ${this.#lastUsed} names descriptor ${id}, which is ` +
              (id >= this.size
                ? `outside the ${this.size}-entry table`
                : 'not the head of a chain in flight'),
          );
        }
        if (length > this.writable[id]) {
          this.corrupt(
            `used ring entry ${this.#lastUsed} reports ${length} bytes written to chain ${id}, ` +
              `which has only ${this.writable[id]} device-writable bytes`,
          );
        }
        const token = this.tokens[id] as T;
        this.#release(id);
        this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
        pending--;
        total++;
        this.stats.completions++;
        onUsed(token, length);
      }
    }
  }

  /**
   * Forgets every chain (after the device was reset, or the queue broke) and
   * returns their tokens so the caller can fail them. The ring is empty and
   * reusable after the device is set up again.
   */
  reset(): T[] {
    const orphans = this.resetChains();
    for (let i = 0; i < this.size; i++) this.#next[i] = (i + 1) & this.#mask;
    this.#freeHead = 0;
    this.#availIdx = 0;
    this.#publishedIdx = 0;
    this.#lastUsed = 0;
    this.#avail16.fill(0);
    this.#used16.fill(0);
    this.setInterrupts(this.interrupts);
    return orphans;
  }

  /** Returns a chain's descriptors to the free list (they are consecutive on it). */
  #release(head: number): void {
    const count = this.chainLength[head];
    let last = head;
    for (let i = 1; i < count; i++) last = this.#next[last];
    this.#next[last] = this.#freeHead;
    this.#freeHead = head;
    this.freeCount += count;
    this.active[head] = 0;
    this.tokens[head] = undefined;
    this.chainsInFlight--;
  }
}
