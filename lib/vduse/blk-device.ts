/**
 * A virtio-blk device implemented in Node over VDUSE, served by a Worker.
 *
 * Why a Worker: every vhost-vdpa call on a VDUSE device (open, close, status
 * writes, IOTLB updates, `vdpa dev add`) sleeps in the kernel until the device
 * answers a message, for up to msg_timeout (30 s), after which the kernel marks
 * the device broken for good. With the device served on another thread, this
 * thread may attach it, open it with {@link BlockDevice} and do I/O.
 * @module
 */
import { EventEmitter } from 'node:events';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { ErrorCodes, VdpaError } from '../errors';
import { resolveCharDev } from '../mgmt/sysfs';
import { VdpaManager } from '../mgmt/vdpa';
import { validateVduseName } from './control';
import { parseFaults } from './faults';
import { toError, type BlkWorkerConfig, type FromWorker, type ToWorker } from './worker-messages';

/** Options of {@link VduseBlockDevice.start}. Exactly one of `ramBytes` and `file`. */
export interface VduseBlockOptions {
  /** Device name: /dev/vduse/NAME and the vdpa device name. */
  name: string;
  /** A RAM disk of this many bytes (a multiple of 512). */
  ramBytes?: number;
  /**
   * Initial content of a RAM disk (and of the space a resize adds): `'zero'` (default) or `'sectors'` — every 8
   * bytes of sector S hold S, little-endian, so data returned for the wrong request is recognised. RAM disks only.
   */
  fill?: 'zero' | 'sectors';
  /** A file (or block device) to serve. */
  file?: string;
  /** With `file`: create it with this size, or grow it to this size. */
  fileSize?: number;
  /** Request queues (default 1). */
  queues?: number;
  /** Largest ring per queue, a power of two (default 256). */
  queueSize?: number;
  /** Offer VIRTIO_BLK_F_RO; writes fail with VIRTIO_BLK_S_IOERR. */
  readOnly?: boolean;
  /** Offer VIRTIO_F_RING_PACKED. */
  packed?: boolean;
  /** GET_ID answer, up to 20 bytes (default: the name). */
  serial?: string;
  /** Logical block size (default 512). */
  blkSize?: number;
  /**
   * Fault specs, as `--fault` takes them: `bad-id@N`, `not-head@N`, `dup@N`, `bad-len@N`, `ioerr-every:N`, `stall@N`, `slow:MS`,
   * `resize@N:BYTES` (N counts requests from 1; see docs/vduse.md).
   */
  faults?: string[];
  /** Vendor id reported to the driver (default 0). */
  vendorId?: number;
  /** Destroy a device of this name left by a daemon that died, instead of failing with EEXIST. */
  replaceStale?: boolean;
  /** Also add the vdpa device (`vdpa dev add name NAME mgmtdev vduse`); {@link VduseBlockDevice.stop} deletes it. */
  attach?: boolean;
}

function positiveInteger(value: number | undefined, what: string, fallback: number, max: number): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new VdpaError(`${what} must be an integer from 1 to ${max}, not ${String(value)}`, {
      code: ErrorCodes.OUT_OF_RANGE,
    });
  }
  return v;
}

function workerConfig(options: VduseBlockOptions): BlkWorkerConfig {
  const name = validateVduseName(options.name);
  if ((options.ramBytes === undefined) === (options.file === undefined)) {
    throw new VdpaError('give exactly one of ramBytes (a RAM disk) and file (a disk image)', {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  if (options.fill !== undefined && options.fill !== 'zero' && options.fill !== 'sectors')
    throw new VdpaError(`fill must be 'zero' or 'sectors', not ${String(options.fill)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  if (options.fill !== undefined && options.file !== undefined)
    throw new VdpaError('fill is for RAM disks (ramBytes): a file keeps its own content', {
      code: ErrorCodes.INVALID_ARG,
    });
  const blkSize = options.blkSize ?? 512;
  if (![512, 1024, 2048, 4096].includes(blkSize))
    throw new VdpaError(`blkSize must be 512, 1024, 2048 or 4096, not ${blkSize}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  for (const [value, what] of [
    [options.ramBytes, 'ramBytes'],
    [options.fileSize, 'fileSize'],
  ] as const) {
    if (value !== undefined && (!Number.isSafeInteger(value) || value < blkSize || value % blkSize !== 0))
      throw new VdpaError(
        `${what} must be a positive multiple of the block size (${blkSize}), not ${value}`,
        {
          code: ErrorCodes.INVALID_ARG,
        },
      );
  }
  const queueSize = positiveInteger(options.queueSize, 'queueSize', 256, 32768);
  if ((queueSize & (queueSize - 1)) !== 0 || queueSize < 4)
    throw new VdpaError(`queueSize must be a power of two from 4 to 32768, not ${queueSize}`, {
      code: ErrorCodes.OUT_OF_RANGE,
    });
  const faults = options.faults ?? [];
  parseFaults(faults); // a bad spec fails here, in the caller's thread
  const config: BlkWorkerConfig = {
    name,
    queues: positiveInteger(options.queues, 'queues', 1, 64),
    queueSize,
    readOnly: options.readOnly ?? false,
    packed: options.packed ?? false,
    serial: options.serial ?? name,
    blkSize,
    faults,
    vendorId: options.vendorId ?? 0,
    replaceStale: options.replaceStale ?? false,
  };
  if (options.ramBytes !== undefined) config.ramBytes = options.ramBytes;
  if (options.fill !== undefined) config.fill = options.fill;
  if (options.file !== undefined) config.file = path.resolve(options.file);
  if (options.fileSize !== undefined) config.fileSize = options.fileSize;
  return config;
}

/**
 * A running VDUSE block device.
 *
 * Events: `'log'` (line: string) for status changes, queue starts, resets and faults; `'error'` (VdpaError)
 * when the kernel marked the device broken (msg_timeout) or the worker died.
 * @example
 * const disk = await VduseBlockDevice.start({ name: 'ram0', ramBytes: 64 << 20, attach: true });
 * const blk = BlockDevice.open(disk.chardev!);   // same process: the device runs in a Worker
 * await blk.write(0, Buffer.alloc(4096, 1));
 * blk.close();
 * await disk.stop();
 */
export class VduseBlockDevice extends EventEmitter {
  /** Feature bits offered, as 0x… */
  readonly features: string;
  /** Capacity in bytes. */
  capacity: number;
  /** What backs the disk. */
  readonly store: string;
  /** Set when start-up found and destroyed a stale device of this name. */
  readonly staleRecovered: string | undefined;
  /** /dev/vhost-vdpa-N after {@link attach} (when vhost_vdpa is the bound driver). */
  chardev: string | undefined;
  private attached = false;
  private stopping: Promise<void> | undefined;
  private nextStatsId = 1;

  private constructor(
    /** Device name. */
    readonly name: string,
    private readonly worker: Worker,
    ready: Extract<FromWorker, { type: 'ready' }>,
  ) {
    super();
    this.features = ready.features;
    this.capacity = ready.capacity;
    this.store = ready.store;
    this.staleRecovered = ready.staleRecovered;
    worker.on('message', (message: FromWorker) => {
      if (message.type === 'log') this.emit('log', message.line);
      else if (message.type === 'broken') this.emit('error', toError(message.error));
      else if (message.type === 'resized') this.capacity = message.capacity;
    });
  }

  /** Starts the worker, creates the VDUSE device and (with `attach`) adds the vdpa device. */
  static async start(options: VduseBlockOptions): Promise<VduseBlockDevice> {
    const config = workerConfig(options);
    const worker = new Worker(path.join(__dirname, 'blk-worker.js'), { workerData: config });
    const ready = await new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
      const onMessage = (message: FromWorker): void => {
        if (message.type === 'ready') {
          cleanup();
          resolve(message);
        } else if (message.type === 'failed') {
          cleanup();
          reject(toError(message.error));
        }
      };
      const onError = (error: Error): void => {
        cleanup();
        reject(error);
      };
      const onExit = (code: number): void => {
        cleanup();
        reject(
          new VdpaError(`the VDUSE worker exited (code ${code}) before the device was ready`, {
            code: ErrorCodes.DEVICE_FAILED,
          }),
        );
      };
      const cleanup = (): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).catch(async (error: unknown) => {
      await worker.terminate();
      throw error;
    });
    const device = new VduseBlockDevice(config.name, worker, ready);
    worker.on('error', (error) => device.emit('error', error));
    if (options.attach === true) {
      try {
        await device.attach();
      } catch (error) {
        await device.stop();
        throw error;
      }
    }
    return device;
  }

  /**
   * Adds the vdpa device (`vdpa dev add name NAME mgmtdev vduse`); it binds to whichever vdpa bus driver is
   * loaded. Resolves with /dev/vhost-vdpa-N when that is vhost_vdpa, else undefined.
   */
  async attach(): Promise<string | undefined> {
    const manager = await VdpaManager.open();
    try {
      await manager.addDevice({ name: this.name, mgmtdev: 'vduse' });
      this.attached = true;
    } finally {
      manager.close();
    }
    try {
      this.chardev = await resolveCharDev(this.name);
    } catch (error) {
      if ((error as { code?: string }).code !== ErrorCodes.WRONG_DRIVER) throw error;
    }
    return this.chardev;
  }

  /** Deletes the vdpa device {@link attach} added (EBUSY, naming the processes, while /dev/vhost-vdpa-N is open). */
  async detach(): Promise<void> {
    if (!this.attached) return;
    const manager = await VdpaManager.open();
    try {
      await manager.deleteDevice(this.name);
      this.attached = false;
      this.chardev = undefined;
    } finally {
      manager.close();
    }
  }

  /** Sets the capacity (config space) and raises a config interrupt, as the `resize@N` fault does. */
  resize(bytes: number): Promise<number> {
    return this.request({ type: 'resize', bytes }, 'resized').then((m) => m.capacity);
  }

  /** Request counters: requests, reads, writes, errors, faults. */
  stats(): Promise<Record<string, number>> {
    const id = this.nextStatsId++;
    return this.request({ type: 'stats', id }, 'stats', (m) => m.id === id).then((m) => m.stats);
  }

  /** Detaches (if {@link attach} added the vdpa device), destroys the VDUSE device and ends the worker. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.detach();
      const stopped = await this.request({ type: 'stop' }, 'stopped');
      await new Promise<void>((resolve) => {
        this.worker.once('exit', () => resolve());
        setTimeout(() => void this.worker.terminate(), 1000).unref();
      });
      if (stopped.error !== undefined) throw toError(stopped.error);
    })();
    return this.stopping;
  }

  private request<T extends FromWorker['type']>(
    message: ToWorker,
    reply: T,
    match: (m: Extract<FromWorker, { type: T }>) => boolean = () => true,
  ): Promise<Extract<FromWorker, { type: T }>> {
    return new Promise((resolve, reject) => {
      const onMessage = (m: FromWorker): void => {
        if (m.type !== reply || !match(m as Extract<FromWorker, { type: T }>)) return;
        this.worker.off('message', onMessage);
        this.worker.off('exit', onExit);
        resolve(m as Extract<FromWorker, { type: T }>);
      };
      const onExit = (): void => {
        this.worker.off('message', onMessage);
        reject(new VdpaError(`the VDUSE worker of "${this.name}" has exited`, { code: ErrorCodes.CLOSED }));
      };
      this.worker.on('message', onMessage);
      this.worker.once('exit', onExit);
      this.worker.postMessage(message);
    });
  }
}
