/**
 * The virtio driver core shared by the protocol drivers (lib/blk, lib/net):
 * see lib/virtio/driver.ts and docs/driver-core.md.
 */
export { VirtioDriver } from './driver';
export {
  DriverProtocol,
  DriverCoreOptions,
  DriverCoreStats,
  DriverTransport,
  CloseOptions,
  ResetEvent,
  type DriverState,
} from './types';
export {
  DeviceOp,
  DriverRequest,
  CallbackQueue,
  type RequestCallback,
  BOUNCE_NONE,
  BOUNCE_TO_DEVICE,
  BOUNCE_FROM_DEVICE,
  type BounceDirection,
} from './request';
export { DriverQueue, QueueLayout } from './queues';
export { DmaSpace, DmaBufferEntry, type DmaTransport } from './dma-space';
export { negotiateDevice, readConfigStable, RingChoice, BringUp, type BringUpTransport } from './config';
