/**
 * The device side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.1+
 * §2.8) over the driver's memory, with the layout, flag constants and
 * vring_need_event() of the driver side (lib/virtqueue/packed.ts).
 *
 * A descriptor at the device's next avail slot is available when its AVAIL
 * bit equals the device's copy of the driver's wrap counter and its USED bit
 * differs. A chain is that descriptor and the consecutive ones NEXT links; the
 * buffer id is the last descriptor's (§2.8.6). The device returns a chain by
 * writing one used descriptor at its own next used slot (id, bytes written,
 * AVAIL = USED = its used wrap counter, WRITE when it wrote bytes) and moving
 * that slot on by the chain's descriptor count, as the driver expects
 * (Linux: detach_buf_packed; ours: PackedVirtqueue.collect).
 *
 * A malformed chain comes back with `error` (it is consumed by its NEXT
 * links); only a chain whose NEXT flags never end — the device cannot find
 * the next chain — makes the ring unusable. An indirect descriptor must be
 * alone in its chain (Linux's virtqueue_add_indirect_packed); indirect table
 * entries follow one another (no `next`, §2.8.12).
 *
 * ## Memory ordering
 *
 * The mirror image of the driver side's (lib/virtqueue/packed.ts):
 *
 * 1. **Consume**: pop() reads the head's flags with Atomics.load (acquire)
 *    before the rest of the chain, the indirect table and the buffers.
 * 2. **Publish**: push() writes id and length with plain stores and defers the
 *    flags; flush() writes the deferred flags in reverse order and the first
 *    one last with Atomics.store. The driver consumes used descriptors in
 *    order, so it reaches any of the batch only after seeing the first, and
 *    the release store orders every earlier store before it.
 * 3. **Notification checks (store→load)**: after the publishing store the
 *    driver event suppression area is read with Atomics.load; after
 *    enableKicks() stores the device area (off_wrap and flags in one 32-bit
 *    Atomics.store) the next avail slot's flags are re-read.
 */
import { ErrorCodes, VdpaError } from '../errors';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../uapi';
import { needEvent, VRING_DESC_SIZE } from '../virtqueue/chain';
import {
  packedRingLayout,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_F_WRAP_CTR,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  VRING_PACKED_EVENT_SIZE,
} from '../virtqueue/packed';
import { ChainRecord, DeviceQueueBase } from './device-chain';
import type { DeviceChain, DeviceQueue, DeviceQueueOptions, DeviceQueueState } from './device-queue';

/** The device side of a packed virtqueue; create it with `createDeviceQueue({ format: 'packed', … })`. */
export class PackedDeviceQueue extends DeviceQueueBase implements DeviceQueue {
  readonly format = 'packed' as const;

  // Ring memory, mapped by mapRings().
  #desc32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  #desc16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
  /** Driver event suppression area {off_wrap, flags} as one little-endian u32 (driver-written). */
  #driverEvent32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  /** Device event suppression area (device-written). */
  #deviceEvent32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  // Device state, in JavaScript memory.
  #nextAvail = 0;
  #availWrap = 1;
  #nextUsed = 0;
  #usedWrap = 1;
  // Used descriptors written but not yet exposed: their slots and flags, in ring order.
  readonly #pendingSlot: Uint16Array;
  readonly #pendingFlags: Uint16Array;
  #pending = 0;
  /** Descriptors the used slot moved on since the last flush (for RING_EVENT_FLAGS_DESC). */
  #usedSinceFlush = 0;

  constructor(options: DeviceQueueOptions) {
    packedRingLayout(options.size); // throws ERR_INVALID_ARG for a size outside [1, 32768]
    super(options);
    this.#pendingSlot = new Uint16Array(this.size);
    this.#pendingFlags = new Uint16Array(this.size);
    const state = options.state;
    if (state !== undefined) {
      const p = 'packed' in state ? state.packed : undefined;
      const slot = (v: number): boolean => Number.isInteger(v) && v >= 0 && v < this.size;
      const bit = (v: number): boolean => v === 0 || v === 1;
      if (
        p === undefined ||
        !slot(p.availIndex) ||
        !slot(p.usedIndex) ||
        !bit(p.availCounter) ||
        !bit(p.usedCounter)
      ) {
        throw new VdpaError(
          `packed queue ${this.index}: state must be { packed: { availIndex, usedIndex in [0, ${this.size}), ` +
            'availCounter, usedCounter 0 or 1 } }',
          { code: ErrorCodes.INVALID_ARG },
        );
      }
      this.#nextAvail = p.availIndex;
      this.#availWrap = p.availCounter;
      this.#nextUsed = p.usedIndex;
      this.#usedWrap = p.usedCounter;
    }
    this.checkRings();
  }

  protected mapRings(): void {
    const size = this.size;
    const desc = this.ringView('descriptor ring', this.descIova, VRING_DESC_SIZE * size, 'read-write', 16);
    const driver = this.ringView('driver event area', this.driverIova, VRING_PACKED_EVENT_SIZE, 'read', 4);
    const device = this.ringView('device event area', this.deviceIova, VRING_PACKED_EVENT_SIZE, 'write', 4);
    this.#desc32 = new Uint32Array(desc.buffer, desc.byteOffset, 4 * size);
    this.#desc16 = new Uint16Array(desc.buffer, desc.byteOffset, 8 * size);
    this.#driverEvent32 = new Uint32Array(driver.buffer, driver.byteOffset, 1);
    this.#deviceEvent32 = new Uint32Array(device.buffer, device.byteOffset, 1);
  }

  #isAvailable(flags: number): boolean {
    const avail = (flags & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === this.#availWrap && used !== this.#availWrap;
  }

  pop(): DeviceChain | undefined {
    this.checkRings();
    const head = this.#nextAvail;
    // Acquire: the chain's descriptors (and buffers) are read after the head's flags.
    const headFlags = Atomics.load(this.#desc16, head * 8 + 7);
    if (!this.#isAvailable(headFlags)) return undefined;
    // Find the chain's end first, so a bad chain is still consumed whole.
    const desc16 = this.#desc16;
    let count = 1;
    let last = head;
    for (let flags = headFlags; (flags & VRING_DESC_F_NEXT) !== 0; count++) {
      if (count === this.size) {
        this.corrupt(`the chain at slot ${head} has NEXT on all ${this.size} descriptors of the ring`);
      }
      last = last + 1 === this.size ? 0 : last + 1;
      flags = desc16[last * 8 + 7];
    }
    const chain = this.takeChain(desc16[last * 8 + 6]);
    chain.descriptors = count;
    if (count > 1) chain.secondDescriptor = head + 1 === this.size ? 0 : head + 1;
    this.#nextAvail += count;
    if (this.#nextAvail >= this.size) {
      this.#nextAvail -= this.size;
      this.#availWrap ^= 1;
    }
    this.#walk(chain, head, count);
    return chain;
  }

  /** Checks and maps the chain's `count` descriptors from `head` (or its one indirect table). */
  #walk(chain: ChainRecord, head: number, count: number): void {
    const desc32 = this.#desc32;
    const desc16 = this.#desc16;
    let slot = head;
    for (let n = 0; n < count; n++) {
      const flags = desc16[slot * 8 + 7];
      const low = desc32[slot * 4];
      const high = desc32[slot * 4 + 1];
      const length = desc32[slot * 4 + 2];
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) {
          this.fail(
            chain,
            `descriptor at slot ${slot} is indirect, but VIRTIO_F_RING_INDIRECT_DESC was not negotiated`,
          );
        } else if (count > 1) {
          this.fail(
            chain,
            `descriptor at slot ${slot} is indirect inside a ${count}-descriptor chain (NEXT with INDIRECT)`,
          );
        } else {
          this.#walkIndirect(chain, low, high, length);
        }
        return;
      }
      if (!this.addBuffer(chain, low, high, length, flags)) return;
      slot = slot + 1 === this.size ? 0 : slot + 1;
    }
  }

  /** Maps the buffers of an indirect table of `length` bytes (consecutive entries, one table deep). */
  #walkIndirect(chain: ChainRecord, low: number, high: number, length: number): void {
    if (length === 0 || length % VRING_DESC_SIZE !== 0) {
      this.fail(chain, `indirect table of ${length} bytes: not a non-zero multiple of ${VRING_DESC_SIZE}`);
      return;
    }
    const iova = high * 0x100000000 + low;
    const table = this.memory.view(iova, length, false);
    if (table === undefined) {
      this.fail(
        chain,
        `indirect table at IOVA 0x${iova.toString(16)} (${length} bytes) is not ` +
          'mapped device-readable in one IOTLB range',
      );
      return;
    }
    for (let at = 0; at < length; at += VRING_DESC_SIZE) {
      const flags = table.readUInt16LE(at + 14);
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        this.fail(chain, `indirect table entry ${at / VRING_DESC_SIZE} is itself indirect`);
        return;
      }
      if (
        !this.addBuffer(
          chain,
          table.readUInt32LE(at),
          table.readUInt32LE(at + 4),
          table.readUInt32LE(at + 8),
          flags,
        )
      ) {
        return;
      }
    }
  }

  push(chain: DeviceChain, written: number): void {
    const record = this.release(chain, written);
    this.#writeUsed(record.id, written, record.descriptors);
  }

  pushRaw(id: number, written: number): void {
    this.#writeUsed(id & 0xffff, written >>> 0, 1);
  }

  /** Writes a used descriptor at the next used slot (flags deferred to flush) and moves the slot on. */
  #writeUsed(id: number, written: number, descriptors: number): void {
    this.checkRings();
    if (this.#pending === this.size) this.#publishFlags(); // only a flood of pushRaw() gets here
    const slot = this.#nextUsed;
    this.#desc32[slot * 4 + 2] = written;
    this.#desc16[slot * 8 + 6] = id;
    this.#pendingSlot[this.#pending] = slot;
    this.#pendingFlags[this.#pending] =
      (this.#usedWrap !== 0 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) |
      (written > 0 ? VRING_DESC_F_WRITE : 0);
    this.#pending++;
    this.#usedSinceFlush += descriptors;
    this.#nextUsed += descriptors;
    if (this.#nextUsed >= this.size) {
      this.#nextUsed -= this.size;
      this.#usedWrap ^= 1;
    }
  }

  /** Makes the pending used descriptors visible: later ones first, the first with a release store. */
  #publishFlags(): void {
    const n = this.#pending;
    for (let i = n - 1; i > 0; i--) this.#desc16[this.#pendingSlot[i] * 8 + 7] = this.#pendingFlags[i];
    Atomics.store(this.#desc16, this.#pendingSlot[0] * 8 + 7, this.#pendingFlags[0]);
    this.#pending = 0;
  }

  flush(): boolean {
    if (this.#pending === 0 && this.#usedSinceFlush === 0) return false;
    this.checkRings();
    if (this.#pending > 0) this.#publishFlags();
    const moved = this.#usedSinceFlush;
    this.#usedSinceFlush = 0;
    // Store→load: the driver's suppression area is read after the flags are visible.
    const event = Atomics.load(this.#driverEvent32, 0);
    const flags = event >>> 16;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (flags !== VRING_PACKED_EVENT_FLAG_DESC || !this.eventIdx) return true;
    const offWrap = event & 0xffff;
    let slot = offWrap & 0x7fff;
    // An event slot on the previous lap counts as `size` earlier (QEMU's vhost_vring_packed_need_event).
    if (offWrap >>> VRING_PACKED_EVENT_F_WRAP_CTR !== this.#usedWrap) slot -= this.size;
    const now = this.#nextUsed;
    // vring_need_event(): interrupt when the event slot lies in [old, now).
    return needEvent(slot, now, now - moved);
  }

  enableKicks(): boolean {
    this.checkRings();
    const value = this.eventIdx
      ? VRING_PACKED_EVENT_FLAG_DESC * 0x10000 +
        (this.#nextAvail | (this.#availWrap << VRING_PACKED_EVENT_F_WRAP_CTR))
      : VRING_PACKED_EVENT_FLAG_ENABLE * 0x10000;
    Atomics.store(this.#deviceEvent32, 0, value);
    // Store→load: re-check the next slot for a chain made available before the driver saw the store.
    return this.#isAvailable(Atomics.load(this.#desc16, this.#nextAvail * 8 + 7));
  }

  disableKicks(): void {
    this.checkRings();
    Atomics.store(this.#deviceEvent32, 0, VRING_PACKED_EVENT_FLAG_DISABLE * 0x10000);
  }

  state(): DeviceQueueState {
    return {
      packed: {
        availCounter: this.#availWrap,
        availIndex: this.#nextAvail,
        usedCounter: this.#usedWrap,
        usedIndex: this.#nextUsed,
      },
    };
  }
}
