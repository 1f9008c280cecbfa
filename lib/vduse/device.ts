/**
 * A VDUSE device: creation, the message loop (GET_VQ_STATE, SET_STATUS,
 * UPDATE_IOTLB — every request is answered), driver memory mapped from the
 * IOTLB fds, the queues started at DRIVER_OK and dropped at reset, kick
 * eventfds and interrupt injection. The device class (blk, net) is a
 * {@link VduseQueueHandler}.
 *
 * Threading: vhost-vdpa calls on this device (open, close, SET_STATUS, IOTLB
 * updates, `vdpa dev add`) block the calling thread in the kernel until this
 * loop answers. Never construct a VduseDevice on a thread that also drives the
 * device; {@link VduseBlockDevice} runs it in a Worker.
 * @module
 */
import * as path from 'node:path';

import { ErrorCodes, VdpaError } from '../errors';
import { EventFd } from '../eventfd';
import { hasBit, VirtioF } from '../features';
import { native, PAGE_SIZE, type NativeFileMapping, type NativeVduseFile } from '../native';
import { VduseControl, readMsgTimeout, type VduseCreateOptions, type VdusePaths } from './control';
import { createDeviceQueue, type DeviceQueue } from './device-queue';
import { DriverMemory } from './driver-memory';
import * as uapi from './uapi';

/** VIRTIO_CONFIG_S_DRIVER_OK */
const STATUS_DRIVER_OK = 4;

/** What a device class does with its queues. Runs on the device's thread. */
export interface VduseQueueHandler {
  /** The driver kicked `queue` (or it was just started): pop and serve its chains. */
  onKick(queue: DeviceQueue, device: VduseDevice): void;
  /** The queues are about to be dropped (reset or destroy): forget requests in flight. */
  onReset?(device: VduseDevice): void;
  /** A queue's ring is unusable (ERR_QUEUE_CORRUPT); it has been stopped. */
  onQueueError?(queue: DeviceQueue, error: unknown, device: VduseDevice): void;
}

/** Options of {@link VduseDevice.create}. */
export interface VduseDeviceOptions extends Omit<VduseCreateOptions, 'queueCount'> {
  /** One entry per virtqueue: the largest ring the driver may configure (power of two, ≤ 32768). */
  queues: { maxSize: number }[];
  paths?: VdusePaths;
  /** Called with one line per notable event (status changes, queue starts, resets). */
  log?: (line: string) => void;
  /** Called once when the kernel marks the device broken (msg_timeout expired). */
  onBroken?: (error: VdpaError) => void;
}

interface StartedQueue {
  queue: DeviceQueue;
  kick: EventFd;
}

/** A created VDUSE device served on the current thread's event loop. */
export class VduseDevice {
  /** The driver's memory, as IOTLB fds mapped on demand. */
  readonly memory = new DriverMemory();
  /** Virtio status last written by the driver. */
  status = 0;
  /** Features the driver negotiated (valid after FEATURES_OK). */
  driverFeatures = 0n;
  private readonly started: (StartedQueue | undefined)[];
  private readonly savedState: uapi.VqState[];
  private readonly mappings = new Set<NativeFileMapping>();
  private readonly message = Buffer.alloc(uapi.VDUSE_MESSAGE_SIZE);
  /** VDUSE_VQ_INJECT_IRQ arguments by queue index (see injectIrq). */
  private readonly irqArgs: Buffer[] = [];
  private destroyed = false;
  private broken = false;

  private constructor(
    /** Device name (/dev/vduse/NAME). */
    readonly name: string,
    private readonly control: VduseControl,
    private readonly file: NativeVduseFile,
    private readonly options: VduseDeviceOptions,
    private readonly handler: VduseQueueHandler,
  ) {
    this.started = options.queues.map(() => undefined);
    this.savedState = options.queues.map(() => ({ split: { availIndex: 0 } }));
    this.memory.onMiss = (iova, len) => this.mapIotlb(iova, len);
  }

  /**
   * VDUSE_CREATE_DEV, VDUSE_VQ_SETUP on every queue, then opens /dev/vduse/NAME and starts answering messages
   * (in this order: vduse.rst). The device is then ready for `vdpa dev add NAME mgmtdev vduse`.
   */
  static create(options: VduseDeviceOptions, handler: VduseQueueHandler): VduseDevice {
    for (const [i, q] of options.queues.entries()) {
      if (
        !Number.isInteger(q.maxSize) ||
        q.maxSize < 2 ||
        q.maxSize > 32768 ||
        (q.maxSize & (q.maxSize - 1)) !== 0
      )
        throw new VdpaError(`queue ${i}: maxSize ${q.maxSize} must be a power of two from 2 to 32768`, {
          code: ErrorCodes.OUT_OF_RANGE,
        });
    }
    const control = VduseControl.open(options.paths);
    let created = false;
    try {
      control.create({ ...options, queueCount: options.queues.length });
      created = true;
      const devPath = path.join(control.paths.devDir, options.name);
      const file = new native.VduseFile(devPath, true);
      try {
        for (const [i, q] of options.queues.entries())
          file.ioctl(uapi.VDUSE_VQ_SETUP, 'VDUSE_VQ_SETUP', uapi.encodeVqConfig(i, q.maxSize));
        const device = new VduseDevice(options.name, control, file, options, handler);
        file.watch((status) => device.onReadable(status));
        return device;
      } catch (error) {
        file.close();
        throw error;
      }
    } catch (error) {
      if (created) control.destroy(options.name);
      control.close();
      throw error;
    }
  }

  /** Started queues (DRIVER_OK with `ready`), by index. */
  queue(index: number): DeviceQueue | undefined {
    return this.started[index]?.queue;
  }

  /** Flushes `queue`'s used entries and injects its interrupt when the driver wants one. */
  notify(queue: DeviceQueue): void {
    if (this.started[queue.index]?.queue !== queue) return; // dropped by a reset meanwhile
    if (queue.flush()) this.injectIrq(queue.index);
  }

  /** VDUSE_VQ_INJECT_IRQ. */
  injectIrq(index: number): void {
    // One argument buffer per queue, made once: this runs for every interrupt.
    const arg = (this.irqArgs[index] ??= uapi.encodeU32(index));
    this.file.ioctl(uapi.VDUSE_VQ_INJECT_IRQ, 'VDUSE_VQ_INJECT_IRQ', arg);
  }

  /**
   * VDUSE_DEV_SET_CONFIG, then VDUSE_DEV_INJECT_CONFIG_IRQ when the driver is running.
   * @returns Whether the config interrupt was raised (false: no driver at DRIVER_OK to tell).
   */
  updateConfig(offset: number, bytes: Uint8Array): boolean {
    this.file.ioctl(uapi.VDUSE_DEV_SET_CONFIG, 'VDUSE_DEV_SET_CONFIG', uapi.encodeConfigData(offset, bytes));
    if ((this.status & STATUS_DRIVER_OK) === 0) return false;
    this.file.ioctl(uapi.VDUSE_DEV_INJECT_CONFIG_IRQ, 'VDUSE_DEV_INJECT_CONFIG_IRQ');
    return true;
  }

  /** Stops serving, closes /dev/vduse/NAME and destroys the device (EBUSY while still a vdpa device). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.stopQueues();
    this.file.close();
    try {
      this.control.destroy(this.name);
    } finally {
      this.control.close();
      this.unmapAll();
    }
  }

  private onReadable(status: number): void {
    if (status < 0) {
      this.markBroken();
      return;
    }
    for (;;) {
      let n: number;
      try {
        n = this.file.readMessage(this.message);
      } catch (error) {
        if ((error as { code?: string }).code === 'EIO') {
          this.markBroken();
          return;
        }
        throw error;
      }
      if (n === 0) return;
      this.answer(uapi.decodeRequest(this.message));
    }
  }

  private markBroken(): void {
    if (this.broken) return;
    this.broken = true;
    this.file.unwatch();
    const timeout = readMsgTimeout(this.name, this.control.paths);
    this.options.onBroken?.(
      new VdpaError(
        `VDUSE device "${this.name}" is broken: the kernel waited ${timeout === undefined ? 'msg_timeout' : `${timeout} s (msg_timeout)`} ` +
          'for an answer that did not come, and a broken device stays broken. Stop it and create it again',
        { code: ErrorCodes.DEVICE_FAILED },
      ),
    );
  }

  private answer(request: uapi.VduseRequest): void {
    let ok = true;
    let state: uapi.VqState | undefined;
    let index: number | undefined;
    try {
      if ('index' in request && request.type === uapi.VDUSE_GET_VQ_STATE) {
        index = request.index;
        state = this.started[index]?.queue.state() ?? this.savedState[index] ?? { split: { availIndex: 0 } };
      } else if ('status' in request && request.type === uapi.VDUSE_SET_STATUS) {
        this.setStatus(request.status);
      } else if ('start' in request && request.type === uapi.VDUSE_UPDATE_IOTLB) {
        this.invalidate(request.start, request.last);
      } else {
        ok = false;
        this.options.log?.(`unknown VDUSE request type ${request.type}: answered FAILED`);
      }
    } catch (error) {
      ok = false;
      this.options.log?.(`request type ${request.type} failed: ${(error as Error).message}`);
    }
    this.file.writeMessage(uapi.encodeResponse(request.requestId, ok, index, state));
    if (ok && request.type === uapi.VDUSE_SET_STATUS) {
      // Serve what the driver queued before DRIVER_OK (a kick latched earlier fires too, but do not rely on it).
      for (const started of this.started) if (started !== undefined) this.kicked(started.queue);
    }
  }

  private setStatus(status: number): void {
    const was = this.status;
    this.status = status;
    if (status === 0) {
      if (was !== 0) this.options.log?.('reset');
      this.stopQueues();
      return;
    }
    if ((status & STATUS_DRIVER_OK) !== 0 && (was & STATUS_DRIVER_OK) === 0) {
      try {
        this.startQueues();
      } catch (error) {
        // Answered FAILED: the kernel keeps the old status, and so do we (no half-started queues).
        this.stopQueues();
        this.status = was;
        throw error;
      }
    }
  }

  private startQueues(): void {
    const features = Buffer.alloc(8);
    this.file.ioctl(uapi.VDUSE_DEV_GET_FEATURES, 'VDUSE_DEV_GET_FEATURES', features);
    this.driverFeatures = features.readBigUInt64LE(0);
    const packed = hasBit(this.driverFeatures, VirtioF.RING_PACKED);
    for (let i = 0; i < this.started.length; i++) {
      const arg = uapi.vqInfoRequest(i);
      this.file.ioctl(uapi.VDUSE_VQ_GET_INFO, 'VDUSE_VQ_GET_INFO', arg);
      const info = uapi.decodeVqInfo(arg);
      if (!info.ready || info.num === 0) continue;
      const state: uapi.VqState = packed ? { packed: info.packed } : { split: info.split };
      const queue = createDeviceQueue({
        format: packed ? 'packed' : 'split',
        index: i,
        size: info.num,
        descIova: Number(info.descAddr),
        driverIova: Number(info.driverAddr),
        deviceIova: Number(info.deviceAddr),
        memory: this.memory,
        eventIdx: hasBit(this.driverFeatures, VirtioF.RING_EVENT_IDX),
        indirect: hasBit(this.driverFeatures, VirtioF.RING_INDIRECT_DESC),
        state,
      });
      const kick = new EventFd();
      kick.watch(() => this.kicked(queue));
      this.file.ioctl(uapi.VDUSE_VQ_SETUP_KICKFD, 'VDUSE_VQ_SETUP_KICKFD', uapi.encodeVqEventfd(i, kick.fd));
      this.started[i] = { queue, kick };
    }
    const running = this.started.filter((s) => s !== undefined).length;
    this.options.log?.(
      `DRIVER_OK: features 0x${this.driverFeatures.toString(16)}, ${packed ? 'packed' : 'split'} rings, ` +
        `${running}/${this.started.length} queues ready`,
    );
  }

  private kicked(queue: DeviceQueue): void {
    if (this.started[queue.index]?.queue !== queue) return;
    try {
      this.handler.onKick(queue, this);
    } catch (error) {
      this.stopQueue(queue.index);
      this.options.log?.(`queue ${queue.index} stopped: ${(error as Error).message}`);
      this.handler.onQueueError?.(queue, error, this);
    }
  }

  private stopQueue(index: number): void {
    const started = this.started[index];
    if (started === undefined) return;
    this.started[index] = undefined;
    this.savedState[index] = started.queue.state();
    started.kick.close();
    if (!this.destroyed) {
      try {
        this.file.ioctl(uapi.VDUSE_VQ_SETUP_KICKFD, 'VDUSE_VQ_SETUP_KICKFD', uapi.encodeVqEventfd(index, -1));
      } catch {
        // A broken device refuses every ioctl (EPERM); the queue is dropped all the same.
      }
    }
  }

  private stopQueues(): void {
    if (this.started.some((s) => s !== undefined)) this.handler.onReset?.(this);
    for (let i = 0; i < this.started.length; i++) this.stopQueue(i);
    // The kernel resets its vq state and the IOTLB with the device; both are fetched again after DRIVER_OK.
    this.invalidate(0n, 0xffffffffffffffffn);
  }

  /**
   * UPDATE_IOTLB: forget the mappings of [start, last]; the next access maps them again (VDUSE_IOTLB_GET_FD).
   * The old mappings are not unmapped here: a request still in flight may hold views into them (a file read
   * into guest memory on the thread pool); they are unmapped when the last view is collected.
   */
  private invalidate(start: bigint, last: bigint): void {
    const limit = BigInt(Number.MAX_SAFE_INTEGER);
    this.memory.remove(Number(start > limit ? limit : start), Number(last > limit ? limit : last));
    this.mappings.clear();
  }

  private unmapAll(): void {
    this.memory.clear();
    for (const mapping of this.mappings) mapping.unmap();
    this.mappings.clear();
  }

  /** DriverMemory's miss handler: VDUSE_IOTLB_GET_FD for the range holding `iova`, mmap it, add it. */
  private mapIotlb(iova: number, len: number): boolean {
    const arg = uapi.encodeIotlbEntry(BigInt(iova), BigInt(iova) + BigInt(Math.max(len, 1)) - 1n);
    let fd: number;
    try {
      fd = this.file.ioctl(uapi.VDUSE_IOTLB_GET_FD, 'VDUSE_IOTLB_GET_FD', arg);
    } catch {
      return false; // EINVAL: no mapping covers iova — the chain is malformed, not the device
    }
    try {
      const entry = uapi.decodeIotlbEntry(arg);
      const access = entry.perm & uapi.VDUSE_ACCESS_RW;
      if (access === 0) return false;
      const length = Number(entry.last - entry.start + 1n);
      const delta = Number(entry.offset % BigInt(PAGE_SIZE));
      const mapping = new native.FileMapping(fd, Number(entry.offset) - delta, length + delta, access);
      this.mappings.add(mapping);
      if (entry.last > BigInt(Number.MAX_SAFE_INTEGER)) return false;
      this.memory.add({
        start: Number(entry.start),
        last: Number(entry.last),
        readable: (access & uapi.VDUSE_ACCESS_RO) !== 0,
        writable: (access & uapi.VDUSE_ACCESS_WO) !== 0,
        buffer: Buffer.from(mapping.buffer, delta, length),
      });
      return true;
    } finally {
      native.closeFd(fd);
    }
  }
}
