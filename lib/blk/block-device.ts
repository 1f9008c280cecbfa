/**
 * A virtio-blk driver in user space over vhost-vdpa.
 *
 * Life of a request: the public method validates it (alignment, bounds,
 * read-only, supported operation) and splits it into device requests no larger
 * than the device's limits; those wait in one FIFO. On the next microtask (or
 * at once, for {@link BlockDevice.submit}; or, in poll mode, in the poll round
 * already queued after the current microtask checkpoint) the FIFO is drained
 * in order into the rings until a ring or the bounce pool is full —
 * back-pressure, never an error — and each ring is published with at most one
 * kick. Completions come from the call eventfd (or polling), free ring and
 * bounce space, and drain the FIFO again.
 *
 * Per-request device memory (the 16-byte header, discard payload, GET_ID
 * answer and the status byte) is preallocated per descriptor slot: a chain's
 * head index picks its slot, so the hot path allocates no DMA memory and
 * issues no system call besides the kick. Nor does it allocate JavaScript
 * objects beyond the request's Promise: {@link Request} and {@link Op} objects
 * are pooled, the last zero-copy buffer's DMA mapping is cached, and the
 * Promise executor is a shared function.
 */
import { VhostVdpaDevice, IotlbMapping, OpenOptions } from '../device';
import { BouncePool } from '../bounce';
import { ErrorCodes, VdpaError } from '../errors';
import { EventFd } from '../eventfd';
import { bit, bits, decodeFeatures, hasBit, VirtioBlkF, VirtioF } from '../features';
import { DmaRegion } from '../memory';
import { PAGE_SIZE } from '../native';
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FAILED,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_CONFIG_S_NEEDS_RESET,
  VIRTIO_ID_BLOCK,
} from '../uapi';
import { BlkConfig, decodeBlkConfig } from '../virtio-config';
import { attachVirtqueue, QueueNotifier, VirtqueueTransport } from '../virtqueue/attach';
import { CompletionDriver, CompletionMode } from '../virtqueue/completions';
import { PackedVirtqueue, packedRingLayout } from '../virtqueue/packed';
import { SplitVirtqueue, splitRingLayout } from '../virtqueue/split';
import type { Virtqueue, VirtqueueFormat } from '../virtqueue/types';
import {
  blkRequestTypeName,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_DWZ_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './protocol';

/** The device operations the driver uses; {@link VhostVdpaDevice} has them all (host tests use a fake). */
export type BlockTransport = VirtqueueTransport &
  Pick<
    VhostVdpaDevice,
    | 'deviceId'
    | 'closed'
    | 'negotiate'
    | 'getConfigSize'
    | 'getConfig'
    | 'getVringNum'
    | 'mapBatch'
    | 'unmapBatch'
    | 'mappings'
    | 'getStatus'
    | 'setStatus'
    | 'reset'
    | 'close'
  >;

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
  /** Options for {@link VhostVdpaDevice.open} when a path is given. */
  open?: OpenOptions;
}

/** Limits the driver enforces, from the device's config space. */
export interface BlockLimits {
  /** Logical block size: every offset and length is a multiple of it. */
  logicalBlockSize: number;
  /** Physical block size (logical × 2^physical_block_exp). */
  physicalBlockSize: number;
  /** Largest segment the device accepts (VIRTIO_BLK_F_SIZE_MAX); undefined = no limit. */
  sizeMax?: number;
  /** Most data segments per request (VIRTIO_BLK_F_SEG_MAX, or 1). */
  segMax: number;
  /** Data segments the driver puts in one request (seg_max, capped by the ring or indirect table). */
  segmentsPerRequest: number;
  /** Largest read/write sent as one device request (larger ones are split). */
  maxTransferBytes: number;
  /** The same for data copied through the bounce pool (one pool chunk per segment). */
  maxBounceTransferBytes: number;
  /** Largest discard sent as one device request; undefined without VIRTIO_BLK_F_DISCARD. */
  maxDiscardBytes?: number;
  /** Largest write-zeroes sent as one device request; undefined without VIRTIO_BLK_F_WRITE_ZEROES. */
  maxWriteZeroesBytes?: number;
  /** The device may deallocate on write-zeroes with `unmap`. */
  writeZeroesMayUnmap: boolean;
}

/** Counters, for tests and benchmarks. */
export interface BlockDeviceStats {
  /** Requests accepted through the public API. */
  requests: number;
  /** Device requests (after splitting) placed in rings. */
  deviceRequests: number;
  /** Device requests that went through the bounce pool. */
  bounced: number;
  /** Device requests sent as one indirect descriptor. */
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
  /** Synchronous {@link BlockDevice.poll} calls. */
  syncPolls: number;
}

/** One element of {@link BlockDevice.submit}. */
export type BlockOperation =
  | { op: 'read'; offset: number; length: number }
  | { op: 'readInto'; offset: number; buffer: Uint8Array }
  | { op: 'write'; offset: number; data: Uint8Array }
  | { op: 'flush' }
  | { op: 'discard'; offset: number; length: number }
  | { op: 'writeZeroes'; offset: number; length: number; unmap?: boolean };

/** Options for {@link BlockDevice.close}. */
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

const WANTED_FEATURES = bits(
  VirtioBlkF.SIZE_MAX,
  VirtioBlkF.SEG_MAX,
  VirtioBlkF.BLK_SIZE,
  VirtioBlkF.RO,
  VirtioBlkF.FLUSH,
  VirtioBlkF.TOPOLOGY,
  VirtioBlkF.MQ,
  VirtioBlkF.DISCARD,
  VirtioBlkF.WRITE_ZEROES,
  VirtioF.RING_EVENT_IDX,
  VirtioF.RING_INDIRECT_DESC,
);

// Per-descriptor-slot request memory: [header 16 | out payload 32 | in payload 64 | status 1 | pad].
const SLOT_SIZE = 128;
const SLOT_OUT = 16;
const SLOT_IN = 48;
const SLOT_IN_MAX = 64;
const SLOT_STATUS = 112;
/** Written before submission; a completion that still shows it means the device never wrote a status. */
const STATUS_UNSET = 0xff;
const DEFAULT_MAX_TRANSFER = 1 << 20;
const DEFAULT_BOUNCE_BYTES = 4 << 20;
const MAX_U32 = 0xffffffff;

/** A request made through the public API; it may become several device requests. Pooled once settled and finished. */
class Request {
  kind = '';
  offset = 0;
  length = 0;
  data: Uint8Array | undefined = undefined;
  result: unknown = undefined;
  remaining = 0;
  /** The promise was settled (possibly before the device finished, on close). */
  settled = false;
  error: VdpaError | undefined = undefined;
  resolve: (value: never) => void = noop;
  reject: (error: Error) => void = noop;
}

/** One device request (a descriptor chain). Pooled: the hot path reuses them. */
class Op {
  type = 0;
  /** Start in 512-byte sectors (header for IN/OUT, payload for DISCARD/WRITE_ZEROES). */
  sector = 0;
  /** Data bytes (IN/OUT) or range bytes (DISCARD/WRITE_ZEROES). */
  length = 0;
  /** DISCARD/WRITE_ZEROES flags. */
  flags = 0;
  /** A {@link BlockDevice.rawRequest}: payload from the request's data, response into its result. */
  raw = false;
  /** Byte offset of this piece inside the request's data. */
  offsetInRequest = 0;
  /** IOVA of the data when it already lives in mapped memory; -1 = bounce. */
  dataIova = -1;
  dmaBuffer: DmaBufferEntry | undefined = undefined;
  /** Ring buffers the chain has. */
  segments = 0;
  readonly chunks: Int32Array;
  chunkCount = 0;
  request: Request = new Request();
  queue: BlkQueue | undefined = undefined;
  head = -1;

  constructor(maxChunks: number) {
    this.chunks = new Int32Array(maxChunks);
  }
}

interface BlkQueue {
  readonly vq: Virtqueue<Op>;
  readonly notifier: QueueNotifier;
  readonly call: EventFd;
  readonly slots8: Uint8Array;
  readonly slots32: Uint32Array;
  readonly slotsIova: number;
}

interface DmaBufferEntry {
  readonly region: DmaRegion;
  readonly mapping: IotlbMapping;
  readonly iova: number;
  inFlight: number;
}

function noop(): void {}

/** A settled promise: `RESOLVED.then(f)` queues a microtask without the AsyncResource `queueMicrotask` creates. */
const RESOLVED = Promise.resolve();

/**
 * The Request the next Promise executor binds. A module-level executor reading
 * it allocates no closure per request; it is set right before `new Promise`,
 * which calls the executor synchronously.
 */
let executorTarget: Request | undefined;
function bindRequest(resolve: (value: never) => void, reject: (error: Error) => void): void {
  const request = executorTarget as Request;
  request.resolve = resolve;
  request.reject = reject;
}

/** A FIFO of device requests waiting for ring or bounce space (a growable ring buffer). */
class OpFifo {
  #items: (Op | undefined)[] = new Array<Op | undefined>(64);
  #head = 0;
  size = 0;

  push(op: Op): void {
    if (this.size === this.#items.length) {
      const grown = new Array<Op | undefined>(this.#items.length * 2);
      for (let i = 0; i < this.size; i++) grown[i] = this.#items[(this.#head + i) % this.#items.length];
      this.#items = grown;
      this.#head = 0;
    }
    this.#items[(this.#head + this.size) % this.#items.length] = op;
    this.size++;
  }

  peek(): Op {
    return this.#items[this.#head] as Op;
  }

  shift(): Op {
    const op = this.#items[this.#head] as Op;
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#items.length;
    this.size--;
    return op;
  }
}

/** A virtio-blk device driven from user space. Offsets, lengths and capacity are in bytes. */
export class BlockDevice {
  /** The vhost-vdpa device path. */
  readonly path: string;
  /** Capacity in bytes. */
  readonly capacity: number;
  /** Logical block size in bytes (offsets and lengths must be multiples of it). */
  readonly logicalBlockSize: number;
  /** Physical block size in bytes. */
  readonly physicalBlockSize: number;
  /** The device is read-only (VIRTIO_BLK_F_RO) or was opened with `readOnly`. */
  readonly readOnly: boolean;
  /** Negotiated features. */
  readonly features: bigint;
  /** The decoded config space. */
  readonly config: BlkConfig;
  /** Request queues the device offers (num_queues with VIRTIO_BLK_F_MQ, else 1). */
  readonly deviceQueues: number;
  /** Request queues in use. */
  readonly queueCount: number;
  /** Descriptors per queue. */
  readonly queueSize: number;
  /** VIRTIO_F_RING_EVENT_IDX in use. */
  readonly eventIdx: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC in use. */
  readonly indirect: boolean;
  /** Virtqueue format in use: `'packed'` when VIRTIO_F_RING_PACKED was negotiated. */
  readonly ring: VirtqueueFormat;
  /** How queues are notified. */
  readonly notification: 'doorbell' | 'eventfd';
  /** Limits enforced by the driver. */
  readonly limits: BlockLimits;

  readonly #transport: BlockTransport;
  readonly #ownsTransport: boolean;
  readonly #queues: BlkQueue[];
  readonly #bounce: BouncePool;
  readonly #regions: DmaRegion[];
  readonly #mappings: IotlbMapping[];
  readonly #completions: CompletionDriver;
  readonly #fifo = new OpFifo();
  readonly #opPool: Op[] = [];
  readonly #requestPool: Request[] = [];
  readonly #dmaBuffers = new Map<ArrayBuffer, DmaBufferEntry>();
  /** The last zero-copy buffer looked up, so a caller reusing a buffer skips the Map. */
  #lastDmaKey: ArrayBuffer | undefined;
  #lastDma: DmaBufferEntry | undefined;
  readonly #requestCounters = { requests: 0, deviceRequests: 0, bounced: 0, syncPolls: 0 };
  #outstanding = 0;
  #nextQueue = 0;
  #scheduled = false;
  #batching = 0;
  /**
   * Set when the last service found exactly one completion and left nothing
   * queued or in flight (queue depth 1): the next request, if it is then the
   * only one, is published at once instead of at the end of the checkpoint.
   */
  #solo = false;
  #state: 'open' | 'closing' | 'closed' = 'open';
  #failure: VdpaError | undefined;
  #closing: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;

  private constructor(
    transport: BlockTransport,
    ownsTransport: boolean,
    negotiated: bigint,
    config: BlkConfig,
    options: BlockDeviceOptions,
  ) {
    this.#transport = transport;
    this.#ownsTransport = ownsTransport;
    this.path = transport.path;
    this.features = negotiated;
    this.config = config;
    this.capacity = Number(config.capacity) * VIRTIO_BLK_SECTOR_SIZE;
    const blkSize = config.blkSize;
    this.logicalBlockSize =
      blkSize !== undefined && blkSize >= VIRTIO_BLK_SECTOR_SIZE && (blkSize & (blkSize - 1)) === 0
        ? blkSize
        : VIRTIO_BLK_SECTOR_SIZE;
    this.physicalBlockSize = this.logicalBlockSize * 2 ** (config.topology?.physicalBlockExp ?? 0);
    this.readOnly = config.readOnly || (options.readOnly ?? false);
    this.eventIdx = hasBit(negotiated, VirtioF.RING_EVENT_IDX);
    this.indirect = hasBit(negotiated, VirtioF.RING_INDIRECT_DESC);
    this.ring = hasBit(negotiated, VirtioF.RING_PACKED) ? 'packed' : 'split';
    this.deviceQueues = hasBit(negotiated, VirtioBlkF.MQ) ? Math.max(1, config.numQueues ?? 1) : 1;
    const queues = options.queues ?? 1;
    if (!Number.isInteger(queues) || queues < 1 || queues > this.deviceQueues) {
      throw new VdpaError(
        `${this.path} offers ${this.deviceQueues} request queue(s) ` +
          `(${hasBit(negotiated, VirtioBlkF.MQ) ? 'num_queues' : 'no VIRTIO_BLK_F_MQ'}); ${String(queues)} requested`,
        { code: ErrorCodes.OUT_OF_RANGE, path: this.path },
      );
    }
    this.queueCount = queues;
    const deviceMax = transport.getVringNum();
    this.queueSize = floorPowerOfTwo(Math.min(options.queueSize ?? 256, deviceMax, 32768));
    if (this.queueSize < 4) {
      throw new VdpaError(
        `queue size ${this.queueSize} is too small for block requests (device max ${deviceMax})`,
        {
          code: ErrorCodes.OUT_OF_RANGE,
          path: this.path,
        },
      );
    }
    this.limits = this.#computeLimits(options);
    const indirectEntries = this.indirect ? this.limits.segmentsPerRequest + 2 : 0;

    // DMA memory: per queue the ring plus the request slots, and one bounce pool; mapped in one IOTLB batch.
    const packed = this.ring === 'packed';
    const layout = packed
      ? packedRingLayout(this.queueSize, indirectEntries)
      : splitRingLayout(this.queueSize, indirectEntries);
    const ringBytes = Math.ceil(layout.bytes / SLOT_SIZE) * SLOT_SIZE;
    const chunkSize = Math.min(PAGE_SIZE, this.limits.sizeMax ?? PAGE_SIZE);
    const bounceBytes = Math.max(
      options.bounceBytes ?? DEFAULT_BOUNCE_BYTES,
      2 * this.limits.segmentsPerRequest * chunkSize,
    );
    this.#regions = [];
    this.#queues = [];
    try {
      for (let i = 0; i < queues; i++) {
        this.#regions.push(
          DmaRegion.allocate(ringBytes + this.queueSize * SLOT_SIZE, { name: `vhost-vdpa-blk-vq${i}` }),
        );
      }
      const bounceRegion = DmaRegion.allocate(bounceBytes, { name: 'vhost-vdpa-blk-bounce' });
      this.#regions.push(bounceRegion);
      this.#mappings = transport.mapBatch(this.#regions.map((memory) => ({ memory })));
      this.#bounce = new BouncePool(bounceRegion.bytes, iovaNumber(this.#mappings[queues].iova), chunkSize);
      const calls: EventFd[] = [];
      for (let i = 0; i < queues; i++) {
        const region = this.#regions[i];
        const iova = iovaNumber(this.#mappings[i].iova);
        const notifier = QueueNotifier.create(transport, i, options.doorbell ?? true);
        const call = new EventFd();
        calls.push(call);
        const queueOptions = {
          index: i,
          size: this.queueSize,
          memory: region.buffer,
          byteOffset: 0,
          iova,
          indirectEntries,
          eventIdx: this.eventIdx,
          notify: () => notifier.notify(),
        };
        const vq: Virtqueue<Op> = packed
          ? new PackedVirtqueue<Op>(queueOptions)
          : new SplitVirtqueue<Op>(queueOptions);
        this.#queues.push({
          vq,
          notifier,
          call,
          slots8: new Uint8Array(region.buffer, ringBytes, this.queueSize * SLOT_SIZE),
          slots32: new Uint32Array(region.buffer, ringBytes, (this.queueSize * SLOT_SIZE) / 4),
          slotsIova: iova + ringBytes,
        });
        attachVirtqueue(transport, vq, notifier.kick.fd, call.fd);
      }
      this.notification = this.#queues[0].notifier.path;
      const ok =
        VIRTIO_CONFIG_S_ACKNOWLEDGE |
        VIRTIO_CONFIG_S_DRIVER |
        VIRTIO_CONFIG_S_FEATURES_OK |
        VIRTIO_CONFIG_S_DRIVER_OK;
      transport.setStatus(ok);
      const status = transport.getStatus();
      if (
        (status & VIRTIO_CONFIG_S_DRIVER_OK) === 0 ||
        (status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET)) !== 0
      ) {
        throw new VdpaError(`${this.path} did not start: status 0x${status.toString(16)} after DRIVER_OK`, {
          code: ErrorCodes.NEGOTIATION,
          path: this.path,
        });
      }
      const mode = options.completion ?? 'interrupt';
      if (mode !== 'interrupt' && mode !== 'poll') {
        throw new VdpaError(`completion must be 'interrupt' or 'poll', got ${String(mode)}`, {
          code: ErrorCodes.INVALID_ARG,
        });
      }
      if (mode === 'poll') for (const q of this.#queues) q.vq.setInterrupts(false);
      this.#completions = new CompletionDriver(calls, this.#service, this.#busy, {
        mode,
        spinMicros: options.pollSpinMicros ?? 0,
        sliceMicros: options.pollSliceMicros ?? 1000,
        ready: this.#ready,
      });
    } catch (error) {
      // Stop the device before freeing memory it might have been told about.
      try {
        transport.reset();
      } catch {
        // open() reports the original error; it closes an owned device anyway.
      }
      this.#releaseResources();
      throw error;
    }
  }

  /**
   * Opens a virtio-blk vDPA device and starts it: negotiates features
   * (including EVENT_IDX, INDIRECT_DESC, MQ and — unless `ring: 'split'` —
   * RING_PACKED where offered), reads the config
   * space, maps ring and bounce memory, sets up the queues and sets DRIVER_OK.
   * Given a path, the device is opened (and closed by {@link close}); given an
   * open {@link VhostVdpaDevice}, it is reset by close() but left open.
   * @throws VdpaError `ERR_UNSUPPORTED` (not a block device), `ERR_NEGOTIATION`,
   *   `ERR_OUT_OF_RANGE` (queues/queue size), and any open/ioctl error.
   */
  static open(pathOrDevice: string | BlockTransport, options: BlockDeviceOptions = {}): BlockDevice {
    const owns = typeof pathOrDevice === 'string';
    const transport: BlockTransport = owns ? VhostVdpaDevice.open(pathOrDevice, options.open) : pathOrDevice;
    try {
      const id = transport.deviceId;
      if (id !== VIRTIO_ID_BLOCK) {
        throw new VdpaError(
          `${transport.path} is virtio device ${id}, not a block device (${VIRTIO_ID_BLOCK})`,
          {
            code: ErrorCodes.UNSUPPORTED,
            path: transport.path,
          },
        );
      }
      const ring = options.ring ?? 'auto';
      if (ring !== 'split' && ring !== 'packed' && ring !== 'auto') {
        throw new VdpaError(`ring must be 'split', 'packed' or 'auto', got ${String(ring)}`, {
          code: ErrorCodes.INVALID_ARG,
        });
      }
      const wanted = WANTED_FEATURES | (ring === 'split' ? 0n : bit(VirtioF.RING_PACKED));
      const { negotiated } = transport.negotiate(wanted & ~(options.excludeFeatures ?? 0n));
      if (ring === 'packed' && !hasBit(negotiated, VirtioF.RING_PACKED)) {
        throw new VdpaError(
          `${transport.path} does not offer VIRTIO_F_RING_PACKED (ring: 'packed' was asked)`,
          {
            code: ErrorCodes.NEGOTIATION,
            path: transport.path,
          },
        );
      }
      const config = decodeBlkConfig(transport.getConfig(0, transport.getConfigSize()), negotiated);
      return new BlockDevice(transport, owns, negotiated, config, options);
    } catch (error) {
      if (owns) transport.close();
      else if (!transport.closed) transport.reset();
      throw error;
    }
  }

  /** Negotiated feature names. */
  get featureNames(): string[] {
    return decodeFeatures(this.features, VIRTIO_ID_BLOCK);
  }

  /** True once {@link close} has finished. */
  get closed(): boolean {
    return this.#state === 'closed';
  }

  /** Device requests queued or in flight. */
  get pending(): number {
    return this.#outstanding;
  }

  /** Counters since open. */
  get stats(): BlockDeviceStats {
    const s = {
      ...this.#requestCounters,
      indirect: 0,
      kicks: 0,
      kicksSuppressed: 0,
      completions: 0,
      interrupts: this.#completions.interrupts,
      polls: this.#completions.polls,
      pollYields: this.#completions.pollYields,
    };
    for (const q of this.#queues) {
      s.indirect += q.vq.stats.indirectChains;
      s.kicks += q.vq.stats.kicks;
      s.kicksSuppressed += q.vq.stats.kicksSuppressed;
      s.completions += q.vq.stats.completions;
    }
    return s;
  }

  // ---- zero-copy buffers ----------------------------------------------------------------------

  /**
   * Allocates a Buffer in DMA memory mapped for this device. Reads into it and
   * writes from it need no copy. It stays mapped until {@link freeBuffer} or
   * {@link close}. Each call maps its own region (page-rounded): allocate a few
   * buffers and reuse them rather than one per request.
   */
  allocBuffer(size: number): Buffer {
    this.#throwIfUnusable();
    const region = DmaRegion.allocate(size, { name: 'vhost-vdpa-blk-buffer' });
    let mapping: IotlbMapping;
    try {
      [mapping] = this.#transport.mapBatch([{ memory: region }]);
    } catch (error) {
      region.free();
      throw error;
    }
    this.#dmaBuffers.set(region.buffer, { region, mapping, iova: iovaNumber(mapping.iova), inFlight: 0 });
    return region.view(0, size);
  }

  /**
   * Unmaps and frees a buffer from {@link allocBuffer}; every view of it becomes empty.
   * @throws VdpaError `ERR_INVALID_ARG` for a buffer that is not one, or is in use by a request in flight.
   */
  freeBuffer(buffer: Uint8Array): void {
    const entry = this.#dmaBuffers.get(buffer.buffer as ArrayBuffer);
    if (entry === undefined) {
      throw new VdpaError('freeBuffer(): not a buffer from allocBuffer() of this device (or already freed)', {
        code: ErrorCodes.INVALID_ARG,
        path: this.path,
      });
    }
    if (entry.inFlight > 0) {
      throw new VdpaError(`freeBuffer(): ${entry.inFlight} request(s) in flight still use this buffer`, {
        code: ErrorCodes.INVALID_ARG,
        path: this.path,
      });
    }
    this.#dmaBuffers.delete(buffer.buffer as ArrayBuffer);
    this.#forgetDmaCache();
    if (!this.#transport.closed && this.#transport.mappings.includes(entry.mapping)) {
      this.#transport.unmapBatch([entry.mapping]);
    }
    entry.region.free();
  }

  // ---- I/O --------------------------------------------------------------------------------------

  /** Reads `length` bytes at `offset` into a new Buffer. */
  read(offset: number, length: number): Promise<Buffer> {
    const error = this.#checkRange('read', offset, length, false);
    if (error !== undefined) return Promise.reject(error);
    const target = Buffer.allocUnsafe(length);
    return this.#data('read', VIRTIO_BLK_T_IN, offset, target, target);
  }

  /**
   * Reads `target.length` bytes at `offset` into `target`: without a copy when
   * it is (a view of) a buffer from {@link allocBuffer}, through the bounce
   * pool otherwise. Resolves to `target`.
   */
  readInto<T extends Uint8Array>(offset: number, target: T): Promise<T> {
    const error = this.#checkBuffer(target) ?? this.#checkRange('read', offset, target.length, false);
    if (error !== undefined) return Promise.reject(error);
    return this.#data('read', VIRTIO_BLK_T_IN, offset, target, target);
  }

  /**
   * Writes `data` at `offset`. Zero-copy for buffers from {@link allocBuffer};
   * other data is copied when the request enters the ring, so do not modify
   * it until the promise settles.
   */
  write(offset: number, data: Uint8Array): Promise<void> {
    const error = this.#checkBuffer(data) ?? this.#checkRange('write', offset, data.length, true);
    if (error !== undefined) return Promise.reject(error);
    return this.#data('write', VIRTIO_BLK_T_OUT, offset, data, undefined);
  }

  /**
   * Makes completed writes durable (VIRTIO_BLK_T_FLUSH). Without
   * VIRTIO_BLK_F_FLUSH the device has no volatile cache (virtio 1.2 §5.2.6.2):
   * completed writes already are durable and this resolves at once.
   */
  flush(): Promise<void> {
    const error = this.#usableError();
    if (error !== undefined) return Promise.reject(error);
    if (!hasBit(this.features, VirtioBlkF.FLUSH)) return Promise.resolve();
    const request = this.#request('flush', 0, 0, undefined);
    const op = this.#op(request, VIRTIO_BLK_T_FLUSH, 2);
    this.#enqueue(op);
    return this.#promise(request);
  }

  /** Discards (deallocates) a range; its contents are then undefined (old data or zeros). */
  discard(offset: number, length: number): Promise<void> {
    const error =
      this.#checkRange('discard', offset, length, true) ??
      this.#requireFeature('discard', VirtioBlkF.DISCARD, 'VIRTIO_BLK_F_DISCARD');
    if (error !== undefined) return Promise.reject(error);
    return this.#range(
      'discard',
      VIRTIO_BLK_T_DISCARD,
      offset,
      length,
      0,
      this.limits.maxDiscardBytes as number,
    );
  }

  /** Writes zeros to a range; with `unmap` the device may deallocate it (reads still return zeros). */
  writeZeroes(offset: number, length: number, options: { unmap?: boolean } = {}): Promise<void> {
    const error =
      this.#checkRange('write-zeroes', offset, length, true) ??
      this.#requireFeature('write-zeroes', VirtioBlkF.WRITE_ZEROES, 'VIRTIO_BLK_F_WRITE_ZEROES');
    if (error !== undefined) return Promise.reject(error);
    const flags = options.unmap === true ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    return this.#range(
      'write-zeroes',
      VIRTIO_BLK_T_WRITE_ZEROES,
      offset,
      length,
      flags,
      this.limits.maxWriteZeroesBytes as number,
    );
  }

  /** The device's id string (VIRTIO_BLK_T_GET_ID: up to 20 bytes, NUL-terminated if shorter). */
  getId(): Promise<string> {
    const error = this.#usableError();
    if (error !== undefined) return Promise.reject(error);
    const request = this.#request('get-id', 0, 0, undefined);
    this.#enqueue(this.#op(request, VIRTIO_BLK_T_GET_ID, 3));
    return this.#promise(request);
  }

  /**
   * Sends a request type this class does not wrap (e.g. VIRTIO_BLK_T_GET_LIFETIME),
   * with up to 32 bytes of device-readable payload and up to 64 device-writable
   * bytes, which the promise resolves to. No validation beyond sizes: the
   * device's status decides (IOERR → `EIO`, UNSUPP → `ERR_DEVICE_UNSUPP`).
   */
  rawRequest(options: {
    type: number;
    sector?: number;
    payload?: Uint8Array;
    responseLength?: number;
  }): Promise<Buffer> {
    const usable = this.#usableError();
    if (usable !== undefined) return Promise.reject(usable);
    const { type, sector = 0, payload, responseLength = 0 } = options;
    if (
      !Number.isInteger(type) ||
      type < 0 ||
      type > MAX_U32 ||
      !Number.isSafeInteger(sector) ||
      sector < 0
    ) {
      return Promise.reject(
        new VdpaError('rawRequest(): type must be a u32 and sector a safe non-negative integer', {
          code: ErrorCodes.INVALID_ARG,
        }),
      );
    }
    if (
      (payload?.length ?? 0) > SLOT_IN - SLOT_OUT ||
      !Number.isInteger(responseLength) ||
      responseLength < 0 ||
      responseLength > SLOT_IN_MAX
    ) {
      return Promise.reject(
        new VdpaError(
          `rawRequest(): payload ≤ ${SLOT_IN - SLOT_OUT} bytes and responseLength ≤ ${SLOT_IN_MAX}`,
          {
            code: ErrorCodes.OUT_OF_RANGE,
          },
        ),
      );
    }
    const request = this.#request(
      `request ${blkRequestTypeName(type)}`,
      sector * VIRTIO_BLK_SECTOR_SIZE,
      0,
      payload,
    );
    request.result = Buffer.alloc(responseLength);
    const op = this.#op(
      request,
      type,
      2 + (payload !== undefined && payload.length > 0 ? 1 : 0) + (responseLength > 0 ? 1 : 0),
    );
    op.sector = sector;
    op.length = responseLength;
    op.raw = true;
    this.#enqueue(op);
    return this.#promise(request);
  }

  /**
   * Submits many operations with one kick per queue (as far as ring space
   * allows; the rest follow as completions free space). Returns one promise
   * per operation, in order; invalid operations reject without affecting the others.
   */
  submit(operations: readonly BlockOperation[]): Promise<unknown>[] {
    this.#batching++;
    let promises: Promise<unknown>[];
    try {
      promises = operations.map((o): Promise<unknown> => {
        switch (o.op) {
          case 'read':
            return this.read(o.offset, o.length);
          case 'readInto':
            return this.readInto(o.offset, o.buffer);
          case 'write':
            return this.write(o.offset, o.data);
          case 'flush':
            return this.flush();
          case 'discard':
            return this.discard(o.offset, o.length);
          case 'writeZeroes':
            return this.writeZeroes(o.offset, o.length, { unmap: o.unmap });
          default:
            return Promise.reject(
              new VdpaError(`unknown operation ${JSON.stringify((o as { op: unknown }).op)}`, {
                code: ErrorCodes.INVALID_ARG,
              }),
            );
        }
      });
    } finally {
      this.#batching--;
    }
    this.#kick();
    return promises;
  }

  /**
   * Services the queues once, synchronously, for callers that run their own
   * loop: publishes what was submitted (without waiting for the usual
   * microtask), collects every completion and refills the rings from the
   * waiting requests. Returns the number of completions found. Their promises
   * are resolved now, but — as always with promises — their reactions run at
   * the next microtask checkpoint, so spin with something like
   * `while (device.poll() === 0) {}` and then `await` the request. Works in
   * either completion mode alongside the driver's own servicing; after
   * {@link close} it returns 0.
   */
  poll(): number {
    this.#requestCounters.syncPolls++;
    return this.#service();
  }

  /** Lets the process exit while the device is open and idle (like `socket.unref()`). */
  unref(): void {
    this.#completions.setRef(false);
  }

  /** Undoes {@link unref}. */
  ref(): void {
    this.#completions.setRef(true);
  }

  /**
   * Stops the device. New requests are refused with `ERR_CLOSED`. By default
   * waits for requests in flight or queued (up to `timeoutMs`); those still
   * pending then — or all of them at once with `drain: false` — are rejected
   * with `ERR_CLOSED` naming the request. Requests the device already holds are
   * given up to `timeoutMs` to finish (their results are discarded) before the
   * device is reset, because a reset with requests in flight is what devices
   * handle worst; then all DMA memory (including {@link allocBuffer} buffers)
   * is unmapped and freed, and the device is closed if it was opened by path.
   * Idempotent: later calls return the same promise.
   */
  close(options: CloseOptions = {}): Promise<void> {
    this.#closing ??= this.#close(options.drain ?? true, options.timeoutMs ?? 30000);
    return this.#closing;
  }

  // ---- validation ------------------------------------------------------------------------------

  #usableError(): VdpaError | undefined {
    if (this.#state !== 'open') {
      return new VdpaError(`${this.path}: the block device is ${this.#state}`, {
        code: ErrorCodes.CLOSED,
        path: this.path,
      });
    }
    return this.#failure;
  }

  #throwIfUnusable(): void {
    const error = this.#usableError();
    if (error !== undefined) throw error;
  }

  #checkBuffer(data: unknown): VdpaError | undefined {
    if (!(data instanceof Uint8Array)) {
      return new VdpaError('data must be a Buffer or Uint8Array', { code: ErrorCodes.INVALID_ARG });
    }
    return undefined;
  }

  #checkRange(kind: string, offset: number, length: number, writes: boolean): VdpaError | undefined {
    const usable = this.#usableError();
    if (usable !== undefined) return usable;
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length <= 0) {
      return new VdpaError(
        `${kind}: offset must be a non-negative integer and length a positive integer (got offset ${String(offset)}, ` +
          `length ${String(length)})`,
        { code: ErrorCodes.INVALID_ARG, path: this.path },
      );
    }
    const block = this.logicalBlockSize;
    if (offset % block !== 0 || length % block !== 0) {
      return new VdpaError(
        `${kind} of ${length} bytes at offset ${offset} is not aligned to the ${block}-byte logical block size`,
        { code: ErrorCodes.MISALIGNED, path: this.path },
      );
    }
    if (offset + length > this.capacity) {
      return new VdpaError(
        `${kind} of ${length} bytes at offset ${offset} ends beyond the device capacity of ${this.capacity} bytes`,
        { code: ErrorCodes.OUT_OF_RANGE, path: this.path },
      );
    }
    if (writes && this.readOnly) {
      return new VdpaError(
        `${kind} of ${length} bytes at offset ${offset} refused: ${this.path} is read-only` +
          (this.config.readOnly ? ' (VIRTIO_BLK_F_RO)' : ' (opened with readOnly)'),
        { code: ErrorCodes.READ_ONLY, path: this.path },
      );
    }
    return undefined;
  }

  #requireFeature(kind: string, feature: number, name: string): VdpaError | undefined {
    if (hasBit(this.features, feature)) return undefined;
    return new VdpaError(`${kind} is not supported by ${this.path}: ${name} was not negotiated`, {
      code: ErrorCodes.UNSUPPORTED,
      path: this.path,
    });
  }

  #computeLimits(options: BlockDeviceOptions): BlockLimits {
    const c = this.config;
    const block = this.logicalBlockSize;
    const floorBlock = (n: number): number => Math.floor(n / block) * block;
    const segMax = Math.max(1, c.segMax ?? 1);
    const segmentsPerRequest = Math.min(segMax, this.queueSize - 2);
    const sizeMax = c.sizeMax !== undefined && c.sizeMax > 0 ? c.sizeMax : undefined;
    const cap = options.maxTransferBytes ?? DEFAULT_MAX_TRANSFER;
    if (!Number.isSafeInteger(cap) || cap < block) {
      throw new VdpaError(`maxTransferBytes must be an integer ≥ ${block}`, { code: ErrorCodes.INVALID_ARG });
    }
    const maxTransferBytes = Math.max(
      block,
      floorBlock(Math.min(cap, MAX_U32, segmentsPerRequest * (sizeMax ?? MAX_U32))),
    );
    const chunk = Math.min(PAGE_SIZE, sizeMax ?? PAGE_SIZE);
    const maxBounceTransferBytes = Math.max(
      block,
      floorBlock(Math.min(maxTransferBytes, segmentsPerRequest * chunk)),
    );
    const rangeMax = (sectors: number | undefined): number =>
      Math.max(
        block,
        floorBlock((sectors === undefined || sectors === 0 ? MAX_U32 : sectors) * VIRTIO_BLK_SECTOR_SIZE),
      );
    return {
      logicalBlockSize: block,
      physicalBlockSize: this.physicalBlockSize,
      ...(sizeMax === undefined ? {} : { sizeMax }),
      segMax,
      segmentsPerRequest,
      maxTransferBytes,
      maxBounceTransferBytes,
      ...(c.discard === undefined ? {} : { maxDiscardBytes: rangeMax(c.discard.maxSectors) }),
      ...(c.writeZeroes === undefined ? {} : { maxWriteZeroesBytes: rangeMax(c.writeZeroes.maxSectors) }),
      writeZeroesMayUnmap: c.writeZeroes?.mayUnmap ?? false,
    };
  }

  // ---- request construction -------------------------------------------------------------------

  #request(kind: string, offset: number, length: number, data: Uint8Array | undefined): Request {
    const request = this.#requestPool.pop() ?? new Request();
    request.kind = kind;
    request.offset = offset;
    request.length = length;
    request.data = data;
    request.result = undefined;
    request.remaining = 0;
    request.settled = false;
    request.error = undefined;
    this.#requestCounters.requests++;
    return request;
  }

  #promise<T>(request: Request): Promise<T> {
    executorTarget = request;
    const promise = new Promise<T>(bindRequest);
    executorTarget = undefined;
    this.#schedule();
    return promise;
  }

  /** The DMA buffer `data` lives in, or undefined for ordinary memory; the last hit is cached. */
  #dmaBufferOf(data: Uint8Array): DmaBufferEntry | undefined {
    const key = data.buffer as ArrayBuffer;
    if (key === this.#lastDmaKey) return this.#lastDma;
    const entry = this.#dmaBuffers.get(key);
    if (entry === undefined || entry.region.freed) return undefined;
    // Only hits are cached; freeBuffer() and close forget the entry before freeing its region.
    this.#lastDmaKey = key;
    this.#lastDma = entry;
    return entry;
  }

  #forgetDmaCache(): void {
    this.#lastDmaKey = undefined;
    this.#lastDma = undefined;
  }

  #op(request: Request, type: number, segments: number): Op {
    const op = this.#opPool.pop() ?? new Op(this.limits.segmentsPerRequest);
    op.type = type;
    op.sector = 0;
    op.length = 0;
    op.flags = 0;
    op.raw = false;
    op.offsetInRequest = 0;
    op.dataIova = -1;
    op.dmaBuffer = undefined;
    op.segments = segments;
    op.chunkCount = 0;
    op.request = request;
    op.queue = undefined;
    op.head = -1;
    request.remaining++;
    return op;
  }

  /** Splits a read or write into device requests within the limits. */
  #data<T>(kind: string, type: number, offset: number, data: Uint8Array, result: unknown): Promise<T> {
    const request = this.#request(kind, offset, data.length, data);
    request.result = result;
    const dma = this.#dmaBufferOf(data);
    const zeroCopy = dma !== undefined;
    const max = zeroCopy ? this.limits.maxTransferBytes : this.limits.maxBounceTransferBytes;
    const segmentBytes = zeroCopy ? (this.limits.sizeMax ?? max) : this.#bounce.chunkSize;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(max, data.length - done);
      const op = this.#op(request, type, 2 + Math.ceil(n / segmentBytes));
      op.sector = (offset + done) / VIRTIO_BLK_SECTOR_SIZE;
      op.length = n;
      op.offsetInRequest = done;
      if (zeroCopy) {
        op.dataIova = dma.iova + data.byteOffset + done;
        op.dmaBuffer = dma;
      }
      this.#enqueue(op);
      done += n;
    }
    return this.#promise<T>(request);
  }

  /** Splits a discard or write-zeroes range into device requests of at most `max` bytes. */
  #range(
    kind: string,
    type: number,
    offset: number,
    length: number,
    flags: number,
    max: number,
  ): Promise<void> {
    const request = this.#request(kind, offset, length, undefined);
    for (let done = 0; done < length; ) {
      const n = Math.min(max, length - done);
      const op = this.#op(request, type, 3);
      op.sector = (offset + done) / VIRTIO_BLK_SECTOR_SIZE;
      op.length = n;
      op.flags = flags;
      this.#enqueue(op);
      done += n;
    }
    return this.#promise(request);
  }

  #enqueue(op: Op): void {
    this.#fifo.push(op);
    this.#outstanding++;
  }

  // ---- submission (the hot path) --------------------------------------------------------------

  /**
   * Drains the FIFO and publishes on the next microtask: calls made in one tick
   * share a kick. In poll mode, when a poll round is already queued after this
   * microtask checkpoint, that round publishes instead (it calls #service first
   * thing), so calls made anywhere in the checkpoint — typically `await`
   * continuations of the completions the last round found — share one kick and
   * cost no microtask of their own.
   */
  #schedule(): void {
    if (this.#scheduled || this.#batching > 0) return;
    if (this.#solo) {
      this.#solo = false;
      // Queue depth 1: a completion just came back alone and this request is alone too — most likely its
      // resubmission. Publishing it now lets the device start while the rest of the checkpoint (and the
      // poll round) runs; waiting would only delay it. A burst still shares kicks: the requests after this
      // one take the usual path (one more kick at most).
      if (this.#outstanding === 1 && this.#state === 'open') {
        this.#pump();
        this.#publish();
        this.#completions.submittedAlone();
        return;
      }
    }
    if (this.#completions.roundQueued) return;
    this.#scheduled = true;
    void RESOLVED.then(this.#kick);
  }

  readonly #kick = (): void => {
    this.#scheduled = false;
    if (this.#state === 'closed') return;
    this.#pump();
    this.#publish();
    this.#completions.submitted();
  };

  /** Moves device requests from the FIFO into rings, in order, until something is full. */
  #pump(): void {
    const fifo = this.#fifo;
    while (fifo.size > 0) {
      const op = fifo.peek();
      const queue = this.#pickQueue(op.segments);
      if (queue === undefined) return;
      if (op.dataIova < 0 && !op.raw && (op.type === VIRTIO_BLK_T_IN || op.type === VIRTIO_BLK_T_OUT)) {
        const count = op.segments - 2;
        if (!this.#bounce.take(count, op.chunks)) return;
        op.chunkCount = count;
        this.#requestCounters.bounced++;
        if (op.type === VIRTIO_BLK_T_OUT) {
          this.#bounce.copyIn(op.chunks, op.request.data as Uint8Array, op.offsetInRequest, op.length);
        }
      }
      fifo.shift();
      this.#dispatch(op, queue);
    }
  }

  #pickQueue(segments: number): BlkQueue | undefined {
    const queues = this.#queues;
    const n = queues.length;
    for (let i = 0; i < n; i++) {
      const q = queues[(this.#nextQueue + i) % n];
      if (q.vq.canAdd(segments)) {
        this.#nextQueue = (this.#nextQueue + i + 1) % n;
        return q;
      }
    }
    return undefined;
  }

  /** Writes one device request into a ring: header, data or payload, status. */
  #dispatch(op: Op, q: BlkQueue): void {
    const vq = q.vq;
    const head = vq.begin(op.segments);
    const slot = head * SLOT_SIZE;
    const w = slot >> 2;
    const slots32 = q.slots32;
    const slotIova = q.slotsIova + slot;
    const isData = !op.raw && (op.type === VIRTIO_BLK_T_IN || op.type === VIRTIO_BLK_T_OUT);
    // Only IN/OUT carry a sector in the header; vdpa_sim fails other types whose sector is not 0.
    const headerSector = isData || op.raw ? op.sector : 0;
    slots32[w] = op.type;
    slots32[w + 1] = 0;
    slots32[w + 2] = headerSector >>> 0;
    slots32[w + 3] = Math.floor(headerSector / 0x100000000);
    q.slots8[slot + SLOT_STATUS] = STATUS_UNSET;
    vq.push(slotIova, VIRTIO_BLK_OUTHDR_SIZE, false);
    if (isData) {
      const writable = op.type === VIRTIO_BLK_T_IN;
      if (op.chunkCount > 0) {
        const size = this.#bounce.chunkSize;
        for (let i = 0, done = 0; i < op.chunkCount; i++, done += size) {
          vq.push(this.#bounce.iovaOf(op.chunks[i]), Math.min(size, op.length - done), writable);
        }
      } else {
        const size = this.limits.sizeMax ?? op.length;
        for (let done = 0; done < op.length; done += size) {
          vq.push(op.dataIova + done, Math.min(size, op.length - done), writable);
        }
        (op.dmaBuffer as DmaBufferEntry).inFlight++;
      }
    } else if (op.raw) {
      const payload = op.request.data;
      if (payload !== undefined && payload.length > 0) {
        q.slots8.set(payload, slot + SLOT_OUT);
        vq.push(slotIova + SLOT_OUT, payload.length, false);
      }
      if (op.length > 0) vq.push(slotIova + SLOT_IN, op.length, true);
    } else if (op.type === VIRTIO_BLK_T_DISCARD || op.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const p = (slot + SLOT_OUT) >> 2;
      slots32[p] = op.sector >>> 0;
      slots32[p + 1] = Math.floor(op.sector / 0x100000000);
      slots32[p + 2] = op.length / VIRTIO_BLK_SECTOR_SIZE;
      slots32[p + 3] = op.flags;
      vq.push(slotIova + SLOT_OUT, VIRTIO_BLK_DWZ_SIZE, false);
    } else if (op.type === VIRTIO_BLK_T_GET_ID) {
      vq.push(slotIova + SLOT_IN, VIRTIO_BLK_ID_BYTES, true);
    }
    vq.push(slotIova + SLOT_STATUS, 1, true);
    op.queue = q;
    op.head = head;
    vq.end(op);
    this.#requestCounters.deviceRequests++;
  }

  #publish(): void {
    for (const q of this.#queues) if (q.vq.unpublished > 0) q.vq.publish();
  }

  // ---- completion -----------------------------------------------------------------------------

  readonly #busy = (): boolean => this.#outstanding > 0;

  /** Some queue has completions to collect (one atomic load per queue). */
  readonly #ready = (): boolean => {
    const queues = this.#queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].vq.hasCompletions()) return true;
    return false;
  };

  /**
   * Publishes what is waiting, collects every queue's completions, then
   * refills the rings from the FIFO and publishes again. Returns the
   * completions found.
   */
  readonly #service = (): number => {
    if (this.#state === 'closed' || this.#failure !== undefined) return 0;
    this.#solo = false;
    if (this.#fifo.size > 0) this.#pump();
    this.#publish();
    let found = 0;
    for (const q of this.#queues) {
      try {
        found += q.vq.collect(this.#onUsed);
      } catch (error) {
        this.#fail(error as VdpaError);
        return found;
      }
    }
    if (found > 0) {
      if (this.#fifo.size > 0) {
        this.#pump();
        this.#publish();
      }
      if (this.#outstanding === 0) {
        this.#solo = found === 1;
        this.#onIdle?.();
      }
    }
    return found;
  };

  readonly #onUsed = (op: Op, _length: number): void => {
    const q = op.queue as BlkQueue;
    const slot = op.head * SLOT_SIZE;
    const status = q.slots8[slot + SLOT_STATUS];
    const request = op.request;
    if (request.settled) {
      // Rejected by close() while the device still had it: its data goes nowhere.
    } else if (status === VIRTIO_BLK_S_OK) {
      if (op.chunkCount > 0 && op.type === VIRTIO_BLK_T_IN) {
        this.#bounce.copyOut(op.chunks, request.data as Uint8Array, op.offsetInRequest, op.length);
      } else if (op.raw) {
        (request.result as Buffer).set(q.slots8.subarray(slot + SLOT_IN, slot + SLOT_IN + op.length));
      } else if (op.type === VIRTIO_BLK_T_GET_ID) {
        const id = q.slots8.subarray(slot + SLOT_IN, slot + SLOT_IN + VIRTIO_BLK_ID_BYTES);
        const end = id.indexOf(0);
        request.result = Buffer.from(id.subarray(0, end < 0 ? id.length : end)).toString('latin1');
      }
    } else if (request.error === undefined) {
      request.error = this.#statusError(op, status);
    }
    if (op.chunkCount > 0) this.#bounce.release(op.chunks, op.chunkCount);
    if (op.dmaBuffer !== undefined) op.dmaBuffer.inFlight--;
    this.#finish(op);
  };

  #finish(op: Op): void {
    const request = op.request;
    this.#outstanding--;
    op.request = undefined as unknown as Request;
    op.dmaBuffer = undefined;
    this.#opPool.push(op);
    if (--request.remaining === 0) {
      this.#settle(request);
      // No op refers to it any more and its promise is settled: reuse it.
      request.data = undefined;
      request.result = undefined;
      request.error = undefined;
      request.resolve = noop;
      request.reject = noop;
      this.#requestPool.push(request);
    }
  }

  #settle(request: Request): void {
    if (request.settled) return;
    request.settled = true;
    if (request.error !== undefined) request.reject(request.error);
    else request.resolve(request.result as never);
  }

  #describe(request: Request): string {
    if (request.kind === 'flush' || request.kind === 'get-id') return request.kind;
    if (request.kind.startsWith('request ')) return `${request.kind} at offset ${request.offset}`;
    return `${request.kind} of ${request.length} bytes at offset ${request.offset}`;
  }

  #statusError(op: Op, status: number): VdpaError {
    const request = op.request;
    const piece =
      request.length > 0 && op.length !== request.length
        ? ` (device request ${blkRequestTypeName(op.type)} of ${op.length} bytes at offset ${op.sector * VIRTIO_BLK_SECTOR_SIZE})`
        : '';
    const what = `${this.#describe(request)} on ${this.path}${piece}`;
    if (status === VIRTIO_BLK_S_IOERR) {
      return new VdpaError(`${what} failed: the device reported VIRTIO_BLK_S_IOERR`, {
        code: 'EIO',
        errno: 5,
        path: this.path,
      });
    }
    if (status === VIRTIO_BLK_S_UNSUPP) {
      return new VdpaError(
        `${what} failed: the device reported VIRTIO_BLK_S_UNSUPP (operation not supported)`,
        {
          code: ErrorCodes.DEVICE_UNSUPP,
          path: this.path,
        },
      );
    }
    return new VdpaError(
      status === STATUS_UNSET
        ? `${what} failed: the device completed it without writing a status byte`
        : `${what} failed: the device wrote an invalid status byte 0x${status.toString(16)}`,
      { code: 'EIO', errno: 5, path: this.path },
    );
  }

  /** A queue's used ring is corrupt: reset the device so it stops touching memory, and fail everything. */
  #fail(cause: VdpaError): void {
    this.#failure = new VdpaError(
      `${this.path}: ${cause.message}. The device was reset; every request in flight failed and ` +
        'new requests are refused: close and reopen the device',
      { code: ErrorCodes.QUEUE_CORRUPT, path: this.path, cause },
    );
    try {
      this.#transport.reset();
    } catch {
      // The failure being reported is the corrupt ring; a reset error adds nothing actionable.
    }
    this.#abortAll((request) => this.#withRequest(this.#failure as VdpaError, request));
  }

  #withRequest(error: VdpaError, request: Request): VdpaError {
    return new VdpaError(`${this.#describe(request)}: ${error.message}`, {
      code: error.code,
      path: this.path,
      cause: error,
    });
  }

  /**
   * Fails every device request in flight (after the device was reset, so it
   * no longer writes to their memory) or still queued.
   */
  #abortAll(errorFor: (request: Request) => VdpaError): void {
    for (const q of this.#queues) {
      for (const op of q.vq.reset()) {
        if (op.chunkCount > 0) this.#bounce.release(op.chunks, op.chunkCount);
        if (op.dmaBuffer !== undefined) op.dmaBuffer.inFlight--;
        op.request.error ??= errorFor(op.request);
        this.#finish(op);
      }
    }
    while (this.#fifo.size > 0) {
      const op = this.#fifo.shift();
      op.request.error ??= errorFor(op.request);
      this.#finish(op);
    }
    this.#onIdle?.();
  }

  // ---- shutdown -------------------------------------------------------------------------------

  async #close(drain: boolean, timeoutMs: number): Promise<void> {
    if (this.#state !== 'open') return;
    this.#state = 'closing';
    let timedOut = false;
    if (drain && this.#outstanding > 0 && this.#failure === undefined)
      timedOut = !(await this.#idle(timeoutMs));
    const why = !drain
      ? 'close({ drain: false }) was called'
      : timedOut
        ? `close() waited ${timeoutMs} ms for it`
        : 'the block device was closed';
    const closedError = (request: Request): VdpaError =>
      new VdpaError(
        `${this.#describe(request)} on ${this.path} was aborted: ${why}. Its outcome on the device is unknown ` +
          '(a written range may hold old or new data)',
        { code: ErrorCodes.CLOSED, path: this.path },
      );
    // Settle every pending promise now; nothing is left pending forever.
    this.#rejectPending(closedError);
    // Device requests already in rings stay owned by the device. Give it a bounded chance to finish
    // them before the reset: resetting with requests in flight is the path devices handle worst
    // (qemu-storage-daemon's VDUSE export can fail the device), and until the device is reset or
    // idle, the ring, slot and bounce memory it may still write cannot be freed.
    if (!drain && this.#outstanding > 0 && this.#failure === undefined) await this.#idle(timeoutMs);
    this.#completions.close();
    // Reset before forgetting the rest: after it the device no longer touches request memory.
    if (this.#ownsTransport) this.#transport.close();
    else if (!this.#transport.closed) this.#transport.reset();
    this.#abortAll(closedError);
    this.#state = 'closed';
    this.#releaseResources();
  }

  /** Resolves true once nothing is queued or in flight, false after `timeoutMs`. */
  #idle(timeoutMs: number): Promise<boolean> {
    if (this.#outstanding === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.#onIdle = undefined;
        resolve(false);
      }, timeoutMs);
      this.#onIdle = () => {
        clearTimeout(timer);
        this.#onIdle = undefined;
        resolve(true);
      };
    });
  }

  /** Fails queued device requests and settles (rejects) the requests of those in flight. */
  #rejectPending(errorFor: (request: Request) => VdpaError): void {
    while (this.#fifo.size > 0) {
      const op = this.#fifo.shift();
      op.request.error ??= errorFor(op.request);
      this.#finish(op);
    }
    for (const q of this.#queues) {
      for (const op of q.vq.inFlightTokens()) {
        op.request.error ??= errorFor(op.request);
        this.#settle(op.request);
      }
    }
    if (this.#outstanding === 0) this.#onIdle?.();
  }

  /** Closes eventfds and doorbells, unmaps (if the device stays open) and frees all DMA memory. */
  #releaseResources(): void {
    for (const q of this.#queues ?? []) {
      q.notifier.close();
      q.call.close();
    }
    const transport = this.#transport;
    const regions = [...(this.#regions ?? []), ...[...this.#dmaBuffers.values()].map((e) => e.region)];
    const mappings = [...(this.#mappings ?? []), ...[...this.#dmaBuffers.values()].map((e) => e.mapping)];
    if (!transport.closed) {
      const live = transport.mappings;
      const ours = mappings.filter((m) => live.includes(m));
      if (ours.length > 0) {
        try {
          transport.unmapBatch(ours);
        } catch {
          // The device is being given up; the kernel drops its mappings on reset/close anyway.
        }
      }
    }
    this.#dmaBuffers.clear();
    this.#forgetDmaCache();
    for (const region of regions) region.free();
  }
}

function floorPowerOfTwo(n: number): number {
  return n < 1 ? 0 : 2 ** Math.floor(Math.log2(n));
}

function iovaNumber(iova: bigint): number {
  if (iova > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VdpaError(
      `IOVA 0x${iova.toString(16)} is beyond 2^53, which the ring code addresses as a number`,
      {
        code: ErrorCodes.OUT_OF_RANGE,
      },
    );
  }
  return Number(iova);
}
