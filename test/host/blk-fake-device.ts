/**
 * A fake virtio-blk vDPA device for host tests: implements the BlockTransport
 * surface of VhostVdpaDevice over ordinary DmaRegions, plays the device side
 * of the rings (test/host/virtqueue-fake-device.ts, or with `packed` the packed
 * ring of test/host/virtqueue-packed-fake-device.ts), serves requests from an
 * in-memory disk and signals the real call eventfds. It checks what a strict
 * device would (limits, chain shape) and records violations, and can be told
 * to hold completions, fail requests or corrupt the used ring.
 */
import { strict as assert } from 'node:assert';
import { writeSync, readSync } from 'node:fs';
import {
  bit,
  bits,
  BlockDevice,
  BlockDeviceOptions,
  BlockTransport,
  Doorbell,
  VdpaError,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_NEEDS_RESET,
  VirtioBlkF,
  VirtioF,
  VringAddresses,
} from '../../lib';
import { FakeIotlb } from './fake-iotlb';
import { DeviceChain, DeviceRing } from './virtqueue-fake-device';
import { PackedDeviceRing } from './virtqueue-packed-fake-device';

/**
 * A packed device ring behind the part of DeviceRing's surface the fake
 * device uses: chains are named by buffer id (`head`), and a completion skips
 * as many slots as the chain occupied.
 */
class PackedServedRing {
  readonly eventIdx = false;
  readonly lastAvail = 0;
  readonly ring: PackedDeviceRing;
  readonly #descriptors = new Map<number, number>();

  constructor(ring: PackedDeviceRing) {
    this.ring = ring;
  }

  get pending(): number {
    return this.ring.hasAvailable ? 1 : 0;
  }

  pop(): DeviceChain | undefined {
    const c = this.ring.pop();
    if (c === undefined) return undefined;
    this.#descriptors.set(c.id, c.ringDescriptors);
    return {
      head: c.id,
      readable: c.readable,
      writable: c.writable,
      iovas: c.iovas,
      ringDescriptors: c.ringDescriptors,
      indirect: c.indirect,
    };
  }

  /** Completes chain `head`, writing `id` (possibly corrupted) in the used descriptor. */
  complete(head: number, id: number, length: number): boolean {
    const descriptors = this.#descriptors.get(head) ?? 1;
    this.#descriptors.delete(head);
    return this.ring.push(id, length, descriptors);
  }

  setAvailEvent(): void {
    // Packed rings: the device event structure stays ENABLE.
  }
}

export interface FakeBlkOptions {
  /** Bytes (default 4 MiB). */
  capacity?: number;
  /** Offered features (default: what vdpa_sim_blk offers, plus EVENT_IDX/INDIRECT if asked). */
  features?: bigint;
  eventIdx?: boolean;
  indirect?: boolean;
  /** Offer VIRTIO_F_RING_PACKED and serve packed rings when it is negotiated. */
  packed?: boolean;
  readOnly?: boolean;
  segMax?: number;
  sizeMax?: number;
  blkSize?: number;
  numQueues?: number;
  maxDiscardSectors?: number;
  maxWriteZeroesSectors?: number;
  queueMax?: number;
  /** Offer a doorbell page (default true); false = kicks via the kick eventfd. */
  doorbell?: boolean;
  /** Requests served per pass before rescheduling (vdpa_sim: 5). */
  perPass?: number;
  /**
   * Serve inside the kick itself (default false: on the next event-loop turn,
   * as a device thread would). Lets tests count the driver's own event-loop
   * turns: a completion is ready as soon as the request is published.
   */
  synchronous?: boolean;
  id?: string;
  deviceId?: number;
}

/** One request as the device saw it. */
export interface SeenRequest {
  queue: number;
  type: number;
  sector: number;
  /** Data bytes (IN/OUT) or payload num_sectors×512 (DISCARD/WRITE_ZEROES). */
  bytes: number;
  dataSegments: number;
  indirect: boolean;
  flags?: number;
}

const BASE_FEATURES = bits(
  VirtioF.VERSION_1,
  VirtioF.ACCESS_PLATFORM,
  VirtioF.ANY_LAYOUT,
  VirtioBlkF.FLUSH,
  VirtioBlkF.SIZE_MAX,
  VirtioBlkF.SEG_MAX,
  VirtioBlkF.BLK_SIZE,
  VirtioBlkF.TOPOLOGY,
  VirtioBlkF.MQ,
  VirtioBlkF.DISCARD,
  VirtioBlkF.WRITE_ZEROES,
);

interface VringSetup {
  num: number;
  base: number;
  addr?: VringAddresses;
  kick: number;
  call: number;
  enabled: boolean;
}

export class FakeBlkDevice extends FakeIotlb implements BlockTransport {
  readonly path = '/dev/fake-vhost-vdpa';
  readonly deviceId: number;
  disk: Buffer;
  readonly offered: bigint;
  readonly options: Required<Omit<FakeBlkOptions, 'features' | 'id' | 'deviceId'>> & { id: string };
  closed = false;
  negotiated = 0n;
  status = 0;
  readonly seen: SeenRequest[] = [];
  /** Limits or protocol rules the driver broke. Tests assert it stays empty. */
  readonly violations: string[] = [];
  rings: (DeviceRing | PackedServedRing)[] = [];
  kicks = 0;
  interruptsSent = 0;
  /** While true, chains are taken from the ring but not completed until {@link release}. */
  hold = false;
  /** Returns a status to answer instead of serving the request. */
  statusFor: ((request: SeenRequest) => number | undefined) | undefined;
  /** Rewrites a used entry (to corrupt it). */
  corrupt: ((head: number, length: number) => { id: number; length: number } | undefined) | undefined;
  /** When true the device completes requests without writing the status byte. */
  skipStatus = false;
  /** Resets so far (status 0 writes). */
  resets = 0;
  /** resetAsync() waits this long before resetting (a slow VDUSE daemon). */
  resetDelayMs = 0;
  /** When set, resetAsync() fails with this error (a broken device). */
  resetError: VdpaError | undefined;
  /** The config interrupt eventfd (VHOST_VDPA_SET_CONFIG_CALL), -1 when none. */
  configCall = -1;
  readonly #vrings: VringSetup[];
  readonly #held: { queue: number; chain: DeviceChain; length: number }[] = [];
  #scheduled = false;
  #kickPoller: NodeJS.Timeout | undefined;

  constructor(options: FakeBlkOptions = {}) {
    super();
    this.options = {
      capacity: options.capacity ?? 4 << 20,
      eventIdx: options.eventIdx ?? false,
      indirect: options.indirect ?? false,
      packed: options.packed ?? false,
      readOnly: options.readOnly ?? false,
      segMax: options.segMax ?? 32,
      sizeMax: options.sizeMax ?? 4096,
      blkSize: options.blkSize ?? 512,
      numQueues: options.numQueues ?? 1,
      maxDiscardSectors: options.maxDiscardSectors ?? 0xffffffff,
      maxWriteZeroesSectors: options.maxWriteZeroesSectors ?? 0xffffffff,
      queueMax: options.queueMax ?? 256,
      doorbell: options.doorbell ?? true,
      synchronous: options.synchronous ?? false,
      perPass: options.perPass ?? 5,
      id: options.id ?? 'fake-blk',
    };
    this.deviceId = options.deviceId ?? 2;
    this.offered =
      options.features ??
      BASE_FEATURES |
        (this.options.eventIdx ? bit(VirtioF.RING_EVENT_IDX) : 0n) |
        (this.options.indirect ? bit(VirtioF.RING_INDIRECT_DESC) : 0n) |
        (this.options.packed ? bit(VirtioF.RING_PACKED) : 0n) |
        (this.options.readOnly ? bit(VirtioBlkF.RO) : 0n);
    this.disk = Buffer.alloc(this.options.capacity);
    this.#vrings = Array.from({ length: this.options.numQueues }, () => ({
      num: 0,
      base: 0,
      kick: -1,
      call: -1,
      enabled: false,
    }));
  }

  // ---- BlockTransport ---------------------------------------------------------------------------

  negotiate(wanted: bigint): { offered: bigint; negotiated: bigint } {
    this.negotiated = (wanted | bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM)) & this.offered;
    this.status = 1 | 2 | 8;
    return { offered: this.offered, negotiated: this.negotiated };
  }

  setConfigCall(fd: number): void {
    this.configCall = fd;
  }

  /** Changes the capacity (the disk grows or shrinks) and raises a config interrupt. */
  resize(capacity: number): void {
    const disk = Buffer.alloc(capacity);
    this.disk.copy(disk, 0, 0, Math.min(capacity, this.disk.length));
    this.disk = disk;
    (this.options as { capacity: number }).capacity = capacity;
    this.configInterrupt();
  }

  /** Sets DEVICE_NEEDS_RESET and raises a config interrupt, as a device that hit an internal error does. */
  needsReset(): void {
    this.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    this.configInterrupt();
  }

  /** Signals the config eventfd. */
  configInterrupt(): void {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    writeSync(this.configCall, one);
  }

  /** Like VhostVdpaDevice.resetAsync: resets after `resetDelayMs`, or fails with `resetError`. */
  async resetAsync(): Promise<void> {
    if (this.resetDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, this.resetDelayMs));
    if (this.resetError !== undefined) throw this.resetError;
    this.reset();
  }

  getConfigSize(): number {
    return 60;
  }

  getConfig(offset: number, length: number): Buffer {
    const c = Buffer.alloc(60);
    const o = this.options;
    c.writeBigUInt64LE(BigInt(o.capacity / 512), 0);
    c.writeUInt32LE(o.sizeMax, 8);
    c.writeUInt32LE(o.segMax, 12);
    c.writeUInt32LE(o.blkSize, 20);
    c.writeUInt8(0, 24); // physical_block_exp
    c.writeUInt16LE(o.numQueues, 34);
    c.writeUInt32LE(o.maxDiscardSectors, 36);
    c.writeUInt32LE(1, 40);
    c.writeUInt32LE(1, 44);
    c.writeUInt32LE(o.maxWriteZeroesSectors, 48);
    c.writeUInt32LE(1, 52);
    c.writeUInt8(1, 56);
    return c.subarray(offset, offset + length);
  }

  getVringNum(): number {
    return this.options.queueMax;
  }

  #vring(index: number): VringSetup {
    const v = this.#vrings[index];
    if (v === undefined) throw new VdpaError(`queue ${index}: ENOBUFS`, { code: 'ENOBUFS', errno: 105 });
    return v;
  }

  setVringNum(index: number, num: number): void {
    this.#vring(index).num = num;
  }

  setVringBase(index: number, base: number): void {
    // Split: the next avail index, 0. Packed: avail and used slot 0 with wrap counters 1.
    const expected = this.packed ? 0x80008000 : 0;
    if (base !== expected)
      this.violations.push(`vring base 0x${base.toString(16)}, expected 0x${expected.toString(16)}`);
    this.#vring(index).base = base;
  }

  /** VIRTIO_F_RING_PACKED was negotiated. */
  get packed(): boolean {
    return (this.negotiated & bit(VirtioF.RING_PACKED)) !== 0n;
  }

  setVringAddr(index: number, addr: VringAddresses): void {
    this.#vring(index).addr = addr;
  }

  setVringKick(index: number, fd: number): void {
    this.#vring(index).kick = fd;
  }

  setVringCall(index: number, fd: number): void {
    this.#vring(index).call = fd;
  }

  setVringEnable(index: number, enable: boolean): void {
    this.#vring(index).enabled = enable;
  }

  mapDoorbell(index: number): Doorbell {
    if (!this.options.doorbell) {
      throw new VdpaError('mmap: no notification area', { code: 'ENOTSUPP', errno: 524 });
    }
    return new Doorbell(index, {
      mapped: true,
      notify16: (value: number) => this.kick(value),
      notify32: () => this.violations.push('32-bit doorbell store without NOTIFICATION_DATA'),
      unmap: () => undefined,
    });
  }

  getStatus(): number {
    return this.status;
  }

  setStatus(status: number): void {
    if (status === 0) {
      this.resets++;
      this.#stop();
      this.status = 0;
      // Like vhost-vdpa without IOTLB_PERSIST: vhost keeps its IOTLB (the same IOVAs cannot be mapped again),
      // but the parent cleans its own maps: the device sees nothing until they are sent again.
      this.cleanDeviceMaps();
      return;
    }
    if ((status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0 && (this.status & VIRTIO_CONFIG_S_DRIVER_OK) === 0) {
      const ringOptions = {
        eventIdx: (this.negotiated & bit(VirtioF.RING_EVENT_IDX)) !== 0n,
        indirect: (this.negotiated & bit(VirtioF.RING_INDIRECT_DESC)) !== 0n,
      };
      this.rings = this.#vrings.map((v) =>
        v.enabled && v.addr !== undefined
          ? this.packed
            ? new PackedServedRing(
                // With EVENT_IDX the packed driver may ask for DESC interrupts; the device honours them.
                new PackedDeviceRing(this.space.translate, v.num, v.addr, { ...ringOptions, base: v.base }),
              )
            : new DeviceRing(this.space.translate, v.num, v.addr, ringOptions)
          : (undefined as unknown as DeviceRing),
      );
      if (!this.options.doorbell) {
        // Watch the kick eventfds the way the kernel does (here: by polling them).
        this.#kickPoller = setInterval(() => {
          const buf = Buffer.alloc(8);
          this.#vrings.forEach((v, i) => {
            try {
              if (v.kick >= 0 && readSync(v.kick, buf) === 8) this.kick(i);
            } catch {
              // EAGAIN: not kicked.
            }
          });
        }, 1);
      }
    }
    this.status = status;
  }

  reset(): void {
    this.setStatus(0);
  }

  close(): void {
    this.reset();
    this.closed = true;
  }

  // ---- device behaviour -------------------------------------------------------------------------

  /** A notification for queue `index`. */
  kick(index: number): void {
    this.kicks++;
    if (index >= this.rings.length) this.violations.push(`kick for unknown queue ${index}`);
    if (this.options.synchronous) this.#serve();
    else this.#schedule();
  }

  /** Completes every held request. */
  release(): void {
    this.hold = false;
    for (const h of this.#held.splice(0)) this.#complete(h.queue, h.chain.head, h.length);
  }

  /** Requests taken from the rings and held. */
  get heldCount(): number {
    return this.#held.length;
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#serve();
    });
  }

  #serve(): void {
    if ((this.status & VIRTIO_CONFIG_S_DRIVER_OK) === 0) return;
    let more = false;
    this.rings.forEach((ring, queue) => {
      if (ring === undefined) return;
      for (let n = 0; n < this.options.perPass; n++) {
        const chain = ring.pop();
        // Like QEMU's virtqueue_pop(): with EVENT_IDX, ask to be kicked when the next chain is published.
        if (ring.eventIdx) ring.setAvailEvent(ring.lastAvail);
        if (chain === undefined) return;
        const length = this.#handle(queue, chain);
        if (this.hold) this.#held.push({ queue, chain, length });
        else this.#complete(queue, chain.head, length);
      }
      if (ring.pending > 0) more = true;
    });
    if (more) this.#schedule();
  }

  #complete(queue: number, head: number, length: number): void {
    const ring = this.rings[queue];
    if (ring === undefined) return;
    const override = this.corrupt?.(head, length);
    const id = override?.id ?? head;
    const used = override?.length ?? length;
    const interrupt = ring instanceof PackedServedRing ? ring.complete(head, id, used) : ring.push(id, used);
    if (interrupt) {
      this.interruptsSent++;
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      writeSync(this.#vrings[queue].call, one);
    }
  }

  /** Serves one chain; returns the used length (bytes written, status included). */
  #handle(queue: number, chain: DeviceChain): number {
    const o = this.options;
    const fail = (why: string): void => {
      this.violations.push(why);
    };
    const header = chain.readable[0];
    if (header === undefined || header.length !== 16) {
      fail(`header of ${header?.length} bytes`);
      return 0;
    }
    const statusBuf = chain.writable[chain.writable.length - 1];
    if (statusBuf === undefined || statusBuf.length < 1) {
      fail('no status byte');
      return 0;
    }
    const h = new DataView(header.buffer, header.byteOffset, 16);
    const type = h.getUint32(0, true);
    const sector = Number(h.getBigUint64(8, true));
    const outData = chain.readable.slice(1);
    const inData = chain.writable.slice(0, -1);
    if (statusBuf.length > 1) inData.push(statusBuf.subarray(0, statusBuf.length - 1));
    const seen: SeenRequest = {
      queue,
      type,
      sector,
      bytes: 0,
      dataSegments: type === VIRTIO_BLK_T_OUT ? outData.length : inData.length,
      indirect: chain.indirect,
    };
    let written = 0;
    let status: number = VIRTIO_BLK_S_OK;
    const segmentsOk = (segments: Uint8Array[]): boolean => {
      if (segments.length > o.segMax) fail(`${segments.length} data segments > seg_max ${o.segMax}`);
      for (const s of segments)
        if (s.length > o.sizeMax) fail(`segment of ${s.length} bytes > size_max ${o.sizeMax}`);
      return true;
    };
    if (type === VIRTIO_BLK_T_IN || type === VIRTIO_BLK_T_OUT) {
      const segments = type === VIRTIO_BLK_T_IN ? inData : outData;
      segmentsOk(segments);
      const bytes = segments.reduce((n, s) => n + s.length, 0);
      seen.bytes = bytes;
      const offset = sector * 512;
      if (bytes % o.blkSize !== 0 || offset % o.blkSize !== 0) fail(`unaligned ${type} ${offset}+${bytes}`);
      if (offset + bytes > o.capacity) {
        fail(`${type} beyond capacity`);
        status = VIRTIO_BLK_S_IOERR;
      } else if (type === VIRTIO_BLK_T_OUT && o.readOnly) {
        fail('write to a read-only device');
        status = VIRTIO_BLK_S_IOERR;
      }
      this.seen.push(seen);
      status = this.statusFor?.(seen) ?? status;
      if (status === VIRTIO_BLK_S_OK) {
        let at = offset;
        for (const s of segments) {
          if (type === VIRTIO_BLK_T_IN) {
            s.set(this.disk.subarray(at, at + s.length));
            written += s.length;
          } else {
            this.disk.set(s, at);
          }
          at += s.length;
        }
      }
    } else if (type === VIRTIO_BLK_T_FLUSH) {
      if (sector !== 0) fail('flush with sector ≠ 0');
      this.seen.push(seen);
      status = this.statusFor?.(seen) ?? status;
    } else if (type === VIRTIO_BLK_T_GET_ID) {
      if (sector !== 0) fail('GET_ID with sector ≠ 0');
      this.seen.push(seen);
      status = this.statusFor?.(seen) ?? status;
      const id = Buffer.alloc(20);
      id.write(o.id, 'latin1');
      if (inData.length > 0) {
        inData[0].set(id.subarray(0, inData[0].length));
        written = Math.min(20, inData[0].length);
      }
    } else if (type === VIRTIO_BLK_T_DISCARD || type === VIRTIO_BLK_T_WRITE_ZEROES) {
      if (sector !== 0) fail(`${type} with header sector ≠ 0`);
      if (outData.length !== 1 || outData[0].length !== 16) fail(`${type} payload shape`);
      const p = new DataView(outData[0].buffer, outData[0].byteOffset, 16);
      const start = Number(p.getBigUint64(0, true));
      const count = p.getUint32(8, true);
      const flags = p.getUint32(12, true);
      seen.sector = start;
      seen.bytes = count * 512;
      seen.flags = flags;
      this.seen.push(seen);
      const max = type === VIRTIO_BLK_T_DISCARD ? o.maxDiscardSectors : o.maxWriteZeroesSectors;
      if (count > max) fail(`${type} of ${count} sectors > max ${max}`);
      if ((start + count) * 512 > o.capacity) fail(`${type} beyond capacity`);
      if (type === VIRTIO_BLK_T_DISCARD && flags !== 0) status = VIRTIO_BLK_S_UNSUPP;
      status = this.statusFor?.(seen) ?? status;
      if (status === VIRTIO_BLK_S_OK && type === VIRTIO_BLK_T_WRITE_ZEROES) {
        this.disk.fill(0, start * 512, (start + count) * 512);
      }
    } else {
      this.seen.push(seen);
      status = this.statusFor?.(seen) ?? VIRTIO_BLK_S_UNSUPP;
    }
    if (!this.skipStatus) statusBuf[statusBuf.length - 1] = status;
    return written + 1;
  }

  #stop(): void {
    if (this.#kickPoller !== undefined) clearInterval(this.#kickPoller);
    this.#kickPoller = undefined;
    this.rings = [];
    this.#held.length = 0;
  }
}

/**
 * For a mocha `describe`: returns `start(fakeOptions, options)`, which opens a
 * BlockDevice on a new fake, and registers an `afterEach` that closes them all
 * and asserts the driver broke no device rule.
 */
export function fakeBlockDevices(): {
  (fakeOptions?: FakeBlkOptions, options?: BlockDeviceOptions): { fake: FakeBlkDevice; dev: BlockDevice };
  /** A fake that is closed (and checked) after the test, for tests that open it themselves. */
  fake(fakeOptions?: FakeBlkOptions): FakeBlkDevice;
} {
  const open: BlockDevice[] = [];
  const fakes: FakeBlkDevice[] = [];
  afterEach(async () => {
    for (const dev of open.splice(0)) await dev.close({ drain: false, timeoutMs: 100 });
    for (const fake of fakes.splice(0)) {
      assert.deepEqual(fake.violations, [], 'the driver broke a device rule');
      fake.close();
    }
  });
  const fake = (fakeOptions: FakeBlkOptions = {}): FakeBlkDevice => {
    const created = new FakeBlkDevice(fakeOptions);
    fakes.push(created);
    return created;
  };
  const start = (fakeOptions: FakeBlkOptions = {}, options: BlockDeviceOptions = {}) => {
    const created = fake(fakeOptions);
    const dev = BlockDevice.open(created, options);
    open.push(dev);
    return { fake: created, dev };
  };
  return Object.assign(start, { fake });
}
