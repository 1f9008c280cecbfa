/**
 * A virtio-blk driver in user space over vhost-vdpa: the block protocol on
 * top of the driver core (lib/virtio/driver.ts).
 *
 * Life of a request: the public method validates it (alignment, bounds,
 * read-only, supported operation) and splits it into device requests no larger
 * than the device's limits; the core queues them, dispatches them into the
 * rings as space allows (encoding each with {@link BlkCodec}), and settles the
 * request's promise once its device requests are done. Deadlines, abort
 * signals, recovery after a stall or a corrupt ring, config changes and close
 * are the core's: see docs/blk.md for what a caller sees.
 */
import { EventEmitter } from 'node:events';
import { VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { bits, decodeFeatures, hasBit, VirtioBlkF, VirtioF } from '../features';
import { VIRTIO_ID_BLOCK } from '../uapi';
import { BlkConfig, decodeBlkConfig } from '../virtio-config';
import type { VirtqueueFormat } from '../virtqueue/types';
import { negotiateDevice } from '../virtio/config';
import { VirtioDriver } from '../virtio/driver';
import type { CloseOptions, DriverTransport } from '../virtio/types';
import { BOUNCE_FROM_DEVICE, BOUNCE_TO_DEVICE, DriverRequest } from '../virtio/request';
import { BlkCodec, BlkOp, SLOT_IN, SLOT_IN_MAX, SLOT_OUT, SLOT_SIZE } from './codec';
import { BlockLimits, bounceChunkSize, computeLimits, logicalBlockSizeOf } from './limits';
import { checkBuffer, checkRange, checkSignal, requireFeature } from './validate';
import {
  blkRequestTypeName,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
  VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
} from './protocol';

export type { BlockLimits } from './limits';
export type { BlockDeviceOptions, BlockDeviceStats, BlockOperation, RequestOptions } from './options';
import type { BlockDeviceOptions, BlockDeviceStats, BlockOperation, RequestOptions } from './options';
export type { CloseOptions, ResetEvent } from '../virtio/types';

/** The device operations the driver uses; {@link VhostVdpaDevice} has them all (host tests use a fake). */
export type BlockTransport = DriverTransport;

/**
 * The callback of {@link BlockDevice.readIntoCallback} and
 * {@link BlockDevice.writeCallback}: Node's `(error, result)` convention.
 * `error` is null on success (the same errors as the promise forms reject
 * with otherwise); `result` is the target buffer of a read (its contents
 * are undefined after an error) and undefined for a write.
 */
export type BlockCallback<T = undefined> = (error: Error | null, result: T) => void;

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
const DEFAULT_BOUNCE_BYTES = 4 << 20;
const DEFAULT_REQUEST_TIMEOUT_MS = 30000;
const MAX_U32 = 0xffffffff;

/**
 * A virtio-blk device driven from user space. Offsets, lengths and capacity
 * are in bytes. Events: `'config-change'` (the new {@link BlkConfig};
 * {@link capacity} and {@link config} are updated first), `'reset'`
 * ({@link ResetEvent}: the driver reset the device to recover), `'failed'`
 * (a VdpaError `ERR_DEVICE_FAILED`: every request is refused from now on).
 */
export class BlockDevice extends EventEmitter {
  /** The vhost-vdpa device path. */
  readonly path: string;
  /** Logical block size in bytes (offsets and lengths must be multiples of it). */
  readonly logicalBlockSize: number;
  /** Physical block size in bytes. */
  readonly physicalBlockSize: number;
  /** The device is read-only (VIRTIO_BLK_F_RO) or was opened with `readOnly`. */
  readonly readOnly: boolean;
  /** Negotiated features. */
  readonly features: bigint;
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

  readonly #core: VirtioDriver<BlkOp>;
  #config: BlkConfig;
  #capacity: number;

  private constructor(
    transport: BlockTransport,
    ownsTransport: boolean,
    negotiated: bigint,
    configBytes: Buffer,
    options: BlockDeviceOptions,
  ) {
    super();
    const config = decodeBlkConfig(configBytes, negotiated);
    this.path = transport.path;
    this.features = negotiated;
    this.#config = config;
    this.#capacity = Number(config.capacity) * VIRTIO_BLK_SECTOR_SIZE;
    this.logicalBlockSize = logicalBlockSizeOf(config);
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
    this.limits = computeLimits(config, this.queueSize, options.maxTransferBytes);
    const mode = options.completion ?? 'interrupt';
    if (mode !== 'interrupt' && mode !== 'poll') {
      throw new VdpaError(`completion must be 'interrupt' or 'poll', got ${String(mode)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    if (!Number.isSafeInteger(requestTimeoutMs) || requestTimeoutMs < 0) {
      throw new VdpaError(
        `requestTimeoutMs must be a non-negative integer (0 = no deadline), got ${String(requestTimeoutMs)}`,
        {
          code: ErrorCodes.INVALID_ARG,
        },
      );
    }
    const chunkSize = bounceChunkSize(config);
    const codec = new BlkCodec({
      path: this.path,
      maxChunks: this.limits.segmentsPerRequest,
      maxSegment: this.limits.sizeMax ?? this.limits.maxTransferBytes,
      pushData: (op, q, writable, maxSegment) => this.#core.pushData(op, q.vq, writable, maxSegment),
      configChanged: (bytes) => this.#configChanged(bytes),
    });
    this.#core = new VirtioDriver<BlkOp>(transport, codec, {
      features: negotiated,
      config: configBytes,
      queues: {
        count: queues,
        size: this.queueSize,
        format: this.ring,
        indirectEntries: this.indirect ? this.limits.segmentsPerRequest + 2 : 0,
        eventIdx: this.eventIdx,
        slotSize: SLOT_SIZE,
        doorbell: options.doorbell ?? true,
        name: 'vhost-vdpa-blk',
      },
      bounceBytes: Math.max(
        options.bounceBytes ?? DEFAULT_BOUNCE_BYTES,
        2 * this.limits.segmentsPerRequest * chunkSize,
      ),
      bounceChunkSize: chunkSize,
      completion: mode,
      pollSpinMicros: options.pollSpinMicros ?? 0,
      pollSliceMicros: options.pollSliceMicros ?? 1000,
      requestTimeoutMs,
      ownsTransport,
      emit: (event, ...args) => this.emit(event, ...args),
    });
    this.notification = this.#core.queues[0].notifier.path;
  }

  /**
   * Opens a virtio-blk vDPA device and starts it: negotiates features
   * (including EVENT_IDX, INDIRECT_DESC, MQ and — unless `ring: 'split'` —
   * RING_PACKED where offered), reads the config space, maps ring and bounce
   * memory, sets up the queues and the config interrupt and sets DRIVER_OK.
   * Given a path, the device is opened (and closed by {@link close}); given an
   * open {@link VhostVdpaDevice}, it is reset by close() but left open.
   * @throws VdpaError `ERR_UNSUPPORTED` (not a block device), `ERR_NEGOTIATION`,
   *   `ERR_OUT_OF_RANGE` (queues/queue size), `ERR_INVALID_ARG` (options), and any open/ioctl error.
   */
  static open(pathOrDevice: string | BlockTransport, options: BlockDeviceOptions = {}): BlockDevice {
    const owns = typeof pathOrDevice === 'string';
    const transport: BlockTransport = owns ? VhostVdpaDevice.open(pathOrDevice, options.open) : pathOrDevice;
    try {
      const { features, config } = negotiateDevice(transport, {
        deviceId: VIRTIO_ID_BLOCK,
        what: 'block device',
        wanted: WANTED_FEATURES,
        exclude: options.excludeFeatures,
        ring: options.ring,
      });
      return new BlockDevice(transport, owns, features, config, options);
    } catch (error) {
      if (owns) transport.close();
      else if (!transport.closed) transport.reset();
      throw error;
    }
  }

  /** Capacity in bytes (updated on a config change, before `'config-change'` is emitted). */
  get capacity(): number {
    return this.#capacity;
  }

  /** The decoded config space (updated on a config change). */
  get config(): BlkConfig {
    return this.#config;
  }

  /** Negotiated feature names. */
  get featureNames(): string[] {
    return decodeFeatures(this.features, VIRTIO_ID_BLOCK);
  }

  /** True once {@link close} has finished. */
  get closed(): boolean {
    return this.#core.state === 'closed';
  }

  /** `'open'`, `'recovering'` (after a reset; requests wait), `'failed'`, `'closing'` or `'closed'`. */
  get state(): VirtioDriver<BlkOp>['state'] {
    return this.#core.state;
  }

  /** Device requests queued or in flight. */
  get pending(): number {
    return this.#core.pending;
  }

  /** Counters since open. */
  get stats(): BlockDeviceStats {
    return this.#core.stats;
  }

  #configChanged(bytes: Buffer): BlkConfig {
    const config = decodeBlkConfig(bytes, this.features);
    this.#config = config;
    this.#capacity = Number(config.capacity) * VIRTIO_BLK_SECTOR_SIZE;
    return config;
  }

  // ---- zero-copy buffers ----------------------------------------------------------------------

  /**
   * Allocates a Buffer in DMA memory mapped for this device. Reads into it and
   * writes from it need no copy. It stays mapped until {@link freeBuffer} or
   * {@link close} (and is remapped at the same address after a reset). Each
   * call maps its own region (page-rounded): allocate a few buffers and reuse
   * them rather than one per request. The Buffer has an own, non-enumerable
   * `then` property that is `undefined`: a read that resolves to it then
   * skips V8's search of Buffer's prototype chain for a `then` method.
   */
  allocBuffer(size: number): Buffer {
    const error = this.#core.usableError('block device');
    if (error !== undefined) throw error;
    return this.#core.dma.allocBuffer(size, 'vhost-vdpa-blk-buffer');
  }

  /**
   * Unmaps and frees a buffer from {@link allocBuffer}; every view of it becomes empty.
   * @throws VdpaError `ERR_INVALID_ARG` for a buffer that is not one; `ERR_BUSY` while a request
   *   queued or in flight uses it (an aborted one included, until the device returns it).
   */
  freeBuffer(buffer: Uint8Array): void {
    this.#core.dma.freeBuffer(buffer);
  }

  // ---- I/O --------------------------------------------------------------------------------------

  /** Reads `length` bytes at `offset` into a new Buffer. */
  read(offset: number, length: number, options?: RequestOptions): Promise<Buffer> {
    const error = this.#checkRange('read', offset, length, false) ?? this.#checkSignal('read', options);
    if (error !== undefined) return Promise.reject(error);
    const target = Buffer.allocUnsafe(length);
    return this.#data('read', VIRTIO_BLK_T_IN, offset, target, target, options);
  }

  /**
   * Reads `target.length` bytes at `offset` into `target`: without a copy when
   * it is (a view of) a buffer from {@link allocBuffer}, through the bounce
   * pool otherwise. Resolves to `target`.
   */
  readInto<T extends Uint8Array>(offset: number, target: T, options?: RequestOptions): Promise<T> {
    const error =
      checkBuffer(target) ??
      this.#checkRange('read', offset, target.length, false) ??
      this.#checkSignal('read', options);
    if (error !== undefined) return Promise.reject(error);
    return this.#data('read', VIRTIO_BLK_T_IN, offset, target, target, options);
  }

  /**
   * The callback form of {@link readInto}, for callers that keep many
   * requests in flight or need the lowest latency: no Promise is made, and
   * the callbacks a completion batch settles run right after it, with what
   * they submit published in one kick — no microtask in between. Same
   * validation, limits, deadlines (`requestTimeoutMs`) and recovery as
   * {@link readInto}; no AbortSignal. `callback` is never called
   * synchronously: an invalid request gets its error on the next tick. An
   * exception thrown by `callback` is rethrown on the next tick (as from any
   * Node callback: 'uncaughtException') and affects no other request.
   *
   * @throws VdpaError `ERR_INVALID_ARG` when `callback` is not a function.
   */
  readIntoCallback<T extends Uint8Array>(offset: number, target: T, callback: BlockCallback<T>): void {
    checkCallback(callback);
    const error = checkBuffer(target) ?? this.#checkRange('read', offset, target.length, false);
    if (error !== undefined) {
      process.nextTick(callback, error, target);
      return;
    }
    const request = this.#dataRequest('read', VIRTIO_BLK_T_IN, offset, target, target);
    this.#core.submitWithCallback(request, callback as (error: Error | null, result: unknown) => void);
  }

  /**
   * The callback form of {@link write}; see {@link readIntoCallback}. Data
   * that is not from {@link allocBuffer} is copied when the request enters
   * the ring: do not modify it until the callback runs.
   *
   * @throws VdpaError `ERR_INVALID_ARG` when `callback` is not a function.
   */
  writeCallback(offset: number, data: Uint8Array, callback: BlockCallback): void {
    checkCallback(callback);
    const error = checkBuffer(data) ?? this.#checkRange('write', offset, data.length, true);
    if (error !== undefined) {
      process.nextTick(callback, error, undefined);
      return;
    }
    const request = this.#dataRequest('write', VIRTIO_BLK_T_OUT, offset, data, undefined);
    this.#core.submitWithCallback(request, callback as (error: Error | null, result: unknown) => void);
  }

  /**
   * Writes `data` at `offset`. Zero-copy for buffers from {@link allocBuffer};
   * other data is copied when the request enters the ring, so do not modify
   * it until the promise settles.
   */
  write(offset: number, data: Uint8Array, options?: RequestOptions): Promise<void> {
    const error =
      checkBuffer(data) ??
      this.#checkRange('write', offset, data.length, true) ??
      this.#checkSignal('write', options);
    if (error !== undefined) return Promise.reject(error);
    return this.#data('write', VIRTIO_BLK_T_OUT, offset, data, undefined, options);
  }

  /**
   * Makes completed writes durable (VIRTIO_BLK_T_FLUSH). Without
   * VIRTIO_BLK_F_FLUSH the device has no volatile cache (virtio 1.2 §5.2.6.2):
   * completed writes already are durable and this resolves at once.
   */
  flush(options?: RequestOptions): Promise<void> {
    const error = this.#core.usableError('block device') ?? this.#checkSignal('flush', options);
    if (error !== undefined) return Promise.reject(error);
    if (!hasBit(this.features, VirtioBlkF.FLUSH)) return Promise.resolve();
    const request = this.#core.newRequest('flush', 0, 0, undefined);
    this.#enqueue(request, VIRTIO_BLK_T_FLUSH, 2);
    return this.#core.promise(request, options?.signal);
  }

  /** Discards (deallocates) a range; its contents are then undefined (old data or zeros). */
  discard(offset: number, length: number, options?: RequestOptions): Promise<void> {
    const error =
      this.#checkRange('discard', offset, length, true) ??
      this.#requireFeature('discard', VirtioBlkF.DISCARD, 'VIRTIO_BLK_F_DISCARD') ??
      this.#checkSignal('discard', options);
    if (error !== undefined) return Promise.reject(error);
    const max = this.limits.maxDiscardBytes as number;
    return this.#range('discard', VIRTIO_BLK_T_DISCARD, offset, length, 0, max, options);
  }

  /** Writes zeros to a range; with `unmap` the device may deallocate it (reads still return zeros). */
  writeZeroes(
    offset: number,
    length: number,
    options: RequestOptions & { unmap?: boolean } = {},
  ): Promise<void> {
    const error =
      this.#checkRange('write-zeroes', offset, length, true) ??
      this.#requireFeature('write-zeroes', VirtioBlkF.WRITE_ZEROES, 'VIRTIO_BLK_F_WRITE_ZEROES') ??
      this.#checkSignal('write-zeroes', options);
    if (error !== undefined) return Promise.reject(error);
    const flags = options.unmap === true ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    const max = this.limits.maxWriteZeroesBytes as number;
    return this.#range('write-zeroes', VIRTIO_BLK_T_WRITE_ZEROES, offset, length, flags, max, options);
  }

  /** The device's id string (VIRTIO_BLK_T_GET_ID: up to 20 bytes, NUL-terminated if shorter). */
  getId(options?: RequestOptions): Promise<string> {
    const error = this.#core.usableError('block device') ?? this.#checkSignal('get-id', options);
    if (error !== undefined) return Promise.reject(error);
    const request = this.#core.newRequest('get-id', 0, 0, undefined);
    this.#enqueue(request, VIRTIO_BLK_T_GET_ID, 3);
    return this.#core.promise(request, options?.signal);
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
    signal?: AbortSignal;
  }): Promise<Buffer> {
    const usable = this.#core.usableError('block device') ?? this.#checkSignal('request', options);
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
    const payloadMax = SLOT_IN - SLOT_OUT;
    if (
      (payload?.length ?? 0) > payloadMax ||
      !Number.isInteger(responseLength) ||
      responseLength < 0 ||
      responseLength > SLOT_IN_MAX
    ) {
      return Promise.reject(
        new VdpaError(`rawRequest(): payload ≤ ${payloadMax} bytes and responseLength ≤ ${SLOT_IN_MAX}`, {
          code: ErrorCodes.OUT_OF_RANGE,
        }),
      );
    }
    const kind = `request ${blkRequestTypeName(type)}`;
    const request = this.#core.newRequest(kind, sector * VIRTIO_BLK_SECTOR_SIZE, 0, payload);
    request.result = Buffer.alloc(responseLength);
    const segments = 2 + (payload !== undefined && payload.length > 0 ? 1 : 0) + (responseLength > 0 ? 1 : 0);
    const op = this.#op(request, type, segments);
    op.sector = sector;
    op.length = responseLength;
    op.raw = true;
    this.#core.enqueue(op);
    return this.#core.promise(request, options.signal);
  }

  /**
   * Submits many operations with one kick per queue (as far as ring space
   * allows; the rest follow as completions free space). Returns one promise
   * per operation, in order; invalid operations reject without affecting the others.
   */
  submit(operations: readonly BlockOperation[]): Promise<unknown>[] {
    return this.#core.batch(() =>
      operations.map((o): Promise<unknown> => {
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
      }),
    );
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
    return this.#core.poll();
  }

  /** Lets the process exit while the device is open and idle (like `socket.unref()`). */
  unref(): void {
    this.#core.setRef(false);
  }

  /** Undoes {@link unref}. */
  ref(): void {
    this.#core.setRef(true);
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
    return this.#core.close(options);
  }

  // ---- validation (lib/blk/validate.ts) ------------------------------------------------------

  #checkRange(kind: string, offset: number, length: number, writes: boolean): VdpaError | undefined {
    return this.#core.usableError('block device') ?? checkRange(this, kind, offset, length, writes);
  }

  #checkSignal(kind: string, options: RequestOptions | undefined): Error | undefined {
    // Most requests carry no signal: no message string is built for them (one allocation per request less).
    if (options?.signal === undefined) return undefined;
    return checkSignal(`${kind} on ${this.path}`, options);
  }

  #requireFeature(kind: string, feature: number, name: string): VdpaError | undefined {
    return requireFeature(this, kind, feature, name);
  }

  // ---- request construction -------------------------------------------------------------------

  #op(request: DriverRequest, type: number, segments: number): BlkOp {
    const op = this.#core.newOp(request, segments);
    op.type = type;
    op.sector = 0;
    op.flags = 0;
    op.raw = false;
    return op;
  }

  #enqueue(request: DriverRequest, type: number, segments: number): void {
    this.#core.enqueue(this.#op(request, type, segments));
  }

  /** Splits a read or write into device requests within the limits. */
  #data<T>(
    kind: string,
    type: number,
    offset: number,
    data: Uint8Array,
    result: unknown,
    options: RequestOptions | undefined,
  ): Promise<T> {
    const request = this.#dataRequest(kind, type, offset, data, result);
    return this.#core.promise<T>(request, options?.signal);
  }

  /** A validated read or write as a request with its device ops enqueued (not yet submitted). */
  #dataRequest(kind: string, type: number, offset: number, data: Uint8Array, result: unknown): DriverRequest {
    const core = this.#core;
    const request = core.newRequest(kind, offset, data.length, data);
    request.result = result;
    const dma = core.dma.lookup(data);
    const zeroCopy = dma !== undefined;
    const max = zeroCopy ? this.limits.maxTransferBytes : this.limits.maxBounceTransferBytes;
    const segmentBytes = zeroCopy ? (this.limits.sizeMax ?? max) : (core.bounce?.chunkSize ?? max);
    const bounce = type === VIRTIO_BLK_T_IN ? BOUNCE_FROM_DEVICE : BOUNCE_TO_DEVICE;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(max, data.length - done);
      const op = this.#op(request, type, 2 + Math.ceil(n / segmentBytes));
      op.sector = (offset + done) / VIRTIO_BLK_SECTOR_SIZE;
      op.length = n;
      op.offsetInRequest = done;
      if (zeroCopy) {
        op.dataIova = dma.iova + data.byteOffset + done;
        op.dmaBuffer = dma;
      } else {
        op.bounce = bounce;
      }
      core.enqueue(op);
      done += n;
    }
    return request;
  }

  /** Splits a discard or write-zeroes range into device requests of at most `max` bytes. */
  #range(
    kind: string,
    type: number,
    offset: number,
    length: number,
    flags: number,
    max: number,
    options: RequestOptions | undefined,
  ): Promise<void> {
    const request = this.#core.newRequest(kind, offset, length, undefined);
    for (let done = 0; done < length; ) {
      const n = Math.min(max, length - done);
      const op = this.#op(request, type, 3);
      op.sector = (offset + done) / VIRTIO_BLK_SECTOR_SIZE;
      op.length = n;
      op.flags = flags;
      this.#core.enqueue(op);
      done += n;
    }
    return this.#core.promise(request, options?.signal);
  }
}

function checkCallback(callback: unknown): void {
  if (typeof callback !== 'function') {
    throw new VdpaError(`callback must be a function (got ${typeof callback})`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
}

function floorPowerOfTwo(n: number): number {
  return n < 1 ? 0 : 2 ** Math.floor(Math.log2(n));
}
