/**
 * The device side of a packed virtqueue (virtio 1.1+ §2.8), in TypeScript, for
 * host tests: it reads available descriptors the way a device does (flags
 * first, AVAIL/USED against its avail wrap counter, chains via NEXT, the buffer
 * id from the chain's last descriptor, INDIRECT tables) and writes used
 * descriptors (one per buffer, at its used slot, skipping the rest of the
 * chain). Strict about what the spec forbids; tests drive it step by step and
 * can make it misbehave (bad ids, duplicate completions).
 */
import {
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  VringAddresses,
} from '../../lib';
import type { Translate } from './virtqueue-fake-device';

/** One available buffer as the device sees it. */
export interface PackedDeviceChain {
  /** Buffer id (from the last descriptor). */
  id: number;
  readable: Uint8Array[];
  writable: Uint8Array[];
  /** IOVAs of the buffers, in order. */
  iovas: number[];
  /** Ring descriptors the buffer occupies (1 for an indirect one): the used slot advances by this. */
  ringDescriptors: number;
  indirect: boolean;
}

export class PackedDeviceRing {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  nextAvail = 0;
  availWrap = 1;
  nextUsed = 0;
  usedWrap = 1;
  readonly #translate: Translate;
  readonly #desc: DataView;
  readonly #driver: DataView;
  readonly #device: DataView;

  constructor(
    translate: Translate,
    size: number,
    addresses: VringAddresses,
    options: { eventIdx?: boolean; indirect?: boolean; base?: number } = {},
  ) {
    this.size = size;
    this.eventIdx = options.eventIdx ?? false;
    this.indirect = options.indirect ?? false;
    this.#translate = translate;
    const view = (iova: bigint, length: number): DataView => {
      const bytes = translate(Number(iova), length);
      return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    };
    this.#desc = view(addresses.desc, 16 * size);
    this.#driver = view(addresses.avail, 4);
    this.#device = view(addresses.used, 4);
    // VHOST_SET_VRING_BASE for packed rings: avail slot | wrap << 15, used likewise in the upper half.
    const base = options.base ?? 0x80008000;
    this.nextAvail = base & 0x7fff;
    this.availWrap = (base >>> 15) & 1;
    this.nextUsed = (base >>> 16) & 0x7fff;
    this.usedWrap = (base >>> 31) & 1;
    if (this.nextAvail >= size || this.nextUsed >= size) throw new Error(`vring base 0x${base.toString(16)}`);
  }

  /** Driver event suppression: flags. */
  get driverFlags(): number {
    return this.#driver.getUint16(2, true);
  }

  /** Driver event suppression: off_wrap. */
  get driverOffWrap(): number {
    return this.#driver.getUint16(0, true);
  }

  #flags(slot: number): number {
    return this.#desc.getUint16(16 * slot + 14, true);
  }

  #isAvail(flags: number, wrap: number): boolean {
    const avail = (flags & VRING_PACKED_DESC_F_AVAIL) !== 0 ? 1 : 0;
    const used = (flags & VRING_PACKED_DESC_F_USED) !== 0 ? 1 : 0;
    return avail === wrap && used !== wrap;
  }

  /** True when the descriptor at the device's avail slot is available. */
  get hasAvailable(): boolean {
    return this.#isAvail(this.#flags(this.nextAvail), this.availWrap);
  }

  /** Pops every available buffer. */
  popAll(): PackedDeviceChain[] {
    const out: PackedDeviceChain[] = [];
    for (let c = this.pop(); c !== undefined; c = this.pop()) out.push(c);
    return out;
  }

  /** Reads the next available buffer, or undefined. Throws on a malformed chain. */
  pop(): PackedDeviceChain | undefined {
    if (!this.hasAvailable) return undefined;
    const chain: PackedDeviceChain = {
      id: -1,
      readable: [],
      writable: [],
      iovas: [],
      ringDescriptors: 0,
      indirect: false,
    };
    const take = (addr: number, len: number, writable: boolean): void => {
      const buffer = this.#translate(addr, len);
      chain.iovas.push(addr);
      if (writable) chain.writable.push(buffer);
      else if (chain.writable.length > 0) throw new Error('readable descriptor after a writable one');
      else chain.readable.push(buffer);
    };
    let slot = this.nextAvail;
    let wrap = this.availWrap;
    for (;;) {
      if (chain.ringDescriptors >= this.size) throw new Error('chain longer than the ring');
      const flags = this.#flags(slot);
      if (!this.#isAvail(flags, wrap))
        throw new Error(`chain continues into slot ${slot}, which is not available`);
      const at = 16 * slot;
      const addr = Number(this.#desc.getBigUint64(at, true));
      const len = this.#desc.getUint32(at + 8, true);
      const id = this.#desc.getUint16(at + 12, true);
      chain.ringDescriptors++;
      if (++slot === this.size) {
        slot = 0;
        wrap ^= 1;
      }
      if (flags & VRING_DESC_F_INDIRECT) {
        if (!this.indirect) throw new Error('INDIRECT descriptor but INDIRECT_DESC was not negotiated');
        if (flags & VRING_DESC_F_NEXT) throw new Error('INDIRECT together with NEXT');
        if (chain.ringDescriptors !== 1) throw new Error('INDIRECT descriptor inside a chain');
        if (len % 16 !== 0 || len === 0) throw new Error(`indirect table length ${len}`);
        const bytes = this.#translate(addr, len);
        const table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        for (let i = 0; i < len / 16; i++) {
          const f = table.getUint16(16 * i + 14, true);
          if (f & VRING_DESC_F_INDIRECT) throw new Error('nested indirect descriptor');
          take(
            Number(table.getBigUint64(16 * i, true)),
            table.getUint32(16 * i + 8, true),
            (f & VRING_DESC_F_WRITE) !== 0,
          );
        }
        chain.indirect = true;
        chain.id = id;
        break;
      }
      take(addr, len, (flags & VRING_DESC_F_WRITE) !== 0);
      if ((flags & VRING_DESC_F_NEXT) === 0) {
        chain.id = id; // the buffer id is in the last descriptor
        break;
      }
    }
    this.nextAvail = slot;
    this.availWrap = wrap;
    return chain;
  }

  /**
   * Writes a used descriptor for buffer `id` (`length` bytes written) at the
   * used slot and skips `descriptors` slots. Returns whether the driver wants
   * an interrupt per its event suppression structure.
   */
  push(id: number, length: number, descriptors: number): boolean {
    const slot = this.nextUsed;
    const at = 16 * slot;
    this.#desc.setUint16(at + 12, id, true);
    this.#desc.setUint32(at + 8, length, true);
    const flags =
      (this.usedWrap !== 0 ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0) |
      (length > 0 ? VRING_DESC_F_WRITE : 0);
    const old = this.nextUsed;
    this.nextUsed += descriptors;
    if (this.nextUsed >= this.size) {
      this.nextUsed -= this.size;
      this.usedWrap ^= 1;
    }
    this.#desc.setUint16(at + 14, flags, true); // flags last
    return this.needInterrupt(old, descriptors);
  }

  /** Completes a popped chain. */
  complete(chain: PackedDeviceChain, length: number): boolean {
    return this.push(chain.id, length, chain.ringDescriptors);
  }

  /** The driver's interrupt decision for used descriptors written from slot `old` over `count` slots. */
  needInterrupt(old: number, count: number): boolean {
    const flags = this.driverFlags;
    if (flags === VRING_PACKED_EVENT_FLAG_DISABLE) return false;
    if (flags === VRING_PACKED_EVENT_FLAG_ENABLE) return true;
    if (flags !== VRING_PACKED_EVENT_FLAG_DESC) throw new Error(`driver event flags ${flags}`);
    if (!this.eventIdx) throw new Error('RING_EVENT_FLAGS_DESC without EVENT_IDX');
    const offWrap = this.driverOffWrap;
    let event = offWrap & 0x7fff;
    if (offWrap >>> 15 !== this.usedWrap) event -= this.size;
    const now = this.nextUsed;
    const from = now - count; // old, unwrapped onto the current lap
    void old;
    return ((now - event - 1) & 0xffff) < ((now - from) & 0xffff);
  }

  /** Device event suppression written by the device: ENABLE, DISABLE, or DESC at (slot, wrap). */
  setEvent(flags: number, slot = 0, wrap = 0): void {
    this.#device.setUint16(0, (slot & 0x7fff) | (wrap << 15), true);
    this.#device.setUint16(2, flags, true);
  }
}
