/**
 * The device side of a virtqueue, over the driver's memory: the half of the
 * virtio ring protocol a VDUSE daemon implements. Split (device-split.ts) and
 * packed (device-packed.ts) rings share one interface, {@link DeviceQueue}.
 *
 * A device serves a queue like this (one thread — the VDUSE Worker):
 *
 * ```ts
 * const q = createDeviceQueue({ format, index, size, descIova, driverIova, deviceIova, memory, eventIdx, indirect });
 * // on every kick (and once at start):
 * for (;;) {
 *   q.disableKicks();
 *   for (let chain = q.pop(); chain; chain = q.pop()) {
 *     const written = chain.error ? 0 : serve(chain); // read chain.readable, fill chain.writable
 *     q.push(chain, written);
 *   }
 *   if (q.flush()) injectIrq();                     // VDUSE_VQ_INJECT_IRQ
 *   if (!q.enableKicks()) break;                    // false: nothing arrived meanwhile
 * }
 * ```
 *
 * The driver is trusted for nothing. A malformed chain comes back from pop()
 * with {@link DeviceChain.error} set and no views; the device completes it
 * with `push(chain, 0)` and goes on. Only a ring the device cannot use at
 * all (an avail index that jumped by more than the ring holds, ring memory
 * unmapped, a packed chain that never ends) makes pop() throw
 * `ERR_QUEUE_CORRUPT`: the device then sets VIRTIO_CONFIG_S_NEEDS_RESET and
 * stops serving the queue.
 */
import type { VdpaError } from '../errors';
import { PackedDeviceQueue } from './device-packed';
import { SplitDeviceQueue } from './device-split';
import type { DriverMemory } from './driver-memory';

export { DEFAULT_MAX_SEGMENTS } from './device-chain';

/**
 * One descriptor chain as the device sees it. Records are pooled: the object
 * and its `readable`/`writable` arrays are reused once the chain is pushed, so
 * a chain's views are valid until {@link DeviceQueue.push} — copy what must
 * outlive it.
 */
export interface DeviceChain {
  /** What the used entry must name: split, the head descriptor index; packed, the buffer id. */
  readonly id: number;
  /** Views of the device-readable buffers, in order (several per buffer when it spans IOTLB ranges). */
  readonly readable: Buffer[];
  /** Views of the device-writable buffers, in order. */
  readonly writable: Buffer[];
  /**
   * Ring index of the chain's second descriptor (split: the head's `next`;
   * packed: the slot after the head), or undefined when the chain is one ring
   * descriptor (an indirect chain, or a lone buffer). Only the `not-head`
   * fault uses it: a used id that is in flight but is not a head.
   */
  readonly secondDescriptor: number | undefined;
  /** Total bytes of `readable`. */
  readonly readableBytes: number;
  /** Total bytes of `writable` (the most `push()` may report). */
  readonly writableBytes: number;
  /**
   * Set (`ERR_QUEUE_CORRUPT`, saying what is wrong) when the chain is
   * malformed: a descriptor loop, an index out of the table, a buffer not
   * mapped or without the permission, a readable buffer after a writable one,
   * an indirect descriptor not negotiated or nested or with NEXT, a bad
   * indirect table, too many buffers. The views are then empty; the chain is
   * consumed and must still be pushed (with 0 bytes).
   */
  readonly error: VdpaError | undefined;
}

/**
 * Where a queue stands, as VDUSE's GET_VQ_STATE answer and VDUSE_VQ_GET_INFO
 * carry it: `split.availIndex` is vduse_vq_state_split.avail_index; the
 * packed fields are vduse_vq_state_packed's last_avail_counter,
 * last_avail_idx, last_used_counter and last_used_idx.
 */
export type DeviceQueueState =
  | {
      /** The next avail-ring index the device will consume. */
      split: { availIndex: number };
    }
  | {
      packed: {
        /** The driver's wrap counter the next available descriptor carries (0/1). */
        availCounter: number;
        /** Ring slot of the next available descriptor. */
        availIndex: number;
        /** The device's used wrap counter (0/1). */
        usedCounter: number;
        /** Ring slot of the next used descriptor. */
        usedIndex: number;
      };
    };

/** The device side of one virtqueue. Not thread-safe: one thread serves a queue. */
export interface DeviceQueue {
  /** Ring format. */
  readonly format: 'split' | 'packed';
  /** Queue index. */
  readonly index: number;
  /** Number of descriptors. */
  readonly size: number;
  /** Chains popped and not yet pushed. */
  readonly inFlight: number;
  /**
   * The next available chain, or undefined when the driver made none
   * available. A malformed chain is returned too, with `error` set.
   * @throws VdpaError `ERR_QUEUE_CORRUPT` when the ring itself is unusable
   *   (avail index jumped by more than the ring size, ring memory unmapped,
   *   packed: a chain with NEXT on every descriptor of the ring).
   */
  pop(): DeviceChain | undefined;
  /**
   * Writes the used entry of `chain` with `written` device-written bytes; the
   * driver sees it at the next {@link flush}. The chain (and its views) must
   * not be used afterwards.
   * @throws VdpaError `ERR_INVALID_ARG` for a chain not popped from this queue
   *   or already pushed, or `written` beyond its writable bytes.
   */
  push(chain: DeviceChain, written: number): void;
  /**
   * Writes a used entry naming any `id` with any `written` (fault injection:
   * a wrong or duplicate id, an impossible length). Checks nothing and
   * releases no chain: a chain answered only this way stays counted in
   * {@link DeviceQueue.inFlight} (and out of the record pool) until the queue is
   * recreated. Packed rings move the used slot by one descriptor.
   */
  pushRaw(id: number, written: number): void;
  /**
   * Publishes the used entries pushed since the last flush (split: one
   * used-index store; packed: the descriptors' flags, the first last) and
   * returns true when the driver wants an interrupt for them: split,
   * VRING_AVAIL_F_NO_INTERRUPT clear or with EVENT_IDX used_event crossed;
   * packed, driver event flags ENABLE, or DESC with the event slot crossed.
   * False when nothing was pushed.
   */
  flush(): boolean;
  /**
   * Asks the driver to kick again (split: clears VRING_USED_F_NO_NOTIFY or
   * with EVENT_IDX sets avail_event to the next chain; packed: device event
   * ENABLE, or DESC at the next slot), then re-checks the ring: returns true
   * when a chain arrived meanwhile, which the driver may not kick for — pop
   * it now.
   */
  enableKicks(): boolean;
  /** Tells the driver kicks are not needed (a hint; with split EVENT_IDX nothing to write). */
  disableKicks(): void;
  /** For GET_VQ_STATE. */
  state(): DeviceQueueState;
}

/** Options of {@link createDeviceQueue}: what VDUSE_VQ_GET_INFO and the negotiated features say. */
export interface DeviceQueueOptions {
  /** VIRTIO_F_RING_PACKED negotiated: 'packed'. */
  format: 'split' | 'packed';
  /** Queue index. */
  index: number;
  /** Number of descriptors (split: a power of two; packed: 1–32768). */
  size: number;
  /** IOVA of the descriptor table (split) or ring (packed). */
  descIova: number;
  /** IOVA of the avail ring (split) or driver event suppression area (packed). */
  driverIova: number;
  /** IOVA of the used ring (split) or device event suppression area (packed). */
  deviceIova: number;
  /** The driver's memory. */
  memory: DriverMemory;
  /** VIRTIO_F_RING_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC negotiated. */
  indirect: boolean;
  /** Where to start (VDUSE_VQ_GET_INFO); default the start of a fresh ring. */
  state?: DeviceQueueState;
  /** Most buffers one chain may have (default {@link DEFAULT_MAX_SEGMENTS}); more is malformed. */
  maxSegments?: number;
}

/**
 * The device side of a queue the driver set up. The ring memory must already
 * be mapped (or reachable through `memory.onMiss`).
 * @throws VdpaError `ERR_INVALID_ARG` for a bad size, IOVA or state;
 *   `ERR_QUEUE_CORRUPT` when a ring structure is not mapped with the right
 *   permission in one range, or misaligned.
 */
export function createDeviceQueue(options: DeviceQueueOptions): DeviceQueue {
  return options.format === 'packed' ? new PackedDeviceQueue(options) : new SplitDeviceQueue(options);
}
