/**
 * The device side of a split virtqueue (virtio 1.x §2.7) over the driver's
 * memory: pops the chains the avail ring exposes, writes used entries, and
 * keeps the notification hints (VRING_USED_F_NO_NOTIFY / avail_event) and the
 * interrupt decision (VRING_AVAIL_F_NO_INTERRUPT / used_event).
 *
 * The ring layout is the driver side's (lib/virtqueue/split.ts): the same
 * descriptor format, flag constants and vring_need_event(); only the three
 * parts sit wherever the driver put them (three IOVAs, each in one IOTLB
 * range).
 *
 * Nothing the driver writes is trusted: the head index, every `next`, every
 * address and length, the indirect table are checked (device-chain.ts) and a
 * bad chain comes back with `error`; each field is read once, so a driver
 * changing a descriptor under the device cannot make it see two values. Only
 * an avail index more than `size` ahead makes the ring unusable.
 *
 * ## Memory ordering
 *
 * The mirror image of the driver side's three orderings (see the module
 * comment of lib/virtqueue/split.ts for why Atomics gives them on V8:
 * seq-cst store = `xchg` on x86-64 / `stlr` on arm64; load = `mov` / `ldar`):
 *
 * 1. **Consume (load→load)**: the avail index is read with Atomics.load before
 *    the ring entries and descriptors it covers (and the buffers behind them).
 * 2. **Publish (store→store)**: used entries (plain stores in push()) are
 *    written before the used index, stored with Atomics.store in flush().
 * 3. **Notification checks (store→load)**: after publishing the used index
 *    flush() reads the driver's hint (flags or used_event) with Atomics.load;
 *    after enableKicks() stores the flag or avail_event it re-reads the avail
 *    index. Either way a load passing the store could lose an interrupt or a
 *    kick.
 */
import {
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_USED_F_NO_NOTIFY,
} from '../uapi';
import { ErrorCodes, VdpaError } from '../errors';
import { needEvent, VRING_DESC_SIZE } from '../virtqueue/chain';
import { splitRingLayout } from '../virtqueue/split';
import { ChainRecord, DeviceQueueBase } from './device-chain';
import type { DeviceChain, DeviceQueue, DeviceQueueOptions, DeviceQueueState } from './device-queue';

/** The device side of a split virtqueue; create it with `createDeviceQueue({ format: 'split', … })`. */
export class SplitDeviceQueue extends DeviceQueueBase implements DeviceQueue {
  readonly format = 'split' as const;

  readonly #mask: number;
  readonly #usedEventAt: number;
  readonly #availEventAt: number;
  // Ring memory (driver-written: desc, avail; device-written: used), mapped by mapRings().
  #desc32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  #desc16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
  #avail16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
  #used16: Uint16Array<ArrayBufferLike> = new Uint16Array(0);
  #used32: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
  // Device state, in JavaScript memory.
  /** Next avail-ring index to consume. */
  #lastAvail: number;
  /** The avail index as last read: chains up to it need no new load. */
  #availShadow: number;
  /** Next used-ring index to write. */
  #usedIdx = 0;
  /** The used index the driver has seen (last flush). */
  #publishedUsed = 0;

  constructor(options: DeviceQueueOptions) {
    splitRingLayout(options.size); // throws ERR_INVALID_ARG for a size that is not a power of two ≤ 32768
    super(options);
    this.#mask = this.size - 1;
    this.#usedEventAt = 2 + this.size;
    this.#availEventAt = 2 + 4 * this.size;
    const state = options.state;
    let availIndex = 0;
    if (state !== undefined) {
      if (
        !('split' in state) ||
        !Number.isInteger(state.split.availIndex) ||
        state.split.availIndex < 0 ||
        state.split.availIndex > 0xffff
      ) {
        throw new VdpaError(`split queue ${this.index}: state must be { split: { availIndex: 0…65535 } }`, {
          code: ErrorCodes.INVALID_ARG,
        });
      }
      availIndex = state.split.availIndex;
    }
    this.#lastAvail = availIndex;
    this.#availShadow = availIndex;
    this.checkRings();
    // Like vhost (vhost_vq_init_access), the used index starts where the ring says.
    this.#usedIdx = Atomics.load(this.#used16, 1);
    this.#publishedUsed = this.#usedIdx;
  }

  protected mapRings(): void {
    const size = this.size;
    const desc = this.ringView('descriptor table', this.descIova, VRING_DESC_SIZE * size, 'read', 16);
    const avail = this.ringView('avail ring', this.driverIova, 6 + 2 * size, 'read', 2);
    const used = this.ringView('used ring', this.deviceIova, 6 + 8 * size, 'write', 4);
    this.#desc32 = new Uint32Array(desc.buffer, desc.byteOffset, 4 * size);
    this.#desc16 = new Uint16Array(desc.buffer, desc.byteOffset, 8 * size);
    this.#avail16 = new Uint16Array(avail.buffer, avail.byteOffset, 3 + size);
    this.#used16 = new Uint16Array(used.buffer, used.byteOffset, 3 + 4 * size);
    this.#used32 = new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * size);
  }

  pop(): DeviceChain | undefined {
    this.checkRings();
    if (this.#lastAvail === this.#availShadow) {
      // Acquire: the ring entries and descriptors are read after the index.
      const availIdx = Atomics.load(this.#avail16, 1);
      const pending = (availIdx - this.#lastAvail) & 0xffff;
      if (pending === 0) return undefined;
      if (pending > this.size) {
        this.corrupt(
          `avail index moved from ${this.#lastAvail} to ${availIdx}, ${pending} chains in a ${this.size}-entry ring`,
        );
      }
      this.#availShadow = availIdx;
    }
    const head = this.#avail16[2 + (this.#lastAvail & this.#mask)];
    this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
    const chain = this.takeChain(head);
    chain.descriptors = 1;
    if (head >= this.size)
      this.fail(chain, `the avail ring names head ${head}, outside the ${this.size}-entry table`);
    else this.#walk(chain, head);
    return chain;
  }

  /** Follows the chain from `head` through the table (and at most one indirect table). */
  #walk(chain: ChainRecord, head: number): void {
    const desc32 = this.#desc32;
    const desc16 = this.#desc16;
    let i = head;
    for (let count = 1; ; count++) {
      if (count > this.size) {
        this.fail(chain, `the chain runs past ${this.size} descriptors: a loop`);
        return;
      }
      const low = desc32[i * 4];
      const high = desc32[i * 4 + 1];
      const length = desc32[i * 4 + 2];
      const flags = desc16[i * 8 + 6];
      const next = desc16[i * 8 + 7];
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        if (!this.indirect) {
          this.fail(chain, `descriptor ${i} is indirect, but VIRTIO_F_RING_INDIRECT_DESC was not negotiated`);
        } else if ((flags & VRING_DESC_F_NEXT) !== 0) {
          this.fail(chain, `descriptor ${i} has both INDIRECT and NEXT`);
        } else {
          this.#walkIndirect(chain, low, high, length);
        }
        return;
      }
      if (!this.addBuffer(chain, low, high, length, flags)) return;
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      if (next >= this.size) {
        this.fail(chain, `descriptor ${i} has next ${next}, outside the ${this.size}-entry table`);
        return;
      }
      if (count === 1) chain.secondDescriptor = next;
      i = next;
    }
  }

  /** Follows an indirect table of `length` bytes (its own `next` links, one table deep). */
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
    const entries = length / VRING_DESC_SIZE;
    let i = 0;
    for (let count = 1; ; count++) {
      if (count > entries) {
        this.fail(chain, `the indirect chain runs past its ${entries} entries: a loop`);
        return;
      }
      const at = i * VRING_DESC_SIZE;
      const flags = table.readUInt16LE(at + 12);
      if ((flags & VRING_DESC_F_INDIRECT) !== 0) {
        this.fail(chain, `indirect table entry ${i} is itself indirect`);
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
      if ((flags & VRING_DESC_F_NEXT) === 0) return;
      const next = table.readUInt16LE(at + 14);
      if (next >= entries) {
        this.fail(chain, `indirect table entry ${i} has next ${next}, outside the ${entries}-entry table`);
        return;
      }
      i = next;
    }
  }

  push(chain: DeviceChain, written: number): void {
    const record = this.release(chain, written);
    this.#writeUsed(record.id, written);
  }

  pushRaw(id: number, written: number): void {
    this.#writeUsed(id >>> 0, written >>> 0);
  }

  #writeUsed(id: number, written: number): void {
    this.checkRings();
    const slot = this.#usedIdx & this.#mask;
    this.#used32[1 + 2 * slot] = id;
    this.#used32[2 + 2 * slot] = written;
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
  }

  flush(): boolean {
    const old = this.#publishedUsed;
    const now = this.#usedIdx;
    if (old === now) return false;
    this.checkRings();
    // Release: the used entries (plain stores in push) before the index.
    Atomics.store(this.#used16, 1, now);
    this.#publishedUsed = now;
    // Store→load: the driver's hint is read after the index is visible.
    if (this.eventIdx) {
      // vring_need_event(): interrupt when used_event lies in [old, now).
      return needEvent(Atomics.load(this.#avail16, this.#usedEventAt), now, old);
    }
    return (Atomics.load(this.#avail16, 0) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  enableKicks(): boolean {
    this.checkRings();
    if (this.eventIdx) Atomics.store(this.#used16, this.#availEventAt, this.#lastAvail);
    else Atomics.store(this.#used16, 0, 0);
    // Store→load: a chain published before the driver could see the store gets no kick; look for it now.
    return Atomics.load(this.#avail16, 1) !== this.#lastAvail;
  }

  disableKicks(): void {
    // With EVENT_IDX, avail_event simply stays behind (as vhost does): the driver kicks only on crossing it.
    if (this.eventIdx) return;
    this.checkRings();
    this.#used16[0] = VRING_USED_F_NO_NOTIFY;
  }

  state(): DeviceQueueState {
    return { split: { availIndex: this.#lastAvail } };
  }
}
