/**
 * A virtio-net driver in user space over vhost-vdpa: send and receive
 * Ethernet frames, the control queue (MAC, RX mode, queue pairs), statistics.
 * The net protocol sits on the driver core (lib/virtio/driver.ts) like
 * virtio-blk does; see docs/net.md for what a caller sees.
 *
 * Queues: RX 0, TX 1, control 2 (one queue pair: VIRTIO_NET_F_MQ is not
 * negotiated). Every op is targeted at its queue, so a full TX ring holds up
 * neither the control queue nor RX refills. The RX ring is kept full of
 * standing buffers (the RX queue's slots), re-posted as frames come back and
 * after a recovery; TX and control commands have the core's deadline.
 */
import { EventEmitter } from 'node:events';
import { OpenOptions, VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { bits, decodeFeatures, hasBit, VhostBackendF, VirtioF, VirtioNetF } from '../features';
import { VIRTIO_ID_NET } from '../uapi';
import { decodeNetConfig, NetConfig } from '../virtio-config';
import { BringUpTransport, negotiateDevice } from '../virtio/config';
import { VirtioDriver } from '../virtio/driver';
import type { CloseOptions, DriverTransport } from '../virtio/types';
import type { DriverQueue } from '../virtio/queues';
import {
  CTRL_DATA_MAX,
  CTRL_QUEUE,
  NetCodec,
  NetOp,
  OP_CTRL,
  OP_RX,
  OP_TX,
  RX_QUEUE,
  TX_QUEUE,
} from './codec';
import { formatMac, isMulticast, parseMac } from './mac';
import {
  controlCommandName,
  DEFAULT_MTU,
  ETH_HLEN,
  MIN_RX_FRAME_BYTES,
  VIRTIO_NET_CTRL_MAC,
  VIRTIO_NET_CTRL_MAC_ADDR_SET,
  VIRTIO_NET_CTRL_RX,
  VIRTIO_NET_CTRL_RX_ALLMULTI,
  VIRTIO_NET_CTRL_RX_PROMISC,
  VIRTIO_NET_HDR_SIZE,
  VIRTIO_NET_S_LINK_UP,
} from './protocol';
import { FrameIterator } from './frames';

export type { CloseOptions, ResetEvent } from '../virtio/types';

/** The device operations the driver uses; the ASID ones are optional (without them the control queue shares ASID 0). */
export type NetTransport = DriverTransport &
  Partial<
    Pick<
      VhostVdpaDevice,
      'getAsNum' | 'getGroupNum' | 'getVringGroup' | 'setGroupAsid' | 'ackedBackendFeatures'
    >
  >;

/** Options for {@link NetDevice.open}. */
export interface NetDeviceOptions {
  /** Descriptors per queue: rounded down to a power of two, capped by the device (default 256). */
  queueSize?: number;
  /**
   * Deadline of a transmitted frame or a control command after it entered
   * the ring, in ms (default 30000; 0 = none). A late one rejects with
   * `ETIMEDOUT` and the driver resets the device to recover. Receive buffers
   * have no deadline.
   */
  requestTimeoutMs?: number;
  /**
   * Put the control queue in its own address space (ASID 1) with its own
   * memory, as QEMU does: `'auto'` (default) when the device has more than one
   * address space, the control queue's group holds no data queue and
   * VHOST_BACKEND_F_IOTLB_ASID was acknowledged; `false` never; `true`
   * requires it (`ERR_UNSUPPORTED` otherwise).
   */
  isolateControlQueue?: boolean | 'auto';
  /** Feature bits not to negotiate (e.g. `bit(VirtioNetF.CTRL_VQ)`). */
  excludeFeatures?: bigint;
  /** Use the doorbell page when the device has one (default true). */
  doorbell?: boolean;
  /** Virtqueue format (default `'auto'`). */
  ring?: 'split' | 'packed' | 'auto';
  /** Options for {@link VhostVdpaDevice.open} when a path is given. */
  open?: OpenOptions;
}

/** Counters of one queue. */
export interface NetQueueStats {
  /** Frames (TX, RX) or commands (control) completed. */
  frames: number;
  bytes: number;
  /** RX: runt completions dropped; TX: frames refused at dispatch (detached buffers); control: NAKs. */
  drops: number;
  /** TX: frames that had to wait because the ring was full; RX: times refilling stopped (paused). */
  ringFullWaits: number;
  kicks: number;
  kicksSuppressed: number;
  completions: number;
}

/** What {@link NetDevice.stats} returns. */
export interface NetStats {
  rx: NetQueueStats;
  tx: NetQueueStats;
  control: NetQueueStats | undefined;
  /** Call-eventfd wake-ups (all queues). */
  interrupts: number;
  /** Recoveries (device resets). */
  resets: number;
  /** The device's vendor counters by queue (`vdpa dev vstats show`), when asked for and available. */
  vendor?: { rx: Record<string, bigint>; tx: Record<string, bigint>; control?: Record<string, bigint> };
}

const WANTED_FEATURES = bits(
  VirtioNetF.MAC,
  VirtioNetF.MTU,
  VirtioNetF.STATUS,
  VirtioNetF.CTRL_VQ,
  VirtioNetF.CTRL_MAC_ADDR,
  VirtioNetF.CTRL_RX,
  VirtioNetF.CSUM,
  VirtioNetF.GUEST_CSUM,
  VirtioF.RING_EVENT_IDX,
);
const DEFAULT_REQUEST_TIMEOUT_MS = 30000;
/** Bytes of one slab that received frames are copied into; frames over a quarter of it get their own memory. */
const RX_SLAB_BYTES = 64 * 1024;

/** The driver's own counters of one queue. */
interface QueueCounters {
  frames: number;
  bytes: number;
  drops: number;
  ringFullWaits: number;
}

/**
 * A virtio-net device driven from user space. Events: `'frame'` (a Buffer:
 * one received Ethernet frame, a copy), `'config-change'` (the new
 * {@link NetConfig}) and `'link-change'` (true/false) — only devices that
 * raise config interrupts send them (vdpa_sim_net does not: call
 * {@link refreshConfig}) —, `'reset'`, `'failed'` as for BlockDevice.
 */
export class NetDevice extends EventEmitter {
  readonly path: string;
  /** Negotiated features. */
  readonly features: bigint;
  /**
   * What the device offered. Bits offered but not negotiated on purpose:
   * VIRTIO_NET_F_MQ and VIRTIO_NET_F_MRG_RXBUF (and GSO), see docs/net.md.
   */
  readonly offeredFeatures: bigint;
  /** Descriptors per queue. */
  readonly queueSize: number;
  /** Largest frame {@link send} takes: MTU + 14 (Ethernet header, no FCS). */
  readonly maxFrameSize: number;
  /** The control queue is in ASID 1 with its own memory (see {@link NetDeviceOptions.isolateControlQueue}). */
  readonly controlQueueIsolated: boolean;

  readonly #core: VirtioDriver<NetOp>;
  readonly #transport: NetTransport;
  readonly #hasControl: boolean;
  #config: NetConfig;
  #mac: string | undefined;
  #linkUp: boolean;
  /** Receive buffers the driver aims to keep in the ring. */
  readonly #rxTarget: number;
  #userPaused = false;
  /** Some frames() iterator is above its high-water mark. */
  #iteratorsFull = 0;
  readonly #iterators = new Set<FrameIterator>();
  /** Where received frames are copied to (see #received). */
  #slab = new ArrayBuffer(RX_SLAB_BYTES);
  #slabOffset = 0;
  readonly #counters: { rx: QueueCounters; tx: QueueCounters; control: QueueCounters } = {
    rx: { frames: 0, bytes: 0, drops: 0, ringFullWaits: 0 },
    tx: { frames: 0, bytes: 0, drops: 0, ringFullWaits: 0 },
    control: { frames: 0, bytes: 0, drops: 0, ringFullWaits: 0 },
  };

  private constructor(
    transport: NetTransport,
    ownsTransport: boolean,
    negotiated: bigint,
    offered: bigint,
    configBytes: Buffer,
    options: NetDeviceOptions,
  ) {
    super();
    this.offeredFeatures = offered;
    const config = decodeNetConfig(configBytes, negotiated);
    this.path = transport.path;
    this.#transport = transport;
    this.features = negotiated;
    this.#config = config;
    this.#mac = config.mac;
    this.#linkUp = linkUpOf(config, negotiated);
    if (!hasBit(negotiated, VirtioF.VERSION_1)) {
      throw new VdpaError(
        `${this.path} does not offer VIRTIO_F_VERSION_1 (the driver writes virtio_net_hdr_v1)`,
        {
          code: ErrorCodes.NEGOTIATION,
          path: this.path,
        },
      );
    }
    const mtu = hasBit(negotiated, VirtioNetF.MTU) && config.mtu !== undefined ? config.mtu : DEFAULT_MTU;
    this.maxFrameSize = mtu + ETH_HLEN;
    this.#hasControl = hasBit(negotiated, VirtioNetF.CTRL_VQ);
    const deviceMax = transport.getVringNum();
    this.queueSize = floorPowerOfTwo(Math.min(options.queueSize ?? 256, deviceMax, 32768));
    if (this.queueSize < 2) {
      throw new VdpaError(`queue size ${this.queueSize} is too small (device max ${deviceMax})`, {
        code: ErrorCodes.OUT_OF_RANGE,
        path: this.path,
      });
    }
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    if (!Number.isSafeInteger(requestTimeoutMs) || requestTimeoutMs < 0) {
      throw new VdpaError(
        `requestTimeoutMs must be a non-negative integer (0 = no deadline), got ${String(requestTimeoutMs)}`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    this.controlQueueIsolated =
      this.#hasControl && wantsIsolation(transport, options.isolateControlQueue ?? 'auto');
    // RX buffers hold a header and the largest frame (at least 1526 bytes without MRG_RXBUF, virtio 1.2 §5.1.6.3.1).
    const rxBytes = VIRTIO_NET_HDR_SIZE + Math.max(MIN_RX_FRAME_BYTES, this.maxFrameSize + 4);
    const slotSize = Math.ceil(rxBytes / 64) * 64;
    this.#rxTarget = this.queueSize;
    const codec = new NetCodec({
      path: this.path,
      slotSize,
      rxBytes,
      hooks: {
        received: (q, offset, length) => this.#received(q, offset, length),
        receivedRunt: () => this.#counters.rx.drops++,
        rxReturned: () => this.#rxReturned(),
        sent: (length) => {
          this.#counters.tx.frames++;
          this.#counters.tx.bytes += length;
        },
        configChanged: (bytes) => this.#configChanged(bytes),
        restarted: () => this.#refill(),
      },
    });
    const cvqGroup = this.controlQueueIsolated
      ? (transport.getVringGroup as (i: number) => number)(CTRL_QUEUE)
      : -1;
    this.#core = new VirtioDriver<NetOp>(transport, codec, {
      features: negotiated,
      config: configBytes,
      queues: {
        count: this.#hasControl ? 3 : 2,
        size: this.queueSize,
        format: hasBit(negotiated, VirtioF.RING_PACKED) ? 'packed' : 'split',
        indirectEntries: 0,
        eventIdx: hasBit(negotiated, VirtioF.RING_EVENT_IDX),
        slotSize,
        doorbell: options.doorbell ?? true,
        name: 'vhost-vdpa-net',
        asids: this.controlQueueIsolated ? [0, 0, 1] : undefined,
      },
      bounceBytes: 0,
      bounceChunkSize: 4096,
      completion: 'interrupt',
      pollSpinMicros: 0,
      pollSliceMicros: 1000,
      requestTimeoutMs,
      ownsTransport,
      // A reset moves every group back to ASID 0 (vdpa_sim): move the control queue's again at every start.
      beforeDriverOk: this.controlQueueIsolated
        ? () => (transport.setGroupAsid as (g: number, a: number) => void)(cvqGroup, 1)
        : undefined,
      emit: (event, ...args) => {
        // A failed device delivers nothing more: end the iterators so no consumer waits forever.
        if (event === 'failed') this.#endIterators();
        return this.emit(event, ...args);
      },
    });
    this.#refill();
    this.#core.flush();
  }

  /**
   * Opens a virtio-net vDPA device and starts it: negotiates VERSION_1,
   * ACCESS_PLATFORM, MAC, MTU, STATUS, CTRL_VQ, CTRL_MAC_ADDR and, where
   * offered, CTRL_RX, CSUM, GUEST_CSUM and EVENT_IDX (not MQ: one queue pair;
   * not MRG_RXBUF or GSO: receive buffers hold a whole frame), maps the rings,
   * moves the control queue to ASID 1 when it can (see
   * {@link NetDeviceOptions.isolateControlQueue}), fills the RX ring and sets DRIVER_OK.
   * @throws VdpaError `ERR_UNSUPPORTED` (not a net device, or isolation required
   *   but impossible), `ERR_NEGOTIATION`, `ERR_OUT_OF_RANGE`, `ERR_INVALID_ARG`, and any open/ioctl error.
   */
  static open(pathOrDevice: string | NetTransport, options: NetDeviceOptions = {}): NetDevice {
    const owns = typeof pathOrDevice === 'string';
    const transport: NetTransport = owns ? VhostVdpaDevice.open(pathOrDevice, options.open) : pathOrDevice;
    try {
      let offered = 0n;
      // The same transport, with what the device offered noted (MQ and MRG_RXBUF errors name it).
      const noting: BringUpTransport = {
        path: transport.path,
        deviceId: transport.deviceId,
        negotiate: (wanted, required) => {
          const result = transport.negotiate(wanted, required);
          offered = result.offered;
          return result;
        },
        getConfigSize: () => transport.getConfigSize(),
        getConfig: (offset, length) => transport.getConfig(offset, length),
      };
      const { features, config } = negotiateDevice(noting, {
        deviceId: VIRTIO_ID_NET,
        what: 'net device',
        wanted: WANTED_FEATURES,
        exclude: options.excludeFeatures,
        ring: options.ring,
      });
      return new NetDevice(transport, owns, features, offered, config, options);
    } catch (error) {
      if (owns) transport.close();
      else if (!transport.closed) transport.reset();
      throw error;
    }
  }

  // ---- properties -------------------------------------------------------------------------------

  /** The device's MAC address (aa:bb:cc:dd:ee:ff) from the config space, if it has VIRTIO_NET_F_MAC. */
  get mac(): string | undefined {
    return this.#mac;
  }

  /** MTU: the config space's with VIRTIO_NET_F_MTU, else 1500. */
  get mtu(): number {
    return this.maxFrameSize - ETH_HLEN;
  }

  /** Link status (VIRTIO_NET_S_LINK_UP); always true without VIRTIO_NET_F_STATUS. */
  get linkUp(): boolean {
    return this.#linkUp;
  }

  /** Queue pairs in use: 1 (VIRTIO_NET_F_MQ is not negotiated). */
  get queuePairs(): number {
    return 1;
  }

  /** The decoded config space (as last read). */
  get config(): NetConfig {
    return this.#config;
  }

  /** Negotiated feature names. */
  get featureNames(): string[] {
    return decodeFeatures(this.features, VIRTIO_ID_NET);
  }

  /** `'open'`, `'recovering'`, `'failed'`, `'closing'` or `'closed'`. */
  get state(): VirtioDriver<NetOp>['state'] {
    return this.#core.state;
  }

  /** True once {@link close} has finished. */
  get closed(): boolean {
    return this.#core.state === 'closed';
  }

  /** Frames being sent and control commands, queued or in flight (receive buffers are not counted). */
  get pending(): number {
    return this.#core.pending;
  }

  /** Receive buffers in the ring now. */
  get rxPosted(): number {
    return this.#core.queues[RX_QUEUE].vq.inFlight + this.#core.waiting(RX_QUEUE);
  }

  /** True while receive buffers are not refilled ({@link pause}, or a frames() iterator is full). */
  get paused(): boolean {
    return this.#userPaused || this.#iteratorsFull > 0;
  }

  /**
   * Reads the config space again and updates {@link mac}, {@link linkUp} and
   * {@link config}, emitting `'config-change'` (and `'link-change'` if the link
   * changed) when something differs. For devices without config interrupts
   * (vdpa_sim_net, and vhost-vdpa devices generally per DPDK).
   */
  refreshConfig(): NetConfig {
    const before = JSON.stringify(this.#config);
    const bytes = this.#transport.getConfig(0, this.#transport.getConfigSize());
    const config = this.#configChanged(bytes);
    if (JSON.stringify(config) !== before) this.emit('config-change', config);
    return config;
  }

  #configChanged(bytes: Buffer): NetConfig {
    const config = decodeNetConfig(bytes, this.features);
    this.#config = config;
    this.#mac = config.mac;
    const up = linkUpOf(config, this.features);
    if (up !== this.#linkUp) {
      this.#linkUp = up;
      // After 'config-change' (which the core emits with this return value).
      process.nextTick(() => this.emit('link-change', up));
    }
    return config;
  }

  // ---- zero-copy buffers ----------------------------------------------------------------------

  /**
   * A Buffer in DMA memory mapped for this device (data address space): frames
   * sent from it (or from a view of it) need no copy. Reuse a few; each maps a
   * page-rounded region. Do not modify a frame until its send settles. Like
   * `BlockDevice.allocBuffer`, the Buffer has an own, non-enumerable `then`
   * property that is `undefined`.
   */
  allocBuffer(size: number): Buffer {
    const error = this.#core.usableError('net device');
    if (error !== undefined) throw error;
    return this.#core.dma.allocBuffer(size, 'vhost-vdpa-net-buffer');
  }

  /** Unmaps and frees a buffer from {@link allocBuffer} (`ERR_BUSY` while a send uses it). */
  freeBuffer(buffer: Uint8Array): void {
    this.#core.dma.freeBuffer(buffer);
  }

  // ---- transmit ---------------------------------------------------------------------------------

  /**
   * Sends one Ethernet frame (destination, source, EtherType, payload; no
   * FCS). The driver writes the virtio_net_hdr. Resolves once the device has
   * taken it. When the TX ring is full the frame waits (back-pressure; never
   * an error). Ordinary memory is copied when the frame enters the ring (do
   * not modify it until then); {@link allocBuffer} memory is not copied.
   * @throws (rejects) VdpaError `ERR_OUT_OF_RANGE` (shorter than 14 bytes or
   *   longer than {@link maxFrameSize}), `ERR_INVALID_ARG` (not a Uint8Array), `ERR_CLOSED`.
   */
  send(frame: Uint8Array): Promise<void> {
    const error = this.#core.usableError('net device') ?? this.#checkFrame(frame, 'send()');
    if (error !== undefined) return Promise.reject(error);
    const request = this.#core.newRequest('send', 0, frame.length, undefined);
    this.#enqueueFrame(request, frame);
    return this.#core.promise(request, undefined);
  }

  /**
   * Sends frames in order with one kick; resolves when all were taken. All
   * are checked first: one bad frame rejects the call and nothing is sent.
   */
  sendBatch(frames: readonly Uint8Array[]): Promise<void> {
    let error = this.#core.usableError('net device');
    if (error === undefined && !Array.isArray(frames)) {
      error = new VdpaError('sendBatch(): frames must be an array of Uint8Array', {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    for (let i = 0; error === undefined && i < frames.length; i++) {
      error = this.#checkFrame(frames[i], `sendBatch(): frame ${i}`);
    }
    if (error !== undefined) return Promise.reject(error);
    if (frames.length === 0) return Promise.resolve();
    const request = this.#core.newRequest(`send of ${frames.length} frames`, 0, 0, undefined);
    this.#core.batch(() => {
      for (const frame of frames) this.#enqueueFrame(request, frame);
    });
    return this.#core.promise(request, undefined);
  }

  #enqueueFrame(request: ReturnType<VirtioDriver<NetOp>['newRequest']>, frame: Uint8Array): void {
    const core = this.#core;
    const dma = core.dma.lookup(frame);
    const op = core.newOp(request, dma === undefined ? 1 : 2);
    op.kind = OP_TX;
    op.queueIndex = TX_QUEUE;
    op.frame = frame;
    op.lost = false;
    op.length = frame.length;
    if (dma !== undefined) {
      op.dataIova = dma.iova + frame.byteOffset;
      op.dmaBuffer = dma;
    }
    if (core.waiting(TX_QUEUE) > 0 || !core.queues[TX_QUEUE].vq.canAdd(op.segments)) {
      this.#counters.tx.ringFullWaits++;
    }
    core.enqueue(op);
  }

  #checkFrame(frame: unknown, what: string): VdpaError | undefined {
    if (!(frame instanceof Uint8Array)) {
      return new VdpaError(`${what}: a frame must be a Uint8Array (Buffer), got ${typeof frame}`, {
        code: ErrorCodes.INVALID_ARG,
        path: this.path,
      });
    }
    if (frame.length < ETH_HLEN || frame.length > this.maxFrameSize) {
      return new VdpaError(
        `${what}: a frame of ${frame.length} bytes does not fit: ${ETH_HLEN} (Ethernet header) to ` +
          `${this.maxFrameSize} bytes (MTU ${this.mtu} + 14) on ${this.path}`,
        { code: ErrorCodes.OUT_OF_RANGE, path: this.path },
      );
    }
    return undefined;
  }

  // ---- receive ------------------------------------------------------------------------------------

  /**
   * Received frames as an async iterator (each a Buffer, a copy). Several
   * iterators each get every frame. When one holds `highWaterMark` frames
   * (default 1024) the driver stops refilling the RX ring until it drains to
   * half; the device then drops what arrives (vdpa_sim_net counts them as "rx
   * overruns"). Ends when the device is closed or fails (`'failed'`); `break` ends it too.
   */
  frames(options: { highWaterMark?: number } = {}): AsyncIterableIterator<Buffer> {
    const highWaterMark = options.highWaterMark ?? 1024;
    if (!Number.isSafeInteger(highWaterMark) || highWaterMark < 1) {
      throw new VdpaError(
        `frames(): highWaterMark must be a positive integer, got ${String(highWaterMark)}`,
        {
          code: ErrorCodes.INVALID_ARG,
        },
      );
    }
    const iterator = new FrameIterator(highWaterMark, {
      full: () => {
        this.#iteratorsFull++;
      },
      drained: () => {
        if (--this.#iteratorsFull === 0) this.#resumeRefill();
      },
      done: (it) => this.#iterators.delete(it),
    });
    if (this.closed) iterator.end();
    else this.#iterators.add(iterator);
    return iterator;
  }

  /** Stops refilling the RX ring: frames already in it are still delivered, then the device drops (overruns). */
  pause(): void {
    this.#userPaused = true;
  }

  /** Refills the RX ring and kicks (vdpa_sim_net resumes TX on the next kick). */
  resume(): void {
    this.#userPaused = false;
    this.#resumeRefill();
  }

  #resumeRefill(): void {
    if (this.paused || (this.state !== 'open' && this.state !== 'recovering')) return;
    this.#refill();
    this.#core.flush();
  }

  #received(q: DriverQueue, offset: number, length: number): void {
    // Copies go into a slab shared by consecutive frames (as Node's own 8 KiB Buffer pool does, but larger):
    // with Buffer.allocUnsafe, 1500-byte frames needed a new 8 KiB ArrayBuffer every 5 frames, a quarter of
    // the driver's time in the lab profile.
    let frame: Buffer;
    if (length > RX_SLAB_BYTES >> 2) {
      frame = Buffer.allocUnsafeSlow(length); // jumbo frames: their own memory
    } else {
      if (this.#slabOffset + length > RX_SLAB_BYTES) {
        this.#slab = new ArrayBuffer(RX_SLAB_BYTES);
        this.#slabOffset = 0;
      }
      frame = Buffer.from(this.#slab, this.#slabOffset, length);
      this.#slabOffset += (length + 7) & ~7;
    }
    frame.set(q.slots8.subarray(offset, offset + length));
    this.#counters.rx.frames++;
    this.#counters.rx.bytes += length;
    for (const iterator of this.#iterators) iterator.push(frame);
    if (this.listenerCount('frame') > 0) {
      try {
        this.emit('frame', frame);
      } catch (error) {
        // A listener's throw is the listener's bug, not the device's: report it as uncaught, keep receiving.
        process.nextTick(() => {
          throw error;
        });
      }
    }
  }

  #rxReturned(): void {
    if (this.paused) {
      this.#counters.rx.ringFullWaits++;
      return;
    }
    this.#postRx();
  }

  /** Posts receive buffers up to the target (queued; the caller or the core publishes). */
  #refill(): void {
    if (this.paused) return;
    for (let n = this.#rxTarget - this.rxPosted; n > 0; n--) this.#postRx();
  }

  #postRx(): void {
    const core = this.#core;
    const op = core.newOp(core.newRequest('receive buffer', 0, 0, undefined), 1);
    op.kind = OP_RX;
    op.queueIndex = RX_QUEUE;
    op.standing = true;
    core.enqueue(op);
  }

  // ---- control queue ------------------------------------------------------------------------------

  /**
   * Sets the device's MAC address (VIRTIO_NET_CTRL_MAC_ADDR_SET) and, once
   * the device acked, re-reads the config space (the `mac` getter follows).
   * @throws (rejects) `ERR_INVALID_ARG` (not a MAC, or a multicast one),
   *   `ERR_UNSUPPORTED` (no VIRTIO_NET_F_CTRL_MAC_ADDR), `ERR_DEVICE_UNSUPP` (NAK).
   */
  async setMac(mac: string | Uint8Array): Promise<void> {
    const bytes = parseMac(mac, 'setMac()');
    if (isMulticast(bytes)) {
      throw new VdpaError(
        `setMac(): ${formatMac(bytes)} is a multicast address (lowest bit of the first byte set)`,
        {
          code: ErrorCodes.INVALID_ARG,
          path: this.path,
        },
      );
    }
    this.#requireFeature(VirtioNetF.CTRL_MAC_ADDR, 'CTRL_MAC_ADDR', 'setMac()');
    await this.#control(
      `setMac(${formatMac(bytes)})`,
      VIRTIO_NET_CTRL_MAC,
      VIRTIO_NET_CTRL_MAC_ADDR_SET,
      bytes,
    );
    this.refreshConfig();
  }

  /** Promiscuous mode on or off (VIRTIO_NET_CTRL_RX_PROMISC; needs VIRTIO_NET_F_CTRL_RX). */
  setPromiscuous(on: boolean): Promise<void> {
    return this.#rxMode('setPromiscuous', VIRTIO_NET_CTRL_RX_PROMISC, on);
  }

  /** All-multicast mode on or off (VIRTIO_NET_CTRL_RX_ALLMULTI; needs VIRTIO_NET_F_CTRL_RX). */
  setAllMulticast(on: boolean): Promise<void> {
    return this.#rxMode('setAllMulticast', VIRTIO_NET_CTRL_RX_ALLMULTI, on);
  }

  async #rxMode(name: string, cmd: number, on: boolean): Promise<void> {
    if (typeof on !== 'boolean') {
      throw new VdpaError(`${name}(): expects true or false, got ${String(on)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    this.#requireFeature(
      VirtioNetF.CTRL_RX,
      'CTRL_RX',
      `${name}() (${controlCommandName(VIRTIO_NET_CTRL_RX, cmd)})`,
    );
    await this.#control(`${name}(${on})`, VIRTIO_NET_CTRL_RX, cmd, Uint8Array.of(on ? 1 : 0));
  }

  /**
   * Queue pairs to use. The driver runs one queue pair: it never negotiates
   * VIRTIO_NET_F_MQ (vdpa_sim_net does not offer it, and VDUSE net devices
   * (6.12) refuse CTRL_VQ, which MQ needs, so no lab device could test a
   * second pair). 1 is the only valid value and needs no command.
   * @throws (rejects) `ERR_INVALID_ARG` (not a positive integer),
   *   `ERR_UNSUPPORTED` (more than 1: the message says whether the device offered MQ and how many pairs).
   */
  setQueuePairs(n: number): Promise<void> {
    if (!Number.isSafeInteger(n) || n < 1) {
      return Promise.reject(
        new VdpaError(`setQueuePairs(${String(n)}): the number of queue pairs is a positive integer`, {
          code: ErrorCodes.INVALID_ARG,
          path: this.path,
        }),
      );
    }
    if (n !== 1) {
      const offer = hasBit(this.offeredFeatures, VirtioNetF.MQ)
        ? `${this.path} offers VIRTIO_NET_F_MQ (max_virtqueue_pairs ${this.#offeredPairs()}), but this driver does not negotiate it`
        : `${this.path} does not offer VIRTIO_NET_F_MQ`;
      return Promise.reject(
        new VdpaError(
          `setQueuePairs(${n}): this driver runs 1 queue pair: ${offer} (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET is never sent)`,
          { code: ErrorCodes.UNSUPPORTED, path: this.path },
        ),
      );
    }
    return Promise.resolve();
  }

  /** max_virtqueue_pairs of the config space (offset 8), read for error messages; '?' when absent. */
  #offeredPairs(): string {
    try {
      if (this.#transport.getConfigSize() < 10) return '?';
      return String(this.#transport.getConfig(8, 2).readUInt16LE(0));
    } catch {
      return '?';
    }
  }

  /**
   * Sends any control command (class, command, up to 64 bytes of data) and
   * resolves when the device acks it; a NAK rejects with `ERR_DEVICE_UNSUPP`
   * naming the command. No check beyond sizes: for commands this class does
   * not wrap (the spec forbids commands whose feature was not negotiated).
   */
  async controlCommand(cls: number, cmd: number, data: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (!isByte(cls) || !isByte(cmd) || !(data instanceof Uint8Array) || data.length > CTRL_DATA_MAX) {
      throw new VdpaError(
        `controlCommand(): class and command are bytes and data a Uint8Array of at most ${CTRL_DATA_MAX} bytes`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    if (!this.#hasControl) this.#requireFeature(VirtioNetF.CTRL_VQ, 'CTRL_VQ', 'controlCommand()');
    await this.#control('controlCommand()', cls, cmd, data);
  }

  #control(kind: string, cls: number, cmd: number, data: Uint8Array): Promise<void> {
    const error = this.#core.usableError('net device');
    if (error !== undefined) return Promise.reject(error);
    const core = this.#core;
    const request = core.newRequest(kind, 0, data.length, Uint8Array.from(data));
    const op = core.newOp(request, data.length > 0 ? 3 : 2);
    op.kind = OP_CTRL;
    op.queueIndex = CTRL_QUEUE;
    op.ctrlClass = cls;
    op.ctrlCmd = cmd;
    op.frame = undefined;
    core.enqueue(op);
    return core.promise<void>(request, undefined).then(
      () => {
        this.#counters.control.frames++;
      },
      (e: unknown) => {
        this.#counters.control.drops++;
        throw e;
      },
    );
  }

  #requireFeature(feature: number, name: string, what: string): void {
    if (!hasBit(this.features, feature) || !this.#hasControl) {
      const offered = hasBit(this.features, VirtioNetF.CTRL_VQ) ? '' : ' (nor VIRTIO_NET_F_CTRL_VQ)';
      throw new VdpaError(
        `${what} needs VIRTIO_NET_F_${name}, which ${this.path} did not negotiate${offered}`,
        {
          code: ErrorCodes.UNSUPPORTED,
          path: this.path,
        },
      );
    }
  }

  // ---- statistics and shutdown -----------------------------------------------------------------

  /**
   * Driver counters per queue and, with `vendor` (a function reading one
   * queue's vendor counters, e.g. `(q) => manager.getVendorStats('net0', q)`),
   * the device's own (vdpa_sim_net: "rx overruns", "rx drops" …) joined in.
   */
  async stats(
    vendor?: (queueIndex: number) => Promise<{ counters: { name: string; value: bigint }[] }>,
  ): Promise<NetStats> {
    const core = this.#core;
    const queue = (index: number, counters: QueueCounters): NetQueueStats => {
      const vq = core.queues[index].vq.stats;
      return {
        ...counters,
        kicks: vq.kicks,
        kicksSuppressed: vq.kicksSuppressed,
        completions: vq.completions,
      };
    };
    const coreStats = core.stats;
    const result: NetStats = {
      rx: queue(RX_QUEUE, this.#counters.rx),
      tx: queue(TX_QUEUE, this.#counters.tx),
      control: this.#hasControl ? queue(CTRL_QUEUE, this.#counters.control) : undefined,
      interrupts: coreStats.interrupts,
      resets: coreStats.resets,
    };
    if (vendor !== undefined) {
      const read = async (q: number): Promise<Record<string, bigint>> =>
        Object.fromEntries((await vendor(q)).counters.map((c) => [c.name, c.value]));
      result.vendor = {
        rx: await read(RX_QUEUE),
        tx: await read(TX_QUEUE),
        control: this.#hasControl ? await read(CTRL_QUEUE) : undefined,
      };
    }
    return result;
  }

  /** Stops the device (see CloseOptions: pending sends and commands drain by default); ends frames() iterators. */
  async close(options?: CloseOptions): Promise<void> {
    await this.#core.close(options);
    this.#endIterators();
  }

  #endIterators(): void {
    for (const iterator of [...this.#iterators]) iterator.end();
    this.#iterators.clear();
  }

  /** Lets the process exit while the device is open (like `socket.unref()`). */
  unref(): void {
    this.#core.setRef(false);
  }

  /** Undoes {@link unref}. */
  ref(): void {
    this.#core.setRef(true);
  }
}

function linkUpOf(config: NetConfig, features: bigint): boolean {
  return !hasBit(features, VirtioNetF.STATUS) || ((config.status ?? 0) & VIRTIO_NET_S_LINK_UP) !== 0;
}

function isByte(n: unknown): boolean {
  return Number.isInteger(n) && (n as number) >= 0 && (n as number) <= 255;
}

/** Whether to move the control queue to ASID 1 (see {@link NetDeviceOptions.isolateControlQueue}). */
function wantsIsolation(transport: NetTransport, choice: boolean | 'auto'): boolean {
  if (choice === false) return false;
  let why: string | undefined;
  if (
    transport.getAsNum === undefined ||
    transport.getGroupNum === undefined ||
    transport.getVringGroup === undefined ||
    transport.setGroupAsid === undefined ||
    transport.ackedBackendFeatures === undefined
  ) {
    why = 'the transport has no address-space ioctls';
  } else if (!hasBit(transport.ackedBackendFeatures, VhostBackendF.IOTLB_ASID)) {
    why = 'VHOST_BACKEND_F_IOTLB_ASID was not acknowledged';
  } else if (transport.getAsNum() < 2 || transport.getGroupNum() < 2) {
    why = `it has ${transport.getAsNum()} address space(s) and ${transport.getGroupNum()} group(s)`;
  } else {
    const group = transport.getVringGroup(CTRL_QUEUE);
    if (group === transport.getVringGroup(RX_QUEUE) || group === transport.getVringGroup(TX_QUEUE)) {
      why = `the control queue's group ${group} also holds a data queue`;
    }
  }
  if (why === undefined) return true;
  if (choice === true) {
    throw new VdpaError(`${transport.path}: cannot isolate the control queue in ASID 1: ${why}`, {
      code: ErrorCodes.UNSUPPORTED,
      path: transport.path,
    });
  }
  return false;
}

function floorPowerOfTwo(n: number): number {
  return n < 1 ? 0 : 2 ** Math.floor(Math.log2(n));
}
