/**
 * A vDPA device as a VMM uses it: the guest drives the virtqueues, the VMM
 * only hands the device the guest's ring addresses (GPAs, or IOVAs behind a
 * guest IOMMU), its RAM and its eventfds (KVM ioeventfd/irqfd or any eventfd),
 * passes config space through, and can pause the device, save its ring state
 * and restore it on another device. The shape follows cloud-hypervisor's
 * `--vdpa path=…,num_queues=…,iommu=…,id=…`. docs/vmm.md has the flows.
 */
import { writeSync } from 'node:fs';
import * as path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { bit, hasBit, VhostBackendF, VirtioF } from '../features';
import type { IotlbMapping } from '../iotlb';
import { hex } from '../memory';
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
} from '../uapi';
import type { GuestIommuMapping, GuestMemory } from './guest-memory';
import { decodeRingBase, DeviceState, PauseMethod, QueueState } from './state';

/** The device operations a backend uses; {@link VhostVdpaDevice} has them all (host tests pass a fake). */
export type BackendDevice = Pick<
  VhostVdpaDevice,
  | 'path'
  | 'deviceId'
  | 'ackedBackendFeatures'
  | 'getFeatures'
  | 'setFeatures'
  | 'getStatus'
  | 'setStatus'
  | 'resetAsync'
  | 'getConfigSize'
  | 'getConfig'
  | 'setConfig'
  | 'setConfigCall'
  | 'getVqsCount'
  | 'getVringNum'
  | 'setVringNum'
  | 'setVringAddr'
  | 'setVringBase'
  | 'getVringBase'
  | 'setVringKick'
  | 'setVringCall'
  | 'setVringEnable'
  | 'suspend'
  | 'resume'
  | 'mapBatch'
  | 'unmapBatch'
  | 'resendMappings'
  | 'closeAsync'
>;

/** cloud-hypervisor's `--vdpa` option, as an object. */
export interface VdpaBackendOptions {
  /** `/dev/vhost-vdpa-N`. */
  path: string;
  /** Queues the guest will use (≤ the device's VHOST_VDPA_GET_VQS_COUNT). */
  numQueues: number;
  /** The guest has an IOMMU: ring addresses are IOVAs and the caller passes the IOVA → GPA mappings. */
  iommu?: boolean;
  /** A name for messages and the saved state; default the device file's name. */
  id?: string;
}

/** One queue as the guest set it up. */
export interface QueueSetup {
  /** Queue size the guest chose (power of two ≤ the device's maximum). */
  size: number;
  /** Descriptor table (packed: descriptor ring), GPA or IOVA. */
  descGpa: bigint;
  /** Driver area (split: avail ring; packed: driver event suppression). */
  availGpa: bigint;
  /** Device area (split: used ring; packed: device event suppression). */
  usedGpa: bigint;
  /** The eventfd the guest's notifications arrive on (a KVM ioeventfd, or any eventfd). */
  kickFd: number;
  /** The eventfd the device signals (a KVM irqfd, or any eventfd). */
  callFd: number;
  /** VHOST_SET_VRING_BASE; default 0 (a fresh ring). A restore passes the saved value. */
  base?: number;
  /** Enable now (default), or later with {@link VdpaBackend.enableQueue} (needs ENABLE_AFTER_DRIVER_OK). */
  enabled?: boolean;
}

/** What {@link VdpaBackend.activate} needs. */
export interface ActivateOptions {
  /** Guest RAM; mapped at IOVA = GPA unless the backend is in `iommu` mode. */
  memory: GuestMemory;
  /** The virtio features the guest acknowledged (default: those given to {@link VdpaBackend.ackFeatures}). */
  features?: bigint;
  queues: readonly QueueSetup[];
  /** `iommu` mode: the guest IOMMU's IOVA → GPA mappings (all of them, in one batch). */
  iommuMappings?: readonly GuestIommuMapping[];
}

/** Options for {@link VdpaBackend.pause}. */
export interface PauseOptions {
  /**
   * Where the device cannot suspend (no VHOST_BACKEND_F_SUSPEND: VDUSE on 6.12), stop it anyway:
   * unbind the kicks, wait for completions to stop, reset the device and rewind every queue to
   * the guest's used index. The device's in-flight requests are lost and the next device re-executes
   * them. Default false: such a pause throws `ERR_UNSUPPORTED`.
   */
  allowReset?: boolean;
  /** Fallback only: the used index must stay unchanged this long before the reset (ms, default 20). */
  quiesceMs?: number;
  /** Fallback only: give up waiting for quiet after this long and reset anyway (ms, default 2000). */
  drainTimeoutMs?: number;
}

/** What {@link VdpaBackend.restore} needs besides the state: this process's memory and eventfds. */
export interface RestoreOptions {
  memory: GuestMemory;
  /** Per queue, the guest's kick and call eventfds in this process. */
  queues: readonly { kickFd: number; callFd: number }[];
  iommuMappings?: readonly GuestIommuMapping[];
  /** Refuse a device whose config space differs from the saved one (default true). */
  checkConfig?: boolean;
}

/** Lifecycle of a backend. */
export type BackendPhase = 'idle' | 'active' | 'paused' | 'closed';

/** Backend features a VMM wants on top of the library's defaults. */
const VMM_BACKEND_FEATURES =
  bit(VhostBackendF.IOTLB_MSG_V2) |
  bit(VhostBackendF.IOTLB_BATCH) |
  bit(VhostBackendF.IOTLB_ASID) |
  bit(VhostBackendF.SUSPEND) |
  bit(VhostBackendF.RESUME) |
  bit(VhostBackendF.ENABLE_AFTER_DRIVER_OK);

const SPLIT_DESC = 16;

/** A vDPA device driven by a guest, on behalf of a VMM. */
export class VdpaBackend {
  /** The device file. */
  readonly path: string;
  /** `id=`. */
  readonly id: string;
  /** Queues the guest uses. */
  readonly numQueues: number;
  /** Ring addresses are guest IOVAs. */
  readonly iommu: boolean;
  readonly #device: BackendDevice;
  #phase: BackendPhase = 'idle';
  #acked: bigint | undefined;
  #features = 0n;
  #memory: GuestMemory | undefined;
  #iommuMappings: readonly GuestIommuMapping[] | undefined;
  #mappings: IotlbMapping[] = [];
  #queues: QueueSetup[] = [];
  #pauseMethod: PauseMethod | undefined;

  /** Wraps an open device (tests pass a fake). Prefer {@link VdpaBackend.open}. */
  constructor(device: BackendDevice, options: VdpaBackendOptions) {
    this.#device = device;
    this.path = device.path;
    this.id = options.id ?? path.basename(device.path);
    this.iommu = options.iommu ?? false;
    const available = device.getVqsCount();
    if (!Number.isInteger(options.numQueues) || options.numQueues < 1 || options.numQueues > available) {
      throw new VdpaError(
        `${this.id}: num_queues=${String(options.numQueues)} but ${device.path} has ${available} virtqueue(s)`,
        { code: ErrorCodes.OUT_OF_RANGE, path: device.path },
      );
    }
    this.numQueues = options.numQueues;
  }

  /**
   * Opens `options.path` (SET_OWNER, backend features incl. SUSPEND, RESUME and
   * ENABLE_AFTER_DRIVER_OK where offered).
   * @throws VdpaError from {@link VhostVdpaDevice.open}; `ERR_OUT_OF_RANGE` for a bad `numQueues`.
   */
  static open(options: VdpaBackendOptions): VdpaBackend {
    const device = VhostVdpaDevice.open(options.path, { backendFeatures: VMM_BACKEND_FEATURES });
    try {
      return new VdpaBackend(device, options);
    } catch (error) {
      device.close();
      throw error;
    }
  }

  /** Where the backend is in its lifecycle. */
  get phase(): BackendPhase {
    return this.#phase;
  }

  /** VHOST_SUSPEND and VHOST_RESUME were offered and acknowledged. */
  get canSuspend(): boolean {
    const acked = this.#device.ackedBackendFeatures;
    return hasBit(acked, VhostBackendF.SUSPEND) && hasBit(acked, VhostBackendF.RESUME);
  }

  /** The device's virtio features, for the VMM's own negotiation with its guest. */
  get deviceFeatures(): bigint {
    this.#checkOpen();
    return this.#device.getFeatures();
  }

  /**
   * Records the features the guest acknowledged (sent to the device by {@link activate}).
   * @throws VdpaError `ERR_UNSUPPORTED` for bits the device does not offer; `ERR_INVALID_ARG` without VERSION_1.
   */
  ackFeatures(features: bigint): void {
    this.#checkFeatures(features);
    this.#acked = features;
  }

  /** Config space size in bytes. */
  get configSize(): number {
    this.#checkOpen();
    return this.#device.getConfigSize();
  }

  /** Reads `length` bytes of config space at `offset` (the guest's config reads, passed through). */
  readConfig(offset: number, length: number): Buffer {
    this.#checkOpen();
    return this.#device.getConfig(offset, length);
  }

  /** Writes config space (the guest's config writes, passed through). */
  writeConfig(offset: number, data: Uint8Array): void {
    this.#checkOpen();
    this.#device.setConfig(offset, data);
  }

  /** Binds the eventfd the device signals on a config change (VHOST_VDPA_SET_CONFIG_CALL); -1 unbinds. */
  setConfigInterrupt(fd: number): void {
    this.#checkOpen();
    this.#device.setConfigCall(fd);
  }

  /**
   * Starts the device on the guest's rings: reset, features (FEATURES_OK checked), guest RAM into
   * the IOTLB in one batch, then per queue NUM, ADDR, BASE, KICK, CALL and ENABLE — all before
   * DRIVER_OK, which VDUSE requires (it is never told of a later enable).
   * @throws VdpaError `ERR_INVALID_STATE` (already active or paused), `ERR_INVALID_ARG` (queue count,
   *   eventfds), `ERR_OUT_OF_RANGE` (queue size, ring outside guest memory), `ERR_MISALIGNED`,
   *   `ERR_UNSUPPORTED` (features), `ERR_NEGOTIATION` (FEATURES_OK refused), or the ioctl's errno.
   */
  activate(options: ActivateOptions): void {
    this.#checkPhase('activate', 'idle');
    const features = options.features ?? this.#acked;
    if (features === undefined) {
      throw new VdpaError(`${this.id}: activate() needs features: pass them or call ackFeatures() first`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    this.#checkFeatures(features);
    if (this.iommu !== (options.iommuMappings !== undefined)) {
      throw new VdpaError(
        this.iommu
          ? `${this.id}: iommu=on needs the guest IOMMU's mappings (iommuMappings)`
          : `${this.id}: iommuMappings given but the backend was opened with iommu=off`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    this.#checkQueues(options.queues, features, options.memory, options.iommuMappings);
    const device = this.#device;
    try {
      device.setStatus(0);
      device.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
      device.setFeatures(features);
      const driver = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
      device.setStatus(driver);
      if ((device.getStatus() & VIRTIO_CONFIG_S_FEATURES_OK) === 0) {
        throw new VdpaError(
          `${this.id}: the device refused features ${hex(features)} (FEATURES_OK not set)`,
          {
            code: ErrorCodes.NEGOTIATION,
            path: this.path,
          },
        );
      }
      if (this.#mappings.length > 0 && this.#memory === options.memory) {
        // Re-activation after a reset: vhost kept the mappings, the parent may have cleaned its own.
        device.resendMappings(this.#mappings);
      } else {
        if (this.#mappings.length > 0) device.unmapBatch(this.#mappings);
        this.#mappings = options.memory.mapInto(device, options.iommuMappings);
      }
      this.#memory = options.memory;
      this.#iommuMappings = options.iommuMappings;
      options.queues.forEach((q, i) => {
        device.setVringNum(i, q.size);
        device.setVringAddr(i, { desc: q.descGpa, avail: q.availGpa, used: q.usedGpa });
        device.setVringBase(i, q.base ?? 0);
        device.setVringKick(i, q.kickFd);
        device.setVringCall(i, q.callFd);
        if (q.enabled ?? true) device.setVringEnable(i, true);
      });
      device.setStatus(driver | VIRTIO_CONFIG_S_DRIVER_OK);
    } catch (error) {
      try {
        device.setStatus(0);
      } catch {
        // The original error says what went wrong; a failed reset adds nothing.
      }
      throw error;
    }
    this.#features = features;
    this.#queues = options.queues.map((q) => ({ ...q, enabled: q.enabled ?? true }));
    this.#phase = 'active';
  }

  /**
   * Enables a queue left disabled by {@link activate}, after DRIVER_OK.
   * @throws VdpaError `ERR_UNSUPPORTED` unless the device offers VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK
   *   (VDUSE does not: it never learns of the enable); `ERR_INVALID_STATE` when not active.
   */
  enableQueue(index: number): void {
    this.#checkPhase('enableQueue', 'active');
    const queue = this.#queue(index);
    if (!hasBit(this.#device.ackedBackendFeatures, VhostBackendF.ENABLE_AFTER_DRIVER_OK)) {
      throw new VdpaError(
        `${this.id}: cannot enable queue ${index} after DRIVER_OK: the device does not offer ` +
          'VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK (VDUSE never learns of such an enable); enable it in activate()',
        { code: ErrorCodes.UNSUPPORTED, path: this.path },
      );
    }
    this.#device.setVringEnable(index, true);
    queue.enabled = true;
  }

  /**
   * Stops the device and returns its state. With VHOST_BACKEND_F_SUSPEND: SUSPEND, then
   * GET_VRING_BASE per queue (nothing is lost; {@link resume} continues). Without it and with
   * `allowReset`: the reset-and-rewind fallback (see {@link PauseOptions.allowReset}); the device
   * is then idle, and a later {@link restore} (here or on another device) continues the rings.
   * @throws VdpaError `ERR_INVALID_STATE` when not active; `ERR_UNSUPPORTED` when the device cannot
   *   suspend and `allowReset` is not set, or for a packed ring on the fallback.
   */
  async pause(options: PauseOptions = {}): Promise<DeviceState> {
    this.#checkPhase('pause', 'active');
    const packed = hasBit(this.#features, VirtioF.RING_PACKED);
    const inFlightAtPause = this.#queues.map((q) => (packed ? -1 : this.#pendingInGuest(q)));
    let bases: number[];
    let requeued: number[] | undefined;
    let method: PauseMethod;
    if (this.canSuspend) {
      this.#device.suspend();
      bases = this.#queues.map((_, i) => this.#device.getVringBase(i));
      method = 'suspend';
      this.#phase = 'paused';
    } else {
      if (options.allowReset !== true) {
        throw new VdpaError(
          `${this.id}: ${this.path} cannot suspend (no VHOST_BACKEND_F_SUSPEND); pause({ allowReset: true }) ` +
            'resets it instead and rewinds the rings to the guest used index (in-flight requests are re-executed)',
          { code: ErrorCodes.UNSUPPORTED, path: this.path },
        );
      }
      if (packed) {
        throw new VdpaError(`${this.id}: the reset-and-rewind fallback supports split rings only`, {
          code: ErrorCodes.UNSUPPORTED,
          path: this.path,
        });
      }
      bases = await this.#resetAndRewind(options);
      requeued = this.#queues.map((q) => this.#pendingInGuest(q));
      method = 'reset-and-rewind';
      this.#phase = 'idle';
    }
    this.#pauseMethod = method;
    return {
      version: 1,
      id: this.id,
      source: this.path,
      deviceId: this.#device.deviceId,
      features: hex(this.#features),
      iommu: this.iommu,
      config: this.#device.getConfig(0, this.#device.getConfigSize()).toString('hex'),
      method,
      inFlightAtPause,
      ...(requeued === undefined ? {} : { requeued }),
      queues: this.#queues.map(
        (q, i): QueueState => ({
          index: i,
          size: q.size,
          descGpa: hex(q.descGpa),
          availGpa: hex(q.availGpa),
          usedGpa: hex(q.usedGpa),
          enabled: q.enabled ?? true,
          base: decodeRingBase(bases[i], packed),
        }),
      ),
    };
  }

  /**
   * Resumes a device paused with SUSPEND (VHOST_VDPA_RESUME; vdpa_sim re-kicks every queue).
   * @throws VdpaError `ERR_INVALID_STATE` when not paused, or paused by reset-and-rewind (use {@link restore}).
   */
  resume(): void {
    if (this.#phase === 'idle' && this.#pauseMethod === 'reset-and-rewind') {
      throw new VdpaError(
        `${this.id}: the device was reset by pause({ allowReset }), not suspended: restore(state) restarts it`,
        { code: ErrorCodes.INVALID_STATE, path: this.path },
      );
    }
    this.#checkPhase('resume', 'paused');
    this.#device.resume();
    this.#phase = 'active';
  }

  /**
   * Continues a saved guest on this device: checks the state fits (device type, features, queue
   * count, config), then {@link activate} with the saved ring addresses and bases (SET_VRING_BASE
   * before any enable), and kicks every queue once, since kicks sent while no device listened are
   * gone and a spurious kick is harmless.
   * @throws VdpaError `ERR_STATE_MISMATCH` when the state does not fit; what {@link activate} throws.
   */
  restore(state: DeviceState, options: RestoreOptions): void {
    this.#checkPhase('restore', 'idle');
    const mismatch = (what: string): never => {
      throw new VdpaError(
        `${this.id}: cannot restore the state of ${state.source} onto ${this.path}: ${what}`,
        {
          code: ErrorCodes.STATE_MISMATCH,
          path: this.path,
        },
      );
    };
    const features = BigInt(state.features);
    if (state.deviceId !== this.#device.deviceId) {
      mismatch(`device type ${state.deviceId} saved, ${this.#device.deviceId} here`);
    }
    const missing = features & ~this.#device.getFeatures();
    if (missing !== 0n)
      mismatch(`the saved features include ${hex(missing)}, which this device does not offer`);
    if (state.queues.length !== this.numQueues) {
      mismatch(`${state.queues.length} queue(s) saved, num_queues=${this.numQueues} here`);
    }
    if (state.iommu !== this.iommu) mismatch(`iommu=${state.iommu ? 'on' : 'off'} saved`);
    if (options.checkConfig ?? true) {
      const saved = Buffer.from(state.config, 'hex');
      const here = this.#device.getConfig(0, this.#device.getConfigSize());
      if (!saved.equals(here)) {
        const at = saved.findIndex((b, i) => b !== here[i]);
        mismatch(
          `config space differs (${saved.length} bytes saved, ${here.length} here; first difference at ` +
            `offset ${at < 0 ? Math.min(saved.length, here.length) : at}); pass checkConfig: false to accept`,
        );
      }
    }
    if (options.queues.length !== state.queues.length) {
      throw new VdpaError(
        `${this.id}: ${state.queues.length} queue(s) saved, eventfds for ${options.queues.length}`,
        {
          code: ErrorCodes.INVALID_ARG,
        },
      );
    }
    this.activate({
      memory: options.memory,
      features,
      ...(options.iommuMappings === undefined ? {} : { iommuMappings: options.iommuMappings }),
      queues: state.queues.map((q, i) => ({
        size: q.size,
        descGpa: BigInt(q.descGpa),
        availGpa: BigInt(q.availGpa),
        usedGpa: BigInt(q.usedGpa),
        kickFd: options.queues[i].kickFd,
        callFd: options.queues[i].callFd,
        base: q.base.raw,
        enabled: q.enabled,
      })),
    });
    for (const q of options.queues) kickEventFd(q.kickFd);
  }

  /**
   * Stops the device for good on this side (reset, IOTLB unmapped): after a pause whose state
   * another device took over, so this one can never touch the guest's rings again.
   */
  async deactivate(): Promise<void> {
    this.#checkOpen();
    await this.#device.resetAsync();
    if (this.#mappings.length > 0) this.#device.unmapBatch(this.#mappings);
    this.#mappings = [];
    this.#memory = undefined;
    this.#phase = 'idle';
    this.#pauseMethod = undefined;
  }

  /** Closes the device (the kernel resets it and drops the IOTLB). Idempotent. */
  async close(): Promise<void> {
    if (this.#phase === 'closed') return;
    this.#phase = 'closed';
    this.#mappings = [];
    await this.#device.closeAsync();
  }

  // ---- internals ----------------------------------------------------------------------------

  /** The reset-and-rewind fallback; returns the new bases (the guest's used indexes). */
  async #resetAndRewind(options: PauseOptions): Promise<number[]> {
    const quiesceMs = options.quiesceMs ?? 20;
    const deadline = Date.now() + (options.drainTimeoutMs ?? 2000);
    // Unbind the kicks first: the device then takes no new request, so the used index stops moving once
    // what it took has completed. A completion after the reset would reach the guest twice (once from
    // here, once re-executed by the next device), so wait for quiet before resetting.
    this.#queues.forEach((_, i) => this.#device.setVringKick(i, -1));
    let last = this.#queues.map((q) => this.#usedIdx(q));
    let quietSince = Date.now();
    while (Date.now() < deadline) {
      await sleep(1);
      const now = this.#queues.map((q) => this.#usedIdx(q));
      if (now.some((v, i) => v !== last[i])) {
        last = now;
        quietSince = Date.now();
      } else if (Date.now() - quietSince >= quiesceMs) {
        break;
      }
    }
    await this.#device.resetAsync();
    return this.#queues.map((q) => this.#usedIdx(q));
  }

  /** Split ring: avail.idx − used.idx as the guest's memory shows them. */
  #pendingInGuest(q: QueueSetup): number {
    const avail = this.#ringView(q.availGpa + 2n, 2).readUInt16LE(0);
    return (avail - this.#usedIdx(q)) & 0xffff;
  }

  #usedIdx(q: QueueSetup): number {
    return this.#ringView(q.usedGpa + 2n, 2).readUInt16LE(0);
  }

  /** Guest memory at a ring address (a GPA, or an IOVA translated through the guest IOMMU mappings). */
  #ringView(address: bigint, length: number): Buffer {
    const memory = this.#memory as GuestMemory;
    return memory.view(this.#toGpa(address, length, this.#iommuMappings), length);
  }

  #toGpa(address: bigint, length: number, iommu: readonly GuestIommuMapping[] | undefined): bigint {
    if (iommu === undefined) return address;
    const m = iommu.find((e) => address >= e.iova && address + BigInt(length) <= e.iova + BigInt(e.size));
    if (m === undefined) {
      throw new VdpaError(
        `${this.id}: ring address ${hex(address)} (+${length}) is not covered by the guest IOMMU mappings`,
        { code: ErrorCodes.OUT_OF_RANGE },
      );
    }
    return m.gpa + (address - m.iova);
  }

  #checkQueues(
    queues: readonly QueueSetup[],
    features: bigint,
    memory: GuestMemory,
    iommu: readonly GuestIommuMapping[] | undefined,
  ): void {
    if (!Array.isArray(queues) || queues.length !== this.numQueues) {
      throw new VdpaError(
        `${this.id}: num_queues=${this.numQueues} but ${Array.isArray(queues) ? queues.length : 'no'} queue(s) given`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    const max = this.#device.getVringNum();
    const packed = hasBit(features, VirtioF.RING_PACKED);
    queues.forEach((q, i) => {
      const what = `${this.id} queue ${i}`;
      if (
        !Number.isInteger(q.size) ||
        q.size < 1 ||
        q.size > max ||
        (!packed && (q.size & (q.size - 1)) !== 0)
      ) {
        throw new VdpaError(
          `${what}: size ${String(q.size)} must be ${packed ? '' : 'a power of two '}in [1, ${max}] ` +
            '(VHOST_VDPA_GET_VRING_NUM)',
          { code: ErrorCodes.OUT_OF_RANGE, path: this.path },
        );
      }
      for (const key of ['kickFd', 'callFd'] as const) {
        if (!Number.isInteger(q[key]) || q[key] < 0) {
          throw new VdpaError(`${what}: ${key} must be an open eventfd, got ${String(q[key])}`, {
            code: ErrorCodes.INVALID_ARG,
          });
        }
      }
      const base = q.base ?? 0;
      if (!Number.isInteger(base) || base < 0 || base > (packed ? 0xffffffff : 0xffff)) {
        throw new VdpaError(
          `${what}: base ${String(base)} is not a ${packed ? '32' : '16'}-bit ring position`,
          {
            code: ErrorCodes.OUT_OF_RANGE,
          },
        );
      }
      // Sizes and alignments: virtio 1.x §2.7 (split) and §2.8 (packed).
      const parts: [string, bigint, number, number][] = packed
        ? [
            ['descriptor ring', q.descGpa, SPLIT_DESC * q.size, 16],
            ['driver event area', q.availGpa, 4, 4],
            ['device event area', q.usedGpa, 4, 4],
          ]
        : [
            ['descriptor table', q.descGpa, SPLIT_DESC * q.size, 16],
            ['avail ring', q.availGpa, 6 + 2 * q.size, 2],
            ['used ring', q.usedGpa, 6 + 8 * q.size, 4],
          ];
      for (const [name, address, length, align] of parts) {
        if (typeof address !== 'bigint' || address < 0n) {
          throw new VdpaError(`${what}: the ${name} address must be a non-negative bigint`, {
            code: ErrorCodes.INVALID_ARG,
          });
        }
        if (address % BigInt(align) !== 0n) {
          throw new VdpaError(`${what}: the ${name} at ${hex(address)} must be ${align}-byte aligned`, {
            code: ErrorCodes.MISALIGNED,
          });
        }
        try {
          memory.translate(this.#toGpa(address, length, iommu), length);
        } catch (error) {
          throw new VdpaError(
            `${what}: the ${name} [${hex(address)}, +${length}) is outside guest memory: ${(error as Error).message}`,
            { code: ErrorCodes.OUT_OF_RANGE, cause: error },
          );
        }
      }
    });
  }

  #checkFeatures(features: bigint): void {
    this.#checkOpen();
    if (typeof features !== 'bigint' || features < 0n) {
      throw new VdpaError(`${this.id}: features must be a non-negative bigint`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const missing = features & ~this.#device.getFeatures();
    if (missing !== 0n) {
      throw new VdpaError(
        `${this.id}: features ${hex(missing)} are not offered by ${this.path} (it offers ${hex(this.#device.getFeatures())})`,
        { code: ErrorCodes.UNSUPPORTED, path: this.path },
      );
    }
    if (!hasBit(features, VirtioF.VERSION_1)) {
      throw new VdpaError(
        `${this.id}: features must include VIRTIO_F_VERSION_1 (vhost-vdpa is virtio 1.x only)`,
        {
          code: ErrorCodes.INVALID_ARG,
        },
      );
    }
  }

  #queue(index: number): QueueSetup {
    const queue = this.#queues[index];
    if (!Number.isInteger(index) || queue === undefined) {
      throw new VdpaError(`${this.id}: no queue ${String(index)} (num_queues=${this.numQueues})`, {
        code: ErrorCodes.OUT_OF_RANGE,
      });
    }
    return queue;
  }

  #checkOpen(): void {
    if (this.#phase === 'closed') {
      throw new VdpaError(`${this.id}: the backend is closed`, { code: ErrorCodes.CLOSED, path: this.path });
    }
  }

  #checkPhase(operation: string, wanted: BackendPhase): void {
    this.#checkOpen();
    if (this.#phase !== wanted) {
      const hint: Record<BackendPhase, string> = {
        idle: 'activate() or restore() it first',
        active: 'pause() it first, or deactivate() it',
        paused: 'resume() it, or deactivate() it and restore the state elsewhere',
        closed: '',
      };
      throw new VdpaError(
        `${this.id}: ${operation}() needs a backend that is ${wanted}, but it is ${this.#phase}: ${hint[this.#phase]}`,
        { code: ErrorCodes.INVALID_STATE, path: this.path },
      );
    }
  }
}

/** Adds 1 to an eventfd's counter (write(2) of a little-endian u64): a kick, from any process holding it. */
export function kickEventFd(fd: number): void {
  const one = Buffer.alloc(8);
  one.writeBigUInt64LE(1n);
  writeSync(fd, one);
}
