/**
 * What a driver needs from a virtqueue, whatever its format: the split ring
 * ({@link SplitVirtqueue}, virtio 1.x §2.7) and the packed ring
 * ({@link PackedVirtqueue}, §2.8) both implement {@link Virtqueue}, so a
 * driver (lib/blk) builds, publishes and collects chains the same way.
 */
import type { VdpaError } from '../errors';
import type { VringAddresses } from '../uapi';

/** Counters for tests and benchmarks. */
export interface VirtqueueStats {
  /** Chains added. */
  chains: number;
  /** Chains that went out as one indirect descriptor. */
  indirectChains: number;
  /** publish() calls that exposed new chains. */
  publishes: number;
  /** Notifications sent. */
  kicks: number;
  /** Notifications the device asked us to skip (split: NO_NOTIFY or avail_event; packed: its event suppression). */
  kicksSuppressed: number;
  /** Used entries consumed. */
  completions: number;
}

/** The ring format: split (§2.7) or packed (VIRTIO_F_RING_PACKED, §2.8). */
export type VirtqueueFormat = 'split' | 'packed';

/**
 * The driver-facing surface of a virtqueue. `T` is the caller's token for a
 * chain, handed back on completion. See {@link SplitVirtqueue} for the full
 * contract of each member; the packed ring keeps it, with the buffer id in
 * place of the split ring's head descriptor index.
 */
export interface Virtqueue<T> {
  /** Ring format. */
  readonly format: VirtqueueFormat;
  /** Queue index. */
  readonly index: number;
  /** Number of descriptors. */
  readonly size: number;
  /** Descriptors per indirect table (0 = indirect descriptors not used). */
  readonly indirectEntries: number;
  /** VIRTIO_F_RING_EVENT_IDX in use. */
  readonly eventIdx: boolean;
  /**
   * IOVAs for VHOST_SET_VRING_ADDR: split — descriptor table, avail ring, used
   * ring; packed — descriptor ring, driver event suppression area, device event
   * suppression area (in the `desc`, `avail`, `used` fields respectively).
   */
  readonly addresses: VringAddresses;
  /** The value for VHOST_SET_VRING_BASE of a new or just-reset queue. */
  readonly vringBase: number;
  /** Counters (monotonic). */
  readonly stats: VirtqueueStats;
  /** Free descriptors in the ring. */
  readonly numFree: number;
  /** Chains added and not yet completed. */
  readonly inFlight: number;
  /** Chains added but not yet exposed by {@link publish}. */
  readonly unpublished: number;
  /** The error that broke this queue (a corrupt used ring), if any. */
  readonly broken: VdpaError | undefined;
  /** Ring descriptors a chain of `segments` buffers needs. */
  descriptorsFor(segments: number): number;
  /** True when a chain of `segments` buffers fits now. */
  canAdd(segments: number): boolean;
  /**
   * Starts a chain of exactly `segments` buffers. Returns an index in
   * [0, size) that is stable until the chain completes (callers index
   * per-request memory by it), or -1 when the ring is full.
   */
  begin(segments: number): number;
  /** Adds one buffer to the open chain. */
  push(iova: number, length: number, deviceWritable: boolean): void;
  /** Closes the chain (not yet visible to the device). Returns the index {@link begin} returned. */
  end(token: T): number;
  /** Makes the chains added since the last publish visible; at most one kick. Returns true when kicked. */
  publish(): boolean;
  /** Asks the device for (or to stop) interrupts. A hint only. */
  setInterrupts(enabled: boolean): void;
  /** True when the device has completed chains not yet collected. */
  hasCompletions(): boolean;
  /** Consumes every completion, checked against the driver's records. @throws `ERR_QUEUE_CORRUPT`. */
  collect(onUsed: (token: T, length: number) => void): number;
  /** Tokens of the chains in flight, without changing anything. */
  inFlightTokens(): T[];
  /** Forgets every chain and returns their tokens; the ring is empty and reusable. */
  reset(): T[];
}
