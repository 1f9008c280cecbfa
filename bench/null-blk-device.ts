/**
 * A virtio-blk "device" for measuring the driver's own JavaScript on the host
 * (`bench/host-driver.mjs`): it completes every published chain inside the
 * kick with OK and touches no data, so what a run measures is the driver, the
 * caller's loop and the call eventfd — not a device model. The host fake
 * (test/host/blk-fake-device.ts) checks everything a strict device checks and
 * logs every request, and that costs 3–5× the driver's own work per I/O: a
 * 10 % change in the driver disappears in it.
 *
 * Split rings, no EVENT_IDX, no indirect (like vdpa_sim_blk); kicks through
 * the doorbell (a synchronous call), interrupts through the real call eventfd
 * unless the driver set VRING_AVAIL_F_NO_INTERRUPT. Not a test device: it
 * checks nothing.
 */
import { writeSync } from 'node:fs';
import type { VringAddresses } from '../lib';
import { FakeBlkDevice, FakeBlkOptions } from '../test/host/blk-fake-device';

const VRING_DESC_F_NEXT = 1;
const VRING_AVAIL_F_NO_INTERRUPT = 1;

interface NullQueue {
  mask: number;
  desc16: Uint16Array;
  desc32: Uint32Array;
  avail16: Uint16Array;
  used16: Uint16Array;
  used32: Uint32Array;
  lastAvail: number;
  usedIdx: number;
  call: number;
}

export class NullBlkDevice extends FakeBlkDevice {
  readonly #addresses: (VringAddresses | undefined)[] = [];
  readonly #nums: number[] = [];
  readonly #calls: number[] = [];
  readonly #queues: (NullQueue | undefined)[] = [];
  readonly #one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  // One-window translation cache: request slots live in one region.
  #base = -1;
  #end = -1;
  #bytes: Uint8Array = new Uint8Array(0);
  completed = 0;

  constructor(options: FakeBlkOptions = {}) {
    super({ ...options, eventIdx: false, indirect: false, packed: false, doorbell: true });
  }

  override setVringNum(index: number, num: number): void {
    super.setVringNum(index, num);
    this.#nums[index] = num;
  }

  override setVringAddr(index: number, addr: VringAddresses): void {
    super.setVringAddr(index, addr);
    this.#addresses[index] = addr;
    this.#queues[index] = undefined;
  }

  override setVringCall(index: number, fd: number): void {
    super.setVringCall(index, fd);
    this.#calls[index] = fd;
  }

  override setStatus(status: number): void {
    super.setStatus(status);
    if (status === 0) {
      this.#queues.length = 0;
      this.#base = this.#end = -1;
    }
  }

  #queue(index: number): NullQueue {
    const known = this.#queues[index];
    if (known !== undefined) return known;
    const addr = this.#addresses[index] as VringAddresses;
    const num = this.#nums[index];
    const view = (iova: bigint, length: number): Uint8Array => this.space.translate(Number(iova), length);
    const desc = view(addr.desc, 16 * num);
    const avail = view(addr.avail, 6 + 2 * num);
    const used = view(addr.used, 6 + 8 * num);
    const q: NullQueue = {
      mask: num - 1,
      desc16: new Uint16Array(desc.buffer, desc.byteOffset, 8 * num),
      desc32: new Uint32Array(desc.buffer, desc.byteOffset, 4 * num),
      avail16: new Uint16Array(avail.buffer, avail.byteOffset, 3 + num),
      used16: new Uint16Array(used.buffer, used.byteOffset, 3 + 4 * num),
      used32: new Uint32Array(used.buffer, used.byteOffset, 1 + 2 * num),
      lastAvail: 0,
      usedIdx: 0,
      call: this.#calls[index],
    };
    this.#queues[index] = q;
    return q;
  }

  #statusByte(iova: number): void {
    if (iova < this.#base || iova >= this.#end) {
      const bytes = this.space.translate(iova, 1);
      this.#bytes = new Uint8Array(bytes.buffer);
      this.#base = iova - bytes.byteOffset;
      this.#end = this.#base + bytes.buffer.byteLength;
    }
    this.#bytes[iova - this.#base] = 0; // VIRTIO_BLK_S_OK
  }

  override kick(index: number): void {
    this.kicks++;
    const q = this.#queue(index);
    const availIdx = Atomics.load(q.avail16, 1);
    let served = 0;
    while (q.lastAvail !== availIdx) {
      const head = q.avail16[2 + (q.lastAvail & q.mask)];
      q.lastAvail = (q.lastAvail + 1) & 0xffff;
      let d = head;
      while ((q.desc16[d * 8 + 6] & VRING_DESC_F_NEXT) !== 0) d = q.desc16[d * 8 + 7];
      this.#statusByte(q.desc32[d * 4] + q.desc32[d * 4 + 1] * 0x100000000);
      const slot = q.usedIdx & q.mask;
      q.used32[1 + 2 * slot] = head;
      q.used32[2 + 2 * slot] = 1;
      q.usedIdx = (q.usedIdx + 1) & 0xffff;
      served++;
    }
    if (served === 0) return;
    Atomics.store(q.used16, 1, q.usedIdx);
    this.completed += served;
    if ((q.avail16[0] & VRING_AVAIL_F_NO_INTERRUPT) === 0) {
      this.interruptsSent++;
      writeSync(q.call, this.#one);
    }
  }
}
