/**
 * Our driver-side virtqueue (lib/virtqueue) and the VDUSE device side
 * (lib/vduse) on the same memfd-backed memory, for host tests: the ring in
 * one DmaRegion, the data buffers in another, both visible to the device
 * through a DriverMemory (the data split in two IOTLB ranges so buffers can
 * straddle them).
 */
import {
  DmaRegion,
  PackedVirtqueue,
  packedRingLayout,
  SplitVirtqueue,
  splitRingLayout,
  Virtqueue,
} from '../../lib';
import { createDeviceQueue, DeviceQueue, DeviceQueueState } from '../../lib/vduse/device-queue';
import { DriverMemory } from '../../lib/vduse/driver-memory';

export const RING_IOVA = 0x10000;
export const DATA_IOVA = 0x1000000;
/** Bytes of data memory each chain index owns. */
export const AREA = 8192;

export interface PairOptions {
  format: 'split' | 'packed';
  size: number;
  indirectEntries?: number;
  eventIdx?: boolean;
  /** Negotiated on the device side (default: indirectEntries > 0). */
  deviceIndirect?: boolean;
  maxSegments?: number;
}

export interface Pair {
  driver: Virtqueue<number>;
  memory: DriverMemory;
  ring: DmaRegion;
  data: DmaRegion;
  dataBytes: Buffer;
  kicks(): number;
  /** A device queue over the driver's rings (optionally from a state). */
  device(state?: DeviceQueueState): DeviceQueue;
}

export function makePair(o: PairOptions): Pair {
  const indirectEntries = o.indirectEntries ?? 0;
  const layout =
    o.format === 'split'
      ? splitRingLayout(o.size, indirectEntries)
      : packedRingLayout(o.size, indirectEntries);
  const ring = DmaRegion.allocate(layout.bytes);
  const data = DmaRegion.allocate(o.size * AREA);
  let kicks = 0;
  const common = {
    index: 0,
    size: o.size,
    memory: ring.buffer,
    byteOffset: 0,
    iova: RING_IOVA,
    indirectEntries,
    eventIdx: o.eventIdx ?? false,
    notify: () => {
      kicks++;
    },
  };
  const driver: Virtqueue<number> =
    o.format === 'split' ? new SplitVirtqueue<number>(common) : new PackedVirtqueue<number>(common);
  const memory = new DriverMemory();
  const ringBytes = Buffer.from(ring.buffer);
  memory.add({
    start: RING_IOVA,
    last: RING_IOVA + ringBytes.length - 1,
    readable: true,
    writable: true,
    buffer: ringBytes,
  });
  const dataBytes = Buffer.from(data.buffer);
  // Two IOTLB ranges over the data, split off any area boundary so buffers straddle it.
  const cut = Math.floor(dataBytes.length / 2) + 1234;
  memory.add({
    start: DATA_IOVA,
    last: DATA_IOVA + cut - 1,
    readable: true,
    writable: true,
    buffer: dataBytes.subarray(0, cut),
  });
  memory.add({
    start: DATA_IOVA + cut,
    last: DATA_IOVA + dataBytes.length - 1,
    readable: true,
    writable: true,
    buffer: dataBytes.subarray(cut),
  });
  const addresses = driver.addresses;
  return {
    driver,
    memory,
    ring,
    data,
    dataBytes,
    kicks: () => kicks,
    device: (state) =>
      createDeviceQueue({
        format: o.format,
        index: 0,
        size: o.size,
        descIova: Number(addresses.desc),
        driverIova: Number(addresses.avail),
        deviceIova: Number(addresses.used),
        memory,
        eventIdx: o.eventIdx ?? false,
        indirect: o.deviceIndirect ?? indirectEntries > 0,
        state,
        maxSegments: o.maxSegments,
      }),
  };
}

/** A deterministic PRNG (mulberry32), so a failing seed can be replayed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Concatenation of views (test helper; the device side never copies). */
export function gather(views: Buffer[]): Buffer {
  return Buffer.concat(views);
}
