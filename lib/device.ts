/**
 * A typed vhost-vdpa device: every control operation the kernel offers on
 * /dev/vhost-vdpa-N, named after the operation, plus the policy the kernel
 * leaves to userspace — feature negotiation, capability probing, and IOTLB
 * mapping with validation up front (the kernel answers every failed IOTLB
 * write with EFAULT, whatever the cause).
 */
import { ErrorCodes, hasCode, VdpaError } from './errors';
import { decodeBackendFeatures, bit, hasBit, VhostBackendF, VirtioF } from './features';
import {
  DmaAccess,
  IotlbMapper,
  IotlbMapping,
  MapOptions,
  MapRequest,
  MemlockPolicy,
  RawMemory,
} from './iotlb';
import { DmaRegion, IovaRange } from './memory';
import { native, NativeDeviceHandle, NativeDoorbell, PAGE_SIZE } from './native';
import {
  encodeIotlbMessages,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  IoctlName,
  ioctls,
  IotlbMessage,
  VDPA_CONFIG_HEADER_SIZE,
  VDPA_IOVA_RANGE_SIZE,
  VHOST_MSG_V2_SIZE,
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VringAddresses,
} from './uapi';

export type { DmaAccess, IotlbMapping, MapOptions, MapRequest, MemlockPolicy, RawMemory };

/** Options for {@link VhostVdpaDevice.open}. */
export interface OpenOptions {
  /** Call VHOST_SET_OWNER (needed before IOTLB writes and vring setup). Default true. */
  setOwner?: boolean;
  /**
   * Backend features to acknowledge, intersected with what the device offers.
   * Default: IOTLB_MSG_V2 | IOTLB_BATCH | IOTLB_ASID | SUSPEND | RESUME.
   * (IOTLB_PERSIST changes reset semantics and is only acked on request.)
   */
  backendFeatures?: bigint;
  /**
   * RLIMIT_MEMLOCK check before mapping. Parents in PA mode (hardware) pin mapped
   * memory and charge it to RLIMIT_MEMLOCK; VA-mode parents (VDUSE, vdpa_sim) don't.
   * Default `'enforce'`.
   */
  memlock?: MemlockPolicy;
}

/** Result of {@link VhostVdpaDevice.capabilities}: what this device and kernel support. */
export interface DeviceCapabilities {
  /** Backend features the device offers (decoded). */
  backendFeatures: string[];
  iotlbMsgV2: boolean;
  iotlbBatch: boolean;
  iotlbAsid: boolean;
  iotlbPersist: boolean;
  suspend: boolean;
  resume: boolean;
  enableAfterDriverOk: boolean;
  descAsid: boolean;
  /** VHOST_VDPA_GET_VRING_GROUP answered. */
  vringGroup: boolean;
  /** VHOST_VDPA_GET_VRING_DESC_GROUP answered. */
  vringDescGroup: boolean;
  /** VHOST_VDPA_GET_VRING_SIZE answered. */
  vringSize: boolean;
  /** VHOST_VDPA_GET_VQS_COUNT answered (Linux ≥ 5.18). */
  vqsCount: boolean;
  /** VHOST_VDPA_GET_GROUP_NUM / GET_AS_NUM answered. */
  groups: boolean;
  /** A doorbell page can be mapped for queue 0. */
  doorbell: boolean;
  /** How queues are notified: a mapped doorbell page, or the kick eventfd. */
  notification: 'doorbell' | 'eventfd';
  /** Why the doorbell is unavailable (error code), when it is. */
  doorbellError?: string;
}

/** The outcome of {@link VhostVdpaDevice.negotiate}. */
export interface Negotiation {
  /** Features the device offers. */
  offered: bigint;
  /** Features accepted (written with SET_FEATURES and confirmed by FEATURES_OK). */
  negotiated: bigint;
}

const UNSUPPORTED_CODES = ['ENOTTY', 'EOPNOTSUPP', 'ENOTSUPP'];

const DEFAULT_BACKEND_FEATURES =
  bit(VhostBackendF.IOTLB_MSG_V2) |
  bit(VhostBackendF.IOTLB_BATCH) |
  bit(VhostBackendF.IOTLB_ASID) |
  bit(VhostBackendF.SUSPEND) |
  bit(VhostBackendF.RESUME);

function checkIndex(name: string, value: number, max = 0xffffffff): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new VdpaError(`${name} must be an integer in [0, ${max}], got ${String(value)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
}

/** A mapped doorbell (notification area) page of one queue. */
export class Doorbell {
  readonly queueIndex: number;
  readonly #native: NativeDoorbell;

  /** @internal */
  constructor(queueIndex: number, nativeDoorbell: NativeDoorbell) {
    this.queueIndex = queueIndex;
    this.#native = nativeDoorbell;
  }

  /** Notifies the device: a 16-bit store of the queue index (no VIRTIO_F_NOTIFICATION_DATA). */
  notify(): void {
    this.#native.notify16(this.queueIndex);
  }

  /** Notifies with VIRTIO_F_NOTIFICATION_DATA: a 32-bit store of `(data << 16) | queueIndex`. */
  notifyWithData(data: number): void {
    this.#native.notify32(((data & 0xffff) << 16) | this.queueIndex);
  }

  /** True until {@link unmap}. */
  get mapped(): boolean {
    return this.#native.mapped;
  }

  /** Unmaps the page. Idempotent. */
  unmap(): void {
    this.#native.unmap();
  }
}

/**
 * An open /dev/vhost-vdpa-N. Methods are synchronous (each is one or a few
 * ioctls, microseconds on hardware and the simulators), except the ones that
 * can wait on another party — a VDUSE daemon answers a status change or the
 * reset of close(2) within its msg_timeout (30 s): {@link setStatusAsync},
 * {@link resetAsync} and {@link closeAsync} run on the libuv thread pool.
 */
export class VhostVdpaDevice {
  /** The device path. */
  readonly path: string;
  readonly #handle: NativeDeviceHandle;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Async ioctls running on the thread pool. */
  #asyncRunning = 0;
  #deviceId: number | undefined;
  #ackedBackend = 0n;
  #iovaRange: IovaRange | undefined;
  readonly #iotlb: IotlbMapper;

  private constructor(handle: NativeDeviceHandle, memlock: MemlockPolicy) {
    this.#handle = handle;
    this.path = handle.path;
    this.#iotlb = new IotlbMapper(
      this,
      (bytes) => handle.writeMessages(bytes, VHOST_MSG_V2_SIZE, 'IOTLB'),
      memlock,
    );
  }

  /**
   * Opens a vhost-vdpa device, takes ownership (VHOST_SET_OWNER) and
   * acknowledges backend features (IOTLB v2 messages, batching, ASID,
   * suspend/resume where offered).
   * @throws VdpaError `ENOENT` (no such device), `EBUSY` (already open: vhost-vdpa allows one open at a time),
   *   `EACCES`, `ENOTTY` (not a vhost-vdpa device).
   */
  static open(path: string, options: OpenOptions = {}): VhostVdpaDevice {
    if (typeof path !== 'string' || path.length === 0) {
      throw new VdpaError('device path must be a non-empty string such as /dev/vhost-vdpa-0', {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    let handle: NativeDeviceHandle;
    try {
      handle = new native.DeviceHandle(path);
    } catch (error) {
      throw explainOpenError(error, path);
    }
    const device = new VhostVdpaDevice(handle, options.memlock ?? 'enforce');
    try {
      // GET_DEVICE_ID first: on a file that is not a vhost-vdpa device it fails with ENOTTY.
      device.#deviceId = device.#ioctlU32('VHOST_VDPA_GET_DEVICE_ID');
      if (options.setOwner ?? true) device.setOwner();
      const wanted = options.backendFeatures ?? DEFAULT_BACKEND_FEATURES;
      device.setBackendFeatures(device.getBackendFeatures() & wanted);
    } catch (error) {
      handle.close();
      if (hasCode(error, 'ENOTTY')) {
        throw new VdpaError(`${path} is not a vhost-vdpa device (ioctl VHOST_VDPA_GET_DEVICE_ID: ENOTTY)`, {
          code: 'ENOTTY',
          errno: 25,
          syscall: 'ioctl(VHOST_VDPA_GET_DEVICE_ID)',
          path,
          cause: error,
        });
      }
      throw error;
    }
    return device;
  }

  /** The file descriptor (for passing to other processes or libraries); -1 once closed. */
  get fd(): number {
    return this.#handle.fd;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The virtio device id (1 = net, 2 = block …), VHOST_VDPA_GET_DEVICE_ID. */
  get deviceId(): number {
    this.#check();
    this.#deviceId ??= this.#ioctlU32('VHOST_VDPA_GET_DEVICE_ID');
    return this.#deviceId;
  }

  /** Backend features acknowledged with SET_BACKEND_FEATURES. */
  get ackedBackendFeatures(): bigint {
    return this.#ackedBackend;
  }

  // ---- ownership and features -------------------------------------------------------------

  /** VHOST_SET_OWNER: binds the device to this process (done by {@link open} unless disabled). */
  setOwner(): void {
    this.#ioctl('VHOST_SET_OWNER');
  }

  /** VHOST_RESET_OWNER: releases ownership. */
  resetOwner(): void {
    this.#ioctl('VHOST_RESET_OWNER');
  }

  /** VHOST_GET_FEATURES: the device's virtio features. */
  getFeatures(): bigint {
    return this.#ioctlU64('VHOST_GET_FEATURES');
  }

  /** VHOST_SET_FEATURES. Fails with EBUSY once FEATURES_OK is set; use {@link negotiate} for the whole dance. */
  setFeatures(features: bigint): void {
    this.#checkU64('features', features);
    this.#ioctlSetU64('VHOST_SET_FEATURES', features);
  }

  /** VHOST_GET_BACKEND_FEATURES: vhost backend features offered. */
  getBackendFeatures(): bigint {
    return this.#ioctlU64('VHOST_GET_BACKEND_FEATURES');
  }

  /** VHOST_SET_BACKEND_FEATURES. The kernel answers EOPNOTSUPP for bits it does not offer. */
  setBackendFeatures(features: bigint): void {
    this.#checkU64('backend features', features);
    this.#ioctlSetU64('VHOST_SET_BACKEND_FEATURES', features);
    this.#ackedBackend = features;
  }

  // ---- status -----------------------------------------------------------------------------

  /** VHOST_VDPA_GET_STATUS: the virtio status byte. */
  getStatus(): number {
    const bytes = new Uint8Array(1);
    this.#ioctl('VHOST_VDPA_GET_STATUS', bytes);
    return bytes[0];
  }

  /**
   * VHOST_VDPA_SET_STATUS. Writing 0 resets the device. vhost-vdpa keeps its
   * IOTLB across a reset (so do {@link mappings}: the same IOVAs cannot be
   * mapped again), but without IOTLB_PERSIST the parent is asked to clean its
   * own maps (vdpa_sim and mlx5 do; VDUSE does not): before the device uses
   * them again, send them with {@link resendMappings}.
   */
  setStatus(status: number): void {
    checkIndex('status', status, 0xff);
    this.#ioctl('VHOST_VDPA_SET_STATUS', Uint8Array.of(status));
  }

  /** Resets the device (status 0). */
  reset(): void {
    this.setStatus(0);
  }

  /**
   * {@link setStatus} on the libuv thread pool: the event loop keeps running
   * while the device takes its time (a VDUSE device waits for its daemon, up
   * to the daemon's msg_timeout). Until it settles, synchronous calls on this
   * device throw `ERR_BUSY` (the kernel would make them wait for it).
   * @throws VdpaError (rejects) `ERR_CLOSED`, `ERR_INVALID_ARG`, or the ioctl's errno with `syscall` and `path`.
   */
  async setStatusAsync(status: number): Promise<void> {
    checkIndex('status', status, 0xff);
    await this.#ioctlAsync('VHOST_VDPA_SET_STATUS', Uint8Array.of(status));
  }

  /** {@link reset} on the libuv thread pool (see {@link setStatusAsync}). */
  resetAsync(): Promise<void> {
    return this.setStatusAsync(0);
  }

  /**
   * Feature negotiation: reset → ACKNOWLEDGE → DRIVER → SET_FEATURES(wanted ∩
   * offered) → FEATURES_OK, then reads the status back to confirm the device
   * accepted. VERSION_1 and, where offered, ACCESS_PLATFORM are always
   * requested (vhost-vdpa is a virtio 1.x transport and vdpa_sim refuses a
   * driver that does not accept ACCESS_PLATFORM).
   * @param wanted features the driver understands.
   * @param required features without which the driver cannot work; missing → `ERR_UNSUPPORTED`.
   * @throws VdpaError `ERR_NEGOTIATION` if the device refuses the features.
   */
  negotiate(wanted: bigint, required = 0n): Negotiation {
    const offered = this.getFeatures();
    const missing = required & ~offered;
    if (missing !== 0n) {
      throw new VdpaError(
        `${this.path} lacks required features 0x${missing.toString(16)}; it offers 0x${offered.toString(16)}`,
        { code: ErrorCodes.UNSUPPORTED, path: this.path },
      );
    }
    const mandatory = bit(VirtioF.VERSION_1) | (offered & bit(VirtioF.ACCESS_PLATFORM));
    const negotiated = (wanted | required | mandatory) & offered;
    this.reset();
    this.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    this.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    try {
      this.setFeatures(negotiated);
    } catch (error) {
      throw new VdpaError(
        `${this.path} refused features 0x${negotiated.toString(16)} (VHOST_SET_FEATURES: ${(error as Error).message})`,
        { code: ErrorCodes.NEGOTIATION, path: this.path, cause: error },
      );
    }
    const featuresOk = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
    this.setStatus(featuresOk);
    const status = this.getStatus();
    if ((status & VIRTIO_CONFIG_S_FEATURES_OK) === 0) {
      throw new VdpaError(
        `${this.path} did not accept features 0x${negotiated.toString(16)}: FEATURES_OK not set ` +
          `(status 0x${status.toString(16)})`,
        { code: ErrorCodes.NEGOTIATION, path: this.path },
      );
    }
    return { offered, negotiated };
  }

  // ---- config space -------------------------------------------------------------------------

  /** VHOST_VDPA_GET_CONFIG_SIZE: bytes of device config space. */
  getConfigSize(): number {
    return this.#ioctlU32('VHOST_VDPA_GET_CONFIG_SIZE');
  }

  /**
   * VHOST_VDPA_GET_CONFIG: reads `length` bytes of config space at `offset`.
   * @throws VdpaError `ERR_OUT_OF_RANGE` beyond the config size (the kernel would only say EINVAL).
   */
  getConfig(offset: number, length: number): Buffer {
    this.#checkConfigRange(offset, length);
    const bytes = Buffer.alloc(VDPA_CONFIG_HEADER_SIZE + length);
    bytes.writeUInt32LE(offset, 0);
    bytes.writeUInt32LE(length, 4);
    this.#ioctl('VHOST_VDPA_GET_CONFIG', bytes);
    return bytes.subarray(VDPA_CONFIG_HEADER_SIZE);
  }

  /** VHOST_VDPA_SET_CONFIG: writes `data` into config space at `offset`. */
  setConfig(offset: number, data: Uint8Array): void {
    this.#checkConfigRange(offset, data.length);
    const bytes = Buffer.alloc(VDPA_CONFIG_HEADER_SIZE + data.length);
    bytes.writeUInt32LE(offset, 0);
    bytes.writeUInt32LE(data.length, 4);
    bytes.set(data, VDPA_CONFIG_HEADER_SIZE);
    this.#ioctl('VHOST_VDPA_SET_CONFIG', bytes);
  }

  /** VHOST_VDPA_SET_CONFIG_CALL: eventfd signalled on config changes; -1 unbinds. */
  setConfigCall(fd: number): void {
    checkFd(fd);
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setInt32(0, fd, true);
    this.#ioctl('VHOST_VDPA_SET_CONFIG_CALL', bytes);
  }

  // ---- queues -------------------------------------------------------------------------------

  /** VHOST_VDPA_GET_VRING_NUM: the maximum queue size. */
  getVringNum(): number {
    const bytes = new Uint8Array(2);
    this.#ioctl('VHOST_VDPA_GET_VRING_NUM', bytes);
    return new DataView(bytes.buffer).getUint16(0, true);
  }

  /** VHOST_VDPA_GET_VQS_COUNT: number of virtqueues. */
  getVqsCount(): number {
    return this.#ioctlU32('VHOST_VDPA_GET_VQS_COUNT');
  }

  /** VHOST_VDPA_GET_VRING_SIZE: the maximum size of one queue (EOPNOTSUPP where the parent lacks it). */
  getVringSize(index: number): number {
    return this.#vringStateQuery('VHOST_VDPA_GET_VRING_SIZE', index);
  }

  /** VHOST_SET_VRING_NUM: the size of queue `index`. */
  setVringNum(index: number, num: number): void {
    checkIndex('queue size', num, 0xffff);
    this.#vringState('VHOST_SET_VRING_NUM', index, num);
  }

  /** VHOST_SET_VRING_ADDR: IOVAs of the queue's descriptor table, avail and used rings. */
  setVringAddr(index: number, addr: VringAddresses): void {
    checkIndex('queue index', index);
    for (const key of ['desc', 'avail', 'used'] as const) this.#checkU64(`${key} address`, addr[key]);
    this.#queueIoctl('VHOST_SET_VRING_ADDR', index, encodeVringAddr(index, addr));
  }

  /** VHOST_SET_VRING_BASE: next avail index the device will read (packed: bit 15 = wrap counter). */
  setVringBase(index: number, base: number): void {
    checkIndex('vring base', base, 0xffffffff);
    this.#vringState('VHOST_SET_VRING_BASE', index, base);
  }

  /** VHOST_GET_VRING_BASE: the device's next avail index. */
  getVringBase(index: number): number {
    return this.#vringStateQuery('VHOST_GET_VRING_BASE', index);
  }

  /** VHOST_SET_VRING_KICK: eventfd the driver signals to notify the device; -1 unbinds. */
  setVringKick(index: number, fd: number): void {
    this.#vringFile('VHOST_SET_VRING_KICK', index, fd);
  }

  /** VHOST_SET_VRING_CALL: eventfd the device signals on used buffers; -1 unbinds. */
  setVringCall(index: number, fd: number): void {
    this.#vringFile('VHOST_SET_VRING_CALL', index, fd);
  }

  /** VHOST_SET_VRING_ERR: eventfd signalled on queue errors; -1 unbinds. */
  setVringErr(index: number, fd: number): void {
    this.#vringFile('VHOST_SET_VRING_ERR', index, fd);
  }

  /** VHOST_VDPA_SET_VRING_ENABLE. */
  setVringEnable(index: number, enable: boolean): void {
    this.#vringState('VHOST_VDPA_SET_VRING_ENABLE', index, enable ? 1 : 0);
  }

  /**
   * Maps queue `index`'s doorbell page (PROT_WRITE, MAP_SHARED, offset index × page size).
   * @throws VdpaError `ENOTSUPP` where the parent has no notification area (vdpa_sim, VDUSE):
   *   notify through the kick eventfd instead.
   */
  mapDoorbell(index: number): Doorbell {
    checkIndex('queue index', index, 0xffff);
    this.#check();
    return new Doorbell(index, this.#handle.mapDoorbell(index, PAGE_SIZE));
  }

  // ---- groups and address spaces -------------------------------------------------------------

  /** VHOST_VDPA_GET_GROUP_NUM: number of virtqueue groups. */
  getGroupNum(): number {
    return this.#ioctlU32('VHOST_VDPA_GET_GROUP_NUM');
  }

  /** VHOST_VDPA_GET_AS_NUM: number of address spaces (ASIDs). */
  getAsNum(): number {
    return this.#ioctlU32('VHOST_VDPA_GET_AS_NUM');
  }

  /** VHOST_VDPA_GET_VRING_GROUP: the group of queue `index`. */
  getVringGroup(index: number): number {
    return this.#vringStateQuery('VHOST_VDPA_GET_VRING_GROUP', index);
  }

  /** VHOST_VDPA_GET_VRING_DESC_GROUP: the group of queue `index`'s descriptor table (DESC_ASID). */
  getVringDescGroup(index: number): number {
    return this.#vringStateQuery('VHOST_VDPA_GET_VRING_DESC_GROUP', index);
  }

  /** VHOST_VDPA_SET_GROUP_ASID: attaches virtqueue group `group` to address space `asid`. */
  setGroupAsid(group: number, asid: number): void {
    checkIndex('group', group);
    checkIndex('asid', asid);
    this.#ioctl('VHOST_VDPA_SET_GROUP_ASID', encodeVringState(group, asid));
  }

  // ---- suspend / resume -------------------------------------------------------------------

  /** VHOST_VDPA_SUSPEND: stops queue processing, keeping state (needs VHOST_BACKEND_F_SUSPEND). */
  suspend(): void {
    this.#requireBackend(VhostBackendF.SUSPEND, 'suspend');
    this.#ioctl('VHOST_VDPA_SUSPEND');
  }

  /** VHOST_VDPA_RESUME: resumes a suspended device (needs VHOST_BACKEND_F_RESUME). */
  resume(): void {
    this.#requireBackend(VhostBackendF.RESUME, 'resume');
    this.#ioctl('VHOST_VDPA_RESUME');
  }

  // ---- IOVA and IOTLB -----------------------------------------------------------------------

  /** VHOST_VDPA_GET_IOVA_RANGE: the IOVA range the device can use (inclusive). */
  getIovaRange(): IovaRange {
    if (this.#iovaRange === undefined) {
      const bytes = new Uint8Array(VDPA_IOVA_RANGE_SIZE);
      this.#ioctl('VHOST_VDPA_GET_IOVA_RANGE', bytes);
      const view = new DataView(bytes.buffer);
      this.#iovaRange = { first: view.getBigUint64(0, true), last: view.getBigUint64(8, true) };
    }
    return { ...this.#iovaRange };
  }

  /** Live IOTLB mappings made through this object. */
  get mappings(): readonly IotlbMapping[] {
    return this.#iotlb.mappings;
  }

  /**
   * Maps memory into the device's IOVA space (an IOTLB UPDATE message).
   * Validated first, so failures say why: the memory must be a DmaRegion (or
   * a raw range of shared, file-backed memory), page-aligned, inside
   * GET_IOVA_RANGE, not overlapping another mapping of the same ASID, and
   * within RLIMIT_MEMLOCK (policy {@link OpenOptions.memlock}).
   */
  map(memory: DmaRegion | RawMemory, options: MapOptions = {}): IotlbMapping {
    return this.mapBatch([{ memory, ...options }])[0];
  }

  /**
   * Maps several ranges with one system-call crossing, inside one IOTLB batch
   * (BATCH_BEGIN … BATCH_END) when the device offers batching. All or nothing:
   * if the kernel refuses one, those already applied are invalidated.
   */
  mapBatch(entries: readonly MapRequest[]): IotlbMapping[] {
    this.#check();
    return this.#iotlb.mapBatch(entries);
  }

  /** Removes a mapping (IOTLB INVALIDATE) and frees its IOVA range. */
  unmap(mapping: IotlbMapping): void {
    this.unmapBatch([mapping]);
  }

  /** Removes several mappings in one batch. */
  unmapBatch(mappings: readonly IotlbMapping[]): void {
    this.#check();
    this.#iotlb.unmapBatch(mappings);
  }

  /**
   * Sends live mappings (default: all) to the kernel again, INVALIDATE then
   * UPDATE each, in one batch. After a reset without IOTLB_PERSIST a parent
   * that cleaned its maps (vdpa_sim, mlx5) sees them again; vhost-vdpa's own
   * bookkeeping, and ours, are unchanged.
   */
  resendMappings(mappings: readonly IotlbMapping[] = this.#iotlb.mappings): void {
    this.#check();
    this.#iotlb.resend(mappings);
  }

  /**
   * Sends raw IOTLB messages (UPDATE/INVALIDATE…), for callers that manage IOVAs
   * themselves. No validation and no bookkeeping: prefer {@link map}.
   */
  writeIotlbMessages(messages: readonly IotlbMessage[]): void {
    this.#check();
    this.#handle.writeMessages(encodeIotlbMessages(messages), VHOST_MSG_V2_SIZE, 'IOTLB');
  }

  // ---- probing ------------------------------------------------------------------------------

  /**
   * Probes every optional ioctl and backend feature. ENOTTY, EOPNOTSUPP and
   * ENOTSUPP mean "unsupported"; other errors are thrown. Has no side effects
   * on the device.
   */
  capabilities(): DeviceCapabilities {
    const offered = this.getBackendFeatures();
    const probe = (fn: () => unknown): boolean => {
      try {
        fn();
        return true;
      } catch (error) {
        if (hasCode(error, ...UNSUPPORTED_CODES)) return false;
        throw error;
      }
    };
    let doorbellError: string | undefined;
    let doorbell = false;
    try {
      this.mapDoorbell(0).unmap();
      doorbell = true;
    } catch (error) {
      doorbellError = (error as VdpaError).code ?? String(error);
    }
    return {
      backendFeatures: decodeBackendFeatures(offered),
      iotlbMsgV2: hasBit(offered, VhostBackendF.IOTLB_MSG_V2),
      iotlbBatch: hasBit(offered, VhostBackendF.IOTLB_BATCH),
      iotlbAsid: hasBit(offered, VhostBackendF.IOTLB_ASID),
      iotlbPersist: hasBit(offered, VhostBackendF.IOTLB_PERSIST),
      suspend: hasBit(offered, VhostBackendF.SUSPEND),
      resume: hasBit(offered, VhostBackendF.RESUME),
      enableAfterDriverOk: hasBit(offered, VhostBackendF.ENABLE_AFTER_DRIVER_OK),
      descAsid: hasBit(offered, VhostBackendF.DESC_ASID),
      vringGroup: probe(() => this.getVringGroup(0)),
      vringDescGroup: probe(() => this.getVringDescGroup(0)),
      vringSize: probe(() => this.getVringSize(0)),
      vqsCount: probe(() => this.getVqsCount()),
      groups: probe(() => this.getGroupNum() + this.getAsNum()),
      doorbell,
      notification: doorbell ? 'doorbell' : 'eventfd',
      ...(doorbellError === undefined ? {} : { doorbellError }),
    };
  }

  /**
   * Closes the device. The kernel resets it and drops every IOTLB mapping.
   * Idempotent; any later call throws `ERR_CLOSED`.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#handle.close();
    this.#iotlb.forget();
  }

  /**
   * {@link close} with close(2) on the libuv thread pool: closing resets the
   * device, and a VDUSE device's reset waits for its daemon (up to its
   * msg_timeout, 30 s). The device counts as closed at once (`closed` is true,
   * every other call throws `ERR_CLOSED`); the descriptor is closed after any
   * async call still running, and the mappings are forgotten (their regions
   * become freeable) once it is. Idempotent: later calls return the same promise.
   */
  closeAsync(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#closing = this.#handle.closeAsync().then(() => this.#iotlb.forget());
    return this.#closing;
  }

  // ---- internals ----------------------------------------------------------------------------

  #check(): void {
    this.#checkOpen();
    if (this.#asyncRunning > 0) {
      throw new VdpaError(
        `${this.path}: an async call (setStatusAsync/resetAsync) is still running, and the kernel would block ` +
          'this call until it ends; await it first',
        { code: ErrorCodes.BUSY, path: this.path },
      );
    }
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new VdpaError(`${this.path} is closed; open it again with VhostVdpaDevice.open()`, {
        code: ErrorCodes.CLOSED,
        path: this.path,
      });
    }
  }

  async #ioctlAsync(name: IoctlName, arg?: Uint8Array): Promise<number> {
    this.#checkOpen();
    this.#asyncRunning++;
    try {
      return await this.#handle.ioctlAsync(ioctls[name], name, arg);
    } finally {
      this.#asyncRunning--;
    }
  }

  #ioctl(name: IoctlName, arg?: Uint8Array): number {
    this.#check();
    return this.#handle.ioctl(ioctls[name], name, arg);
  }

  #ioctlU32(name: IoctlName): number {
    const bytes = new Uint8Array(4);
    this.#ioctl(name, bytes);
    return new DataView(bytes.buffer).getUint32(0, true);
  }

  #ioctlU64(name: IoctlName): bigint {
    const bytes = new Uint8Array(8);
    this.#ioctl(name, bytes);
    return new DataView(bytes.buffer).getBigUint64(0, true);
  }

  #ioctlSetU64(name: IoctlName, value: bigint): void {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, value, true);
    this.#ioctl(name, bytes);
  }

  /** Runs a per-queue ioctl, turning the kernel's ENOBUFS into a message that names the queue. */
  #queueIoctl(name: IoctlName, index: number, arg: Uint8Array): void {
    try {
      this.#ioctl(name, arg);
    } catch (error) {
      if (hasCode(error, 'ENOBUFS')) {
        const e = error as VdpaError;
        throw new VdpaError(`${e.message}: queue index ${index} is out of range for ${this.path}`, {
          code: e.code,
          errno: e.errno,
          syscall: e.syscall,
          path: this.path,
          cause: error,
        });
      }
      throw error;
    }
  }

  #vringState(name: IoctlName, index: number, num: number): void {
    checkIndex('queue index', index);
    this.#queueIoctl(name, index, encodeVringState(index, num));
  }

  #vringStateQuery(name: IoctlName, index: number): number {
    checkIndex('queue index', index);
    const bytes = encodeVringState(index, 0);
    this.#queueIoctl(name, index, bytes);
    return new DataView(bytes.buffer).getUint32(4, true);
  }

  #vringFile(name: IoctlName, index: number, fd: number): void {
    checkIndex('queue index', index);
    checkFd(fd);
    this.#queueIoctl(name, index, encodeVringFile(index, fd));
  }

  #checkU64(what: string, value: bigint): void {
    if (typeof value !== 'bigint' || value < 0n || value > 0xffffffffffffffffn) {
      throw new VdpaError(`${what} must be a bigint in [0, 2^64)`, {
        code: ErrorCodes.INVALID_ARG,
        path: this.path,
      });
    }
  }

  #checkConfigRange(offset: number, length: number): void {
    checkIndex('config offset', offset);
    checkIndex('config length', length);
    if (length === 0) {
      throw new VdpaError('config length must be at least 1 byte', {
        code: ErrorCodes.INVALID_ARG,
        path: this.path,
      });
    }
    const size = this.getConfigSize();
    if (offset + length > size) {
      throw new VdpaError(
        `config range [${offset}, ${offset + length}) is beyond the device's config space of ${size} bytes ` +
          `(VHOST_VDPA_GET_CONFIG_SIZE) on ${this.path}`,
        { code: ErrorCodes.OUT_OF_RANGE, path: this.path },
      );
    }
  }

  #requireBackend(feature: number, what: string): void {
    if (!hasBit(this.#ackedBackend, feature)) {
      const offered = hasBit(this.getBackendFeatures(), feature);
      throw new VdpaError(
        offered
          ? `${what} needs backend feature ${decodeBackendFeatures(bit(feature))[0]}, which was not acknowledged`
          : `${this.path} does not support ${what} (no VHOST_BACKEND_F_${decodeBackendFeatures(bit(feature))[0]})`,
        { code: 'EOPNOTSUPP', errno: 95, path: this.path },
      );
    }
  }
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < -1) {
    throw new VdpaError(`file descriptor must be an integer ≥ -1, got ${String(fd)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
}

function explainOpenError(error: unknown, path: string): unknown {
  const e = error as VdpaError;
  const hints: Record<string, string> = {
    EBUSY: 'another handle or process has it open (vhost-vdpa allows one open at a time)',
    ENOENT: 'no such device: is the vdpa device created and bound to vhost_vdpa? (vhost-vdpa dev list)',
    EACCES: 'permission denied: run as root or give your user access to the device node',
    ENXIO: 'the device node exists but its vdpa device is gone',
  };
  const hint = hints[e?.code];
  if (hint === undefined) return error;
  return new VdpaError(`cannot open ${path}: ${e.code} — ${hint}`, {
    code: e.code,
    errno: e.errno,
    syscall: 'open',
    path,
    cause: error,
  });
}

/** errno names the kernel uses for "this device/kernel cannot do that". */
export const UNSUPPORTED_ERRNO_CODES: readonly string[] = UNSUPPORTED_CODES;
