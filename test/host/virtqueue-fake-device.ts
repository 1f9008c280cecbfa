/**
 * The device side of a split virtqueue, in TypeScript, for host tests: it reads
 * descriptor chains the way a device does (through IOVAs, following NEXT and
 * INDIRECT, checking what a strict device checks) and writes the used ring and
 * notification hints. Tests drive it step by step, so they can also make it
 * misbehave (corrupt used entries, suppress notifications).
 */
import {
  VRING_AVAIL_F_NO_INTERRUPT,
  VRING_DESC_F_INDIRECT,
  VRING_DESC_F_NEXT,
  VRING_DESC_F_WRITE,
  VRING_USED_F_NO_NOTIFY,
  VringAddresses,
} from '../../lib';

/** IOVA → bytes the device may access. */
export type Translate = (iova: number, length: number) => Uint8Array;

/** One chain as the device sees it. */
export interface DeviceChain {
  head: number;
  /** Device-readable buffers, in order. */
  readable: Uint8Array[];
  /** Device-writable buffers, in order. */
  writable: Uint8Array[];
  /** IOVAs of the buffers, in order (readable then writable). */
  iovas: number[];
  /** Ring descriptors the chain occupies (1 for an indirect chain). */
  ringDescriptors: number;
  indirect: boolean;
}

/** Translation over a set of (iova, ArrayBuffer) windows. */
export class IovaSpace {
  readonly #windows: { iova: number; bytes: Uint8Array }[] = [];

  add(iova: number, bytes: Uint8Array): void {
    this.#windows.push({ iova, bytes });
  }

  remove(iova: number): void {
    const i = this.#windows.findIndex((w) => w.iova === iova);
    if (i >= 0) this.#windows.splice(i, 1);
  }

  clear(): void {
    this.#windows.length = 0;
  }

  readonly translate: Translate = (iova, length) => {
    for (const w of this.#windows) {
      if (iova >= w.iova && iova + length <= w.iova + w.bytes.length) {
        return w.bytes.subarray(iova - w.iova, iova - w.iova + length);
      }
    }
    throw new Error(`device access to unmapped IOVA [0x${iova.toString(16)}, +${length})`);
  };
}

export class DeviceRing {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  lastAvail = 0;
  usedIdx = 0;
  readonly #translate: Translate;
  readonly #desc: DataView;
  readonly #avail: DataView;
  readonly #used: DataView;

  constructor(
    translate: Translate,
    size: number,
    addresses: VringAddresses,
    options: { eventIdx?: boolean; indirect?: boolean } = {},
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
    this.#avail = view(addresses.avail, 6 + 2 * size);
    this.#used = view(addresses.used, 6 + 8 * size);
  }

  /** The driver's published avail index. */
  get availIdx(): number {
    return this.#avail.getUint16(2, true);
  }

  get availFlags(): number {
    return this.#avail.getUint16(0, true);
  }

  get usedEvent(): number {
    return this.#avail.getUint16(4 + 2 * this.size, true);
  }

  /** Chains published and not yet popped. */
  get pending(): number {
    return (this.availIdx - this.lastAvail) & 0xffff;
  }

  /** Reads the next published chain, or undefined. Throws on a malformed chain. */
  pop(): DeviceChain | undefined {
    if (this.pending === 0) return undefined;
    const head = this.#avail.getUint16(4 + 2 * (this.lastAvail % this.size), true);
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (head >= this.size) throw new Error(`avail ring names descriptor ${head} ≥ ${this.size}`);
    const chain: DeviceChain = {
      head,
      readable: [],
      writable: [],
      iovas: [],
      ringDescriptors: 0,
      indirect: false,
    };
    let table = this.#desc;
    let tableSize = this.size;
    let i = head;
    let seen = 0;
    for (;;) {
      if (++seen > tableSize) throw new Error(`descriptor chain from ${head} loops or exceeds ${tableSize}`);
      const at = 16 * i;
      const addr = Number(table.getBigUint64(at, true));
      const len = table.getUint32(at + 8, true);
      const flags = table.getUint16(at + 12, true);
      const next = table.getUint16(at + 14, true);
      if (table === this.#desc) chain.ringDescriptors++;
      if (flags & VRING_DESC_F_INDIRECT) {
        if (!this.indirect) throw new Error('INDIRECT descriptor but INDIRECT_DESC was not negotiated');
        if (table !== this.#desc) throw new Error('nested indirect descriptor');
        if (flags & VRING_DESC_F_NEXT) throw new Error('INDIRECT together with NEXT');
        if (len % 16 !== 0 || len === 0) throw new Error(`indirect table length ${len}`);
        const bytes = this.#translate(addr, len);
        table = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        tableSize = len / 16;
        chain.indirect = true;
        i = 0;
        seen = 0;
        continue;
      }
      const buffer = this.#translate(addr, len);
      chain.iovas.push(addr);
      if (flags & VRING_DESC_F_WRITE) chain.writable.push(buffer);
      else if (chain.writable.length > 0) throw new Error('readable descriptor after a writable one');
      else chain.readable.push(buffer);
      if ((flags & VRING_DESC_F_NEXT) === 0) break;
      if (next >= tableSize) throw new Error(`next ${next} beyond table of ${tableSize}`);
      i = next;
    }
    return chain;
  }

  /** Writes a used entry and advances the used index. Returns whether the driver wants an interrupt. */
  push(id: number, length: number): boolean {
    const old = this.usedIdx;
    const slot = this.usedIdx % this.size;
    this.#used.setUint32(4 + 8 * slot, id, true);
    this.#used.setUint32(8 + 8 * slot, length, true);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.#used.setUint16(2, this.usedIdx, true);
    return this.needInterrupt(old, this.usedIdx);
  }

  /** Overwrites the used index directly (to simulate a corrupt device). */
  setUsedIdx(value: number): void {
    this.usedIdx = value & 0xffff;
    this.#used.setUint16(2, this.usedIdx, true);
  }

  /** The driver's interrupt-suppression decision for used entries [old, now). */
  needInterrupt(old: number, now: number): boolean {
    if (this.eventIdx) {
      const event = this.usedEvent;
      return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    return (this.availFlags & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Sets VRING_USED_F_NO_NOTIFY. */
  setNoNotify(on: boolean): void {
    this.#used.setUint16(0, on ? VRING_USED_F_NO_NOTIFY : 0, true);
  }

  /** Writes avail_event (EVENT_IDX). */
  setAvailEvent(value: number): void {
    this.#used.setUint16(4 + 8 * this.size, value & 0xffff, true);
  }
}
