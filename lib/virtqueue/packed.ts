/**
 * The driver side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.1+
 * §2.8) living in DMA memory, with the same driver-facing surface as
 * {@link SplitVirtqueue} ({@link Virtqueue}).
 *
 * One ring of 16-byte descriptors {addr u64, len u32, id u16, flags u16} is
 * shared by both directions. The driver makes a descriptor available by
 * writing it at its next slot with flag bits AVAIL (7) = its avail wrap
 * counter and USED (15) = the inverse; the device returns a buffer by writing
 * one used descriptor (the buffer id, the bytes written, AVAIL = USED = its
 * used wrap counter) at its own next slot, then skipping the rest of that
 * buffer's descriptors. Both wrap counters start at 1 and flip at each lap.
 * Two 4-byte event suppression structures {off_wrap u16, flags u16}
 * (RING_EVENT_FLAGS_ENABLE / DISABLE / DESC) replace the split ring's flags
 * and event indices: the driver area is written by the driver (interrupts),
 * the device area by the device (kicks).
 *
 * Buffer ids are allocated from a free list in JavaScript memory, and every
 * used descriptor is checked against the driver's own records before
 * anything is released: an id out of range, not in flight, or completed twice,
 * or a length beyond the chain's writable bytes breaks the queue
 * (`ERR_QUEUE_CORRUPT`) rather than completing a wrong buffer. A chain of
 * n ring descriptors frees n slots when its id is used, whatever the device
 * wrote in the descriptors it skipped.
 *
 * ## Memory ordering
 *
 * The same three orderings as the split ring (see the module comment of
 * split.ts for why Atomics gives them on V8: seq-cst store = `xchg` on x86-64,
 * `stlr` on arm64; seq-cst load = `mov` / `ldar`), applied to descriptor flags:
 *
 * 1. **Publish**: every field of every descriptor of a chain is written with
 *    plain stores at push()/end(), except the head descriptor's flags, which
 *    make the chain available. publish() writes the deferred head flags of the
 *    batch in reverse order and the *first* chain's head flags last, with
 *    Atomics.store. The device consumes the ring in order, so it can reach any
 *    descriptor of the batch only after observing that first head; the release
 *    store orders every earlier store (all bodies, the later heads) before it.
 *    (Writing the later heads after the first with plain stores could let a
 *    later head be seen before its body on arm64.)
 * 2. **Consume**: collect() reads a slot's flags with Atomics.load (acquire)
 *    before its id and length and before the caller reads the buffers.
 * 3. **Notification checks (store→load)**: after the publishing Atomics.store
 *    the device event suppression structure is read with Atomics.load; after
 *    re-arming the driver event structure (one 32-bit Atomics.store of
 *    off_wrap and flags together) the next used slot's flags are re-read.
 */
import { ErrorCodes, VdpaError } from '../errors';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VringAddresses } from '../uapi';
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

/** Descriptor flag: available (bit 7), valid when ≠ USED for the driver's avail wrap counter. */
export const VRING_PACKED_DESC_F_AVAIL = 1 << 7;
/** Descriptor flag: used (bit 15). */
export const VRING_PACKED_DESC_F_USED = 1 << 15;
/** Event suppression flags: notifications enabled. */
export const VRING_PACKED_EVENT_FLAG_ENABLE = 0;
/** Event suppression flags: notifications disabled. */
export const VRING_PACKED_EVENT_FLAG_DISABLE = 1;
/** Event suppression flags: notify at the descriptor in off_wrap (needs EVENT_IDX). */
export const VRING_PACKED_EVENT_FLAG_DESC = 2;
/** Bit of off_wrap (and of the packed VHOST_SET_VRING_BASE halves) holding the wrap counter. */
export const VRING_PACKED_EVENT_F_WRAP_CTR = 15;
/** Size of a packed ring's event suppression structure. */
export const VRING_PACKED_EVENT_SIZE = 4;

/** Byte offsets of a packed ring's parts inside its memory, from {@link packedRingLayout}. */
export interface PackedRingLayout {
  /** Descriptor ring (16-byte aligned; at 0). */
  desc: number;
  /** Driver event suppression structure (4-byte aligned; written by the driver). */
  driver: number;
  /** Device event suppression structure (4-byte aligned, own cache line; written by the device). */
  device: number;
  /** Indirect descriptor tables, one per buffer id (absent when 0 entries). */
  indirect: number;
  /** Descriptors per indirect table. */
  indirectEntries: number;
  /** Total bytes. */
  bytes: number;
}

/**
 * Where the parts of a packed ring of `size` descriptors go: the descriptor
 * ring (16-byte aligned), the driver event suppression structure right after
 * it, the device's on its own cache line (4-byte alignment is all the spec
 * asks), then with `indirectEntries` > 0 one indirect table per buffer id.
 */
export function packedRingLayout(size: number, indirectEntries = 0): PackedRingLayout {
  if (!Number.isInteger(size) || size < 1 || size > VIRTQUEUE_MAX_SIZE) {
    throw new VdpaError(
      `packed virtqueue size must be an integer in [1, ${VIRTQUEUE_MAX_SIZE}], got ${String(size)}`,
      { code: ErrorCodes.INVALID_ARG },
    );
  }
  checkIndirectEntries(size, indirectEntries);
  const desc = 0;
  const driver = desc + VRING_DESC_SIZE * size;
  const device = alignUp(driver + VRING_PACKED_EVENT_SIZE, CACHE_LINE);
  const indirect = alignUp(device + VRING_PACKED_EVENT_SIZE, CACHE_LINE);
  const bytes = indirect + (indirectEntries > 0 ? size * indirectEntries * VRING_DESC_SIZE : 0);
  return { desc, driver, device, indirect, indirectEntries, bytes };
}

/** Options for {@link PackedVirtqueue}: those of {@link SplitVirtqueueOptions}, the memory laid out by {@link packedRingLayout}. */
export interface PackedVirtqueueOptions extends VirtqueueBaseOptions {
  /** Number of descriptors: an integer in [1, 32768]. */
  size: number;
  /** The memory holding the ring, laid out by {@link packedRingLayout}. */
  memory: ArrayBuffer;
  /** VIRTIO_F_RING_EVENT_IDX negotiated (enables RING_EVENT_FLAGS_DESC). */
  eventIdx?: boolean;
}

/**
 * A packed virtqueue, driver side. {@link begin} returns the chain's buffer
 * id, stable until the chain completes (the ring slots are not: they move on
 * every lap). The format-independent half (checks, records, getters) is
 * {@link VirtqueueBase}.
 */
export class PackedVirtqueue<T> extends VirtqueueBase<T> implements Virtqueue<T> {
  /** Ring format. */
  readonly format = 'packed' as const;
  /** IOVAs: `desc` = descriptor ring, `avail` = driver event area, `used` = device event area. */
  readonly addresses: VringAddresses;

  // Ring memory, as seen by the device.
  readonly #driverEvent32: Uint32Array;
  readonly #deviceEvent16: Uint16Array;
  // Shadow state in JavaScript memory: the device cannot corrupt it.
  readonly #freeIds: Uint16Array;
  #numFreeIds = 0;
  // Head slots and flags of chains ended but not published (in ring order).
  readonly #pendingSlot: Uint16Array;
  readonly #pendingFlags: Uint16Array;
  #pending = 0;
  #nextAvail = 0;
  #availWrap = 1;
  /** Descriptors made available since the last publish (for RING_EVENT_FLAGS_DESC). */
  #added = 0;
  #nextUsed = 0;
  #usedWrap = 1;
  // Where the flags of the chain's last non-head descriptor are (-1: only the head so far).
  #lastFlagsAt = -1;

  constructor(options: PackedVirtqueueOptions) {
    const { size, memory, byteOffset, iova } = options;
    const indirectEntries = options.indirectEntries ?? 0;
    const layout = packedRingLayout(size, indirectEntries);
    super(options, layout, 'packed ring');
    this.#driverEvent32 = new Uint32Array(memory, byteOffset + layout.driver, 1);
    this.#deviceEvent16 = new Uint16Array(memory, byteOffset + layout.device, 2);
    this.addresses = {
      desc: BigInt(iova + layout.desc),
      avail: BigInt(iova + layout.driver),
      used: BigInt(iova + layout.device),
    };
    this.#freeIds = new Uint16Array(size);
    this.#pendingSlot = new Uint16Array(size);
    this.#pendingFlags = new Uint16Array(size);
    this.reset();
  }

  /**
   * VHOST_SET_VRING_BASE for packed rings: the driver's next avail slot with
   * its wrap counter in bit 15, and the same for the used side in the upper 16
   * bits (vhost: last_avail_idx = num & 0xffff, last_used_idx = num >> 16).
   * 0x80008000 for a new or reset ring.
   */
  get vringBase(): number {
    const avail = this.#nextAvail | (this.#availWrap << VRING_PACKED_EVENT_F_WRAP_CTR);
    const used = this.#nextUsed | (this.#usedWrap << VRING_PACKED_EVENT_F_WRAP_CTR);
    return (avail + used * 0x10000) >>> 0;
  }

  get unpublished(): number {
    return this.#pending;
  }

  /** The chain takes a free buffer id. */
  protected startChain(): number {
    // Ids in flight never outnumber descriptors in flight, so a free descriptor implies a free id.
    this.#lastFlagsAt = -1;
    return this.#freeIds[--this.#numFreeIds];
  }

  protected writeDescriptor(iova: number, length: number, deviceWritable: boolean): void {
    const id = this.chain;
    if (this.chainIndirect) {
      // Indirect tables of a packed ring: no NEXT (the length gives the count), no AVAIL/USED.
      const entry = id * this.indirectEntries + this.count;
      const w = entry * 4;
      this.indirect32[w] = iova >>> 0;
      this.indirect32[w + 1] = Math.floor(iova / 0x100000000);
      this.indirect32[w + 2] = length;
      this.indirect16[entry * 8 + 6] = id;
      this.indirect16[entry * 8 + 7] = deviceWritable ? VRING_DESC_F_WRITE : 0;
    } else {
      let slot = this.#nextAvail + this.count;
      let wrap = this.#availWrap;
      if (slot >= this.size) {
        slot -= this.size;
        wrap ^= 1;
      }
      const flags =
        (deviceWritable ? VRING_DESC_F_WRITE : 0) |
        VRING_DESC_F_NEXT |
        (wrap !== 0 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED);
      const w = slot * 4;
      this.desc32[w] = iova >>> 0;
      this.desc32[w + 1] = Math.floor(iova / 0x100000000);
      this.desc32[w + 2] = length;
      this.desc16[slot * 8 + 6] = id;
      if (this.count === 0) {
        // The head's flags make the chain available: deferred to publish().
        this.#pendingSlot[this.#pending] = slot;
        this.#pendingFlags[this.#pending] = flags;
      } else {
        this.desc16[slot * 8 + 7] = flags;
        this.#lastFlagsAt = slot * 8 + 7;
      }
    }
  }

  /** Ends the chain (or writes its indirect descriptor) and queues its head flags for {@link publish}. */
  protected closeChain(id: number): number {
    let length: number;
    if (this.chainIndirect) {
      const slot = this.#nextAvail;
      const table = this.indirectIova + id * this.indirectEntries * VRING_DESC_SIZE;
      const w = slot * 4;
      this.desc32[w] = table >>> 0;
      this.desc32[w + 1] = Math.floor(table / 0x100000000);
      this.desc32[w + 2] = this.count * VRING_DESC_SIZE;
      this.desc16[slot * 8 + 6] = id;
      this.#pendingSlot[this.#pending] = slot;
      this.#pendingFlags[this.#pending] =
        VRING_DESC_F_INDIRECT |
        (this.#availWrap !== 0 ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED);
      length = 1;
    } else {
      if (this.#lastFlagsAt < 0) this.#pendingFlags[this.#pending] &= ~VRING_DESC_F_NEXT;
      else this.desc16[this.#lastFlagsAt] &= ~VRING_DESC_F_NEXT;
      length = this.count;
    }
    this.#pending++;
    this.#added += length;
    this.#nextAvail += length;
    if (this.#nextAvail >= this.size) {
      this.#nextAvail -= this.size;
      this.#availWrap ^= 1;
    }
    return length;
  }

  /**
   * Makes every chain ended since the last publish available (head flags, the
   * first chain's last: see the module comment) and notifies the device unless
   * its event suppression structure says DISABLE, or DESC with an event
   * descriptor outside the descriptors just made available. Returns true when
   * the device was notified.
   */
  publish(): boolean {
    const n = this.#pending;
    if (n === 0) return false;
    for (let i = n - 1; i > 0; i--) this.desc16[this.#pendingSlot[i] * 8 + 7] = this.#pendingFlags[i];
    // Release: every descriptor of the batch before the head that exposes the first chain.
    Atomics.store(this.desc16, this.#pendingSlot[0] * 8 + 7, this.#pendingFlags[0]);
    const added = this.#added;
    this.#pending = 0;
    this.#added = 0;
    this.stats.publishes++;
    // Store→load: the device's suppression structure is read after the flags are visible.
    const flags = Atomics.load(this.#deviceEvent16, 1);
    let kick: boolean;
    if (flags === VRING_PACKED_EVENT_FLAG_DESC && this.eventIdx) {
      const offWrap = Atomics.load(this.#deviceEvent16, 0);
      let event = offWrap & 0x7fff;
      // An event slot on the previous lap counts as `size` earlier (virtqueue_kick_prepare_packed).
      if (offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR !== this.#availWrap) event -= this.size;
      const now = this.#nextAvail;
      const old = now - added;
      // vring_need_event(): notify when the event slot lies in [old, now).
      kick = needEvent(event, now, old);
    } else {
      kick = flags !== VRING_PACKED_EVENT_FLAG_DISABLE;
    }
    return this.kickIf(kick);
  }

  /**
   * Driver event suppression: DISABLE, or ENABLE (without EVENT_IDX) / DESC at
   * the next used slot (with EVENT_IDX, re-armed by every collect). A hint only.
   */
  setInterrupts(enabled: boolean): void {
    this.interrupts = enabled;
    this.#armInterrupts();
  }

  /** Writes off_wrap and flags of the driver event structure in one 32-bit store. */
  #armInterrupts(): void {
    let value: number;
    if (!this.interrupts) value = VRING_PACKED_EVENT_FLAG_DISABLE * 0x10000;
    else if (!this.eventIdx) value = VRING_PACKED_EVENT_FLAG_ENABLE * 0x10000;
    else
      value =
        VRING_PACKED_EVENT_FLAG_DESC * 0x10000 +
        (this.#nextUsed | (this.#usedWrap << VRING_PACKED_EVENT_F_WRAP_CTR));
    Atomics.store(this.#driverEvent32, 0, value);
  }

  /** True when the next used slot holds a used descriptor (one atomic load). */
  hasCompletions(): boolean {
    return this.brokenBy === undefined && this.#isUsed(Atomics.load(this.desc16, this.#nextUsed * 8 + 7));
  }

  #isUsed(flags: number): boolean {
    const avail = (flags >>> 7) & 1;
    return avail === flags >>> 15 && avail === this.#usedWrap;
  }

  /**
   * Consumes every used descriptor, checking each against the driver's
   * records, frees the chain's descriptors and id, and calls
   * `onUsed(token, length)`. Returns the number of completions.
   * @throws VdpaError `ERR_QUEUE_CORRUPT` for an id out of range or not in
   *   flight, or an impossible length; the entry is not handed over.
   */
  collect(onUsed: (token: T, length: number) => void): number {
    if (this.brokenBy !== undefined) throw this.brokenBy;
    let total = 0;
    for (;;) {
      const slot = this.#nextUsed;
      // Acquire: id, length (and the buffers) are read after the flags.
      if (!this.#isUsed(Atomics.load(this.desc16, slot * 8 + 7))) {
        if (this.eventIdx && this.interrupts) {
          // Store→load: re-arm at the new used slot, then re-check so a completion
          // that raced the re-arm is collected now.
          this.#armInterrupts();
          if (this.#isUsed(Atomics.load(this.desc16, slot * 8 + 7))) continue;
        }
        return total;
      }
      const id = this.desc16[slot * 8 + 6];
      const length = this.desc32[slot * 4 + 2];
      if (id >= this.size || this.active[id] === 0) {
        this.corrupt(
          `used descriptor at slot ${slot} (wrap ${this.#usedWrap}) names buffer id ${id}, which is ` +
            (id >= this.size ? `outside [0, ${this.size})` : 'not in flight'),
        );
      }
      if (length > this.writable[id]) {
        this.corrupt(
          `used descriptor at slot ${slot} reports ${length} bytes written to buffer ${id}, ` +
            `which has only ${this.writable[id]} device-writable bytes`,
        );
      }
      const token = this.tokens[id] as T;
      const count = this.chainLength[id];
      this.#nextUsed += count;
      if (this.#nextUsed >= this.size) {
        this.#nextUsed -= this.size;
        this.#usedWrap ^= 1;
      }
      this.freeCount += count;
      this.active[id] = 0;
      this.tokens[id] = undefined;
      this.#freeIds[this.#numFreeIds++] = id;
      this.chainsInFlight--;
      total++;
      this.stats.completions++;
      onUsed(token, length);
    }
  }

  /** Forgets every chain and returns their tokens; the ring is empty (both wrap counters 1). */
  reset(): T[] {
    const orphans = this.resetChains();
    // Ids handed out from the stack top: 0, 1, 2, … on a fresh ring.
    for (let i = 0; i < this.size; i++) this.#freeIds[i] = this.size - 1 - i;
    this.#numFreeIds = this.size;
    this.#pending = 0;
    this.#added = 0;
    this.#nextAvail = 0;
    this.#availWrap = 1;
    this.#nextUsed = 0;
    this.#usedWrap = 1;
    this.desc16.fill(0);
    this.#deviceEvent16.fill(0);
    this.#armInterrupts();
    return orphans;
  }
}
