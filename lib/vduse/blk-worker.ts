/**
 * The Worker that serves a VDUSE block device (started by
 * {@link VduseBlockDevice.start}): creates it, answers VDUSE messages and
 * serves the queues on this thread's event loop, so the caller's thread may
 * block in vhost-vdpa calls on the same device.
 * @module
 * @internal
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';

import { deviceExists } from '../mgmt/sysfs';
import { VdpaManager } from '../mgmt/vdpa';
import { native } from '../native';
import { blkFeatures, encodeBlkConfig } from './blk-config';
import { BlkRequestHandler } from './blk-handler';
import { FileStore, RamStore, type BlockStore } from './blk-store';
import { VduseControl } from './control';
import { VduseDevice } from './device';
import { FaultPlan } from './faults';
import * as uapi from './uapi';
import { errorData, type BlkWorkerConfig, type FromWorker, type ToWorker } from './worker-messages';

function workerPort(): MessagePort {
  if (parentPort === null) throw new Error('blk-worker.js runs in a Worker (VduseBlockDevice.start)');
  return parentPort;
}
const port = workerPort();
const config = workerData as BlkWorkerConfig;
const post = (message: FromWorker): void => port.postMessage(message);
const log = (line: string): void => post({ type: 'log', line });

/**
 * Removes a device of this name left by a daemon that died: answers its queued and new messages (a reset on
 * vdpa removal) while its vdpa device is deleted (DEV_DEL runs on the thread pool), then destroys it.
 */
async function recoverStale(control: VduseControl, name: string): Promise<string> {
  let file;
  try {
    file = new native.VduseFile(`${control.paths.devDir}/${name}`, true);
  } catch (error) {
    if ((error as { code?: string }).code === 'EBUSY') {
      throw Object.assign(error as Error, {
        message:
          `VDUSE device "${name}" exists and another process serves it (/dev/vduse/${name} is open): ` +
          'stop that daemon first, or choose another name',
      });
    }
    throw error;
  }
  const message = Buffer.alloc(uapi.VDUSE_MESSAGE_SIZE);
  // A broken device (its msg_timeout expired) fails reads with EIO: nothing to answer then.
  let answering = true;
  const answerAll = (): void => {
    try {
      while (answering && file.readMessage(message) > 0) {
        const request = uapi.decodeRequest(message);
        const state = request.type === uapi.VDUSE_GET_VQ_STATE ? { split: { availIndex: 0 } } : undefined;
        file.writeMessage(
          uapi.encodeResponse(request.requestId, true, 'index' in request ? request.index : 0, state),
        );
      }
    } catch {
      answering = false;
    }
  };
  let onBus = false;
  try {
    file.watch((status) => {
      if (status >= 0) answerAll();
    });
    answerAll();
    onBus = deviceExists(name);
    if (onBus) {
      const manager = await VdpaManager.open();
      try {
        await manager.deleteDevice(name);
      } finally {
        manager.close();
      }
    }
  } finally {
    file.close();
  }
  control.destroy(name);
  return `destroyed a stale VDUSE device "${name}"${onBus ? ' (and its vdpa device)' : ''} left by a daemon that exited`;
}

async function main(): Promise<void> {
  let staleRecovered: string | undefined;
  if (config.replaceStale) {
    const control = VduseControl.open();
    try {
      if (control.exists(config.name)) staleRecovered = await recoverStale(control, config.name);
    } finally {
      control.close();
    }
  }
  const store: BlockStore =
    config.ramBytes !== undefined
      ? new RamStore(config.ramBytes, config.fill)
      : FileStore.open(config.file as string, config.readOnly, config.fileSize);
  const handler = new BlkRequestHandler({
    store,
    readOnly: config.readOnly,
    serial: config.serial,
    ...(config.faults.length > 0 ? { faults: new FaultPlan(config.faults) } : {}),
    log,
  });
  const features = blkFeatures({ readOnly: config.readOnly, packed: config.packed });
  let device: VduseDevice;
  try {
    device = VduseDevice.create(
      {
        name: config.name,
        deviceType: 'block',
        features,
        vendorId: config.vendorId,
        config: encodeBlkConfig({
          capacity: store.size,
          segMax: Math.min(config.queueSize - 2, 254),
          blkSize: config.blkSize,
          numQueues: config.queues,
        }),
        queues: Array.from({ length: config.queues }, () => ({ maxSize: config.queueSize })),
        log,
        onBroken: (error) => post({ type: 'broken', error: errorData(error) }),
      },
      handler,
    );
  } catch (error) {
    store.close();
    throw error;
  }
  port.on('message', (message: ToWorker) => {
    switch (message.type) {
      case 'stop': {
        let error;
        try {
          device.destroy();
        } catch (e) {
          error = errorData(e);
        }
        store.close();
        post(error === undefined ? { type: 'stopped' } : { type: 'stopped', error });
        port.close();
        break;
      }
      case 'resize':
        handler.resize(message.bytes);
        post({ type: 'resized', capacity: handler.capacity });
        break;
      case 'stats':
        post({ type: 'stats', id: message.id, stats: { ...handler.stats } });
        break;
    }
  });
  post({
    type: 'ready',
    features: `0x${features.toString(16)}`,
    capacity: store.size,
    store: store.description,
    ...(staleRecovered === undefined ? {} : { staleRecovered }),
  });
}

main().catch((error: unknown) => {
  post({ type: 'failed', error: errorData(error) });
  port.close();
});
