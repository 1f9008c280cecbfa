/**
 * The types of the driver core's contract (lib/virtio/driver.ts): what a
 * protocol driver supplies, the options it sets, what the core reports.
 * @module
 */
import type { VhostVdpaDevice } from '../device';
import type { VdpaError } from '../errors';
import type { VirtqueueTransport } from '../virtqueue/attach';
import type { CompletionMode } from '../virtqueue/completions';
import type { DmaTransport } from './dma-space';
import type { DriverQueue, QueueLayout } from './queues';
import type { DeviceOp, DriverRequest } from './request';

/** The device operations the core uses; {@link VhostVdpaDevice} has them all (host tests use a fake). */
export type DriverTransport = VirtqueueTransport &
  DmaTransport &
  Pick<
    VhostVdpaDevice,
    | 'deviceId'
    | 'negotiate'
    | 'getConfigSize'
    | 'getConfig'
    | 'getVringNum'
    | 'getStatus'
    | 'setStatus'
    | 'setConfigCall'
    | 'reset'
    | 'close'
  > & {
    /** Resets the device off the event-loop thread (a VDUSE daemon may take up to its msg_timeout to answer). */
    resetAsync?(): Promise<void>;
    /** Closes the device off the event-loop thread (close(2) resets it). */
    closeAsync?(): Promise<void>;
  };

/** What a protocol driver supplies to the core. */
export interface DriverProtocol<O extends DeviceOp> {
  /** A new (pooled) op. */
  newOp(): O;
  /**
   * Writes the chain of `op` into `queue.vq` between the core's `begin` and
   * `end`: exactly `op.segments` buffers. Data buffers are pushed with
   * {@link VirtioDriver.pushData}.
   */
  encode(op: O, queue: DriverQueue, head: number): void;
  /**
   * Decodes a completion (the request is not settled yet). Returns the error
   * the request fails with, or undefined when it succeeded. Bounced data is
   * copied out by the core afterwards.
   */
  complete(op: O, queue: DriverQueue, usedLength: number): Error | undefined;
  /** Names a request in messages, e.g. `read of 4096 bytes at offset 0`. */
  describe(request: DriverRequest): string;
  /** The config space changed: decode it, update the driver's getters, return what `'config-change'` carries. */
  configChanged(config: Buffer): unknown;
  /**
   * Optional: the device was reset and set up again by a recovery (state is
   * `'open'` again, before `'reset'` is emitted and the FIFO is served). A
   * driver with standing buffers ({@link DeviceOp.standing}, failed by the
   * reset) posts them again here.
   */
  restarted?(): void;
}

/** Options of the core, set by the protocol driver. */
export interface DriverCoreOptions {
  /** The features negotiated at open; recovery negotiates the same. */
  features: bigint;
  /** The config space read at open (a config interrupt or a recovery compares against it). */
  config: Buffer;
  queues: QueueLayout;
  /** Bytes of the bounce pool (0 = none) and its chunk size. */
  bounceBytes: number;
  bounceChunkSize: number;
  completion: CompletionMode;
  pollSpinMicros: number;
  pollSliceMicros: number;
  /** Deadline of an op after dispatch, in ms; 0 = none. */
  requestTimeoutMs: number;
  /** Close the transport on close() (it was opened by path). */
  ownsTransport: boolean;
  /**
   * Optional: called at every start — at open and after each recovery's reset —
   * once the queues are attached and before DRIVER_OK. For device set-up a
   * reset undoes, e.g. moving a control queue's group to its own address
   * space (VHOST_VDPA_SET_GROUP_ASID; vdpa_sim moves every group back to ASID 0
   * on reset). A throw fails the open or the recovery.
   */
  beforeDriverOk?: () => void;
  /** Emits the driver's events (`'config-change'`, `'reset'`, `'failed'`) on its EventEmitter. */
  emit: (event: string, ...args: unknown[]) => boolean;
}

/** Counters of the core. */
export interface DriverCoreStats {
  /** Requests accepted through the public API. */
  requests: number;
  /** Ops (device requests after splitting) placed in rings. */
  deviceRequests: number;
  /** Ops that went through the bounce pool. */
  bounced: number;
  /** Ops sent as one indirect descriptor. */
  indirect: number;
  /** Kicks sent, and kicks the device asked us to skip. */
  kicks: number;
  kicksSuppressed: number;
  /** Completions consumed. */
  completions: number;
  /** Call-eventfd wake-ups and poll-mode rounds. */
  interrupts: number;
  polls: number;
  /** Poll-mode rounds that waited for a full event-loop turn (setImmediate). */
  pollYields: number;
  /** Times the poll loop parked (no completion for 50 ms: interrupts on until the next one). */
  pollParks: number;
  /** Synchronous poll() calls. */
  syncPolls: number;
  /** Requests that missed their deadline (ETIMEDOUT). */
  timeouts: number;
  /** Requests rejected because their AbortSignal fired. */
  aborted: number;
  /** Recoveries (device resets) so far. */
  resets: number;
  /** Config interrupts received. */
  configInterrupts: number;
}

/** Options of {@link VirtioDriver.close}. */
export interface CloseOptions {
  /**
   * true (default): stop accepting requests and wait for those in flight or
   * queued to finish, up to `timeoutMs`; whatever is left then is rejected.
   * false: reject everything in flight or queued at once with `ERR_CLOSED`.
   * Either way the device is reset only once it has finished the requests it
   * already holds (or `timeoutMs` passed), so it never writes into freed memory.
   */
  drain?: boolean;
  /** Longest wait for the device, in ms (default 30000). */
  timeoutMs?: number;
}

/** What `'reset'` carries. */
export interface ResetEvent {
  /** Why the driver reset the device. */
  reason: VdpaError;
  /** Requests that were in flight and failed (`ERR_RESET`, or the culprit's own code). */
  failed: number;
}

/** The driver's life cycle: see docs/driver-core.md. */
export type DriverState = 'open' | 'recovering' | 'failed' | 'closing' | 'closed';
