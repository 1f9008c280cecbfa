/**
 * The option and operation types of {@link BlockDevice} (lib/blk/block-device.ts).
 * @module
 */
import type { OpenOptions } from '../device';
import type { CompletionMode } from '../virtqueue/completions';
import type { DriverCoreStats } from '../virtio/types';

/** Options for {@link BlockDevice.open}. */
export interface BlockDeviceOptions {
  /** Request queues to use (default 1); more than one needs VIRTIO_BLK_F_MQ and at most `num_queues`. */
  queues?: number;
  /** Descriptors per queue: rounded down to a power of two, capped by the device (default 256). */
  queueSize?: number;
  /** How completions are noticed (default `'interrupt'`). */
  completion?: CompletionMode;
  /** Poll mode: µs to spin re-checking before yielding to the event loop (default 0). */
  pollSpinMicros?: number;
  /**
   * Poll mode: longest time (µs, default 1000) the poll loop keeps chaining
   * rounds between microtask checkpoints — picking up requests resubmitted from
   * completion callbacks without an event-loop turn — before it lets timers
   * and I/O run (see lib/virtqueue/completions.ts).
   */
  pollSliceMicros?: number;
  /** Bytes of DMA memory for copying ordinary Buffers (default 4 MiB, at least two maximal requests). */
  bounceBytes?: number;
  /** Largest single device request in bytes (default 1 MiB); larger requests are split. */
  maxTransferBytes?: number;
  /** Refuse writes, discards and write-zeroes even if the device allows them. */
  readOnly?: boolean;
  /**
   * Feature bits not to negotiate, e.g. `bit(VirtioF.RING_EVENT_IDX)` to compare
   * notification strategies or `bit(VirtioBlkF.DISCARD)` to test the driver
   * without discard.
   */
  excludeFeatures?: bigint;
  /** Use the doorbell page when the device has one (default true). */
  doorbell?: boolean;
  /**
   * Virtqueue format: `'split'`, `'packed'` (VIRTIO_F_RING_PACKED; fails with
   * `ERR_NEGOTIATION` if the device does not offer it) or `'auto'` (default:
   * packed when offered, split otherwise).
   */
  ring?: 'split' | 'packed' | 'auto';
  /**
   * Deadline of each device request after it entered the ring, in ms (default
   * 30000, as blk-mq; 0 = none). A late request rejects with `ETIMEDOUT` and
   * the driver resets the device to recover (see docs/blk.md).
   */
  requestTimeoutMs?: number;
  /** Options for {@link VhostVdpaDevice.open} when a path is given. */
  open?: OpenOptions;
}

/** Counters, for tests and benchmarks. */
export type BlockDeviceStats = DriverCoreStats;

/** Per-call options of the I/O methods. */
export interface RequestOptions {
  /**
   * Aborting rejects the request at once with an `AbortError` (`code`
   * `'ABORT_ERR'`). Not yet in a ring: the device never sees it. In flight:
   * the device still completes it (its result is discarded), and a zero-copy
   * buffer stays reserved — {@link BlockDevice.freeBuffer} refuses it — until
   * then or until the device is reset.
   */
  signal?: AbortSignal;
}

/** One element of {@link BlockDevice.submit}. */
export type BlockOperation =
  | { op: 'read'; offset: number; length: number }
  | { op: 'readInto'; offset: number; buffer: Uint8Array }
  | { op: 'write'; offset: number; data: Uint8Array }
  | { op: 'flush' }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'writeZeroes'; offset: number; length: number; unmap?: boolean };
