/**
 * The queues of a driver: for each, one DMA region holding the ring and the
 * per-descriptor request slots (device memory a protocol driver keeps per
 * chain: a virtio-blk header and status byte, say), a notifier (doorbell or
 * kick eventfd) and a call eventfd.
 */
import { EventFd } from '../eventfd';
import { attachVirtqueue, QueueNotifier, VirtqueueTransport } from '../virtqueue/attach';
import { PackedVirtqueue, packedRingLayout } from '../virtqueue/packed';
import { SplitVirtqueue, splitRingLayout } from '../virtqueue/split';
import type { Virtqueue, VirtqueueFormat } from '../virtqueue/types';
import type { DmaSpace } from './dma-space';
import type { DeviceOp } from './request';

/** One queue of a driver. */
export interface DriverQueue {
  readonly vq: Virtqueue<DeviceOp>;
  readonly notifier: QueueNotifier;
  readonly call: EventFd;
  /** The per-descriptor slots: slot `i` (the chain whose index is i) at byte `i * slotSize`. */
  readonly slots8: Uint8Array;
  readonly slots32: Uint32Array;
  /** IOVA of slot 0. */
  readonly slotsIova: number;
}

/** How to build the queues. */
export interface QueueLayout {
  count: number;
  size: number;
  format: VirtqueueFormat;
  /** Descriptors per indirect table; 0 without VIRTIO_F_RING_INDIRECT_DESC. */
  indirectEntries: number;
  eventIdx: boolean;
  /** Bytes of device memory per descriptor slot (a multiple of 16). */
  slotSize: number;
  /** Use a doorbell page where the device has one. */
  doorbell: boolean;
  /** Region names (shown in /proc/PID/maps): `${name}-vqN`. */
  name: string;
  /**
   * The address space (ASID) each queue's ring and slot memory is mapped in,
   * by queue index (default: all in ASID 0). A net control queue whose group
   * was moved to ASID 1 needs its ring there.
   */
  asids?: readonly number[];
}

/**
 * Allocates and maps the queues' memory in `dma` and creates the rings,
 * notifiers and call eventfds. Nothing is told to the device yet: see
 * {@link attachQueues}.
 */
export function createQueues(
  transport: VirtqueueTransport,
  dma: DmaSpace,
  layout: QueueLayout,
): DriverQueue[] {
  const ring =
    layout.format === 'packed'
      ? packedRingLayout(layout.size, layout.indirectEntries)
      : splitRingLayout(layout.size, layout.indirectEntries);
  const ringBytes = Math.ceil(ring.bytes / layout.slotSize) * layout.slotSize;
  const slotBytes = layout.size * layout.slotSize;
  const entries = dma.allocateFixed(
    Array.from({ length: layout.count }, (_, i) => ({
      bytes: ringBytes + slotBytes,
      name: `${layout.name}-vq${i}`,
      asid: layout.asids?.[i] ?? 0,
    })),
  );
  const queues: DriverQueue[] = [];
  try {
    for (let i = 0; i < layout.count; i++) {
      const { region, iova } = entries[i];
      const notifier = QueueNotifier.create(transport, i, layout.doorbell);
      const call = new EventFd();
      const options = {
        index: i,
        size: layout.size,
        memory: region.buffer,
        byteOffset: 0,
        iova,
        indirectEntries: layout.indirectEntries,
        eventIdx: layout.eventIdx,
        notify: () => notifier.notify(),
      };
      queues.push({
        vq:
          layout.format === 'packed'
            ? new PackedVirtqueue<DeviceOp>(options)
            : new SplitVirtqueue<DeviceOp>(options),
        notifier,
        call,
        slots8: new Uint8Array(region.buffer, ringBytes, slotBytes),
        slots32: new Uint32Array(region.buffer, ringBytes, slotBytes / 4),
        slotsIova: iova + ringBytes,
      });
    }
  } catch (error) {
    closeQueues(queues);
    throw error;
  }
  return queues;
}

/** Programs every queue on the device (after negotiation, before DRIVER_OK). */
export function attachQueues(transport: VirtqueueTransport, queues: readonly DriverQueue[]): void {
  for (const q of queues) attachVirtqueue(transport, q.vq, q.notifier.kick.fd, q.call.fd);
}

/** Closes notifiers and call eventfds (the memory belongs to the DmaSpace). Idempotent. */
export function closeQueues(queues: readonly DriverQueue[]): void {
  for (const q of queues) {
    q.notifier.close();
    q.call.close();
  }
}
