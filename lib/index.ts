/**
 * vhost-vdpa: drive Linux vDPA devices (/dev/vhost-vdpa-N) from Node.js.
 * @packageDocumentation
 */
export { VdpaError, ErrorCodes, hasCode, abortError } from './errors';
export {
  classifyErrorCode,
  errorCategoryOf,
  ERROR_CATEGORIES,
  ERROR_CODE_CATEGORIES,
  type ErrorCategory,
  type ErrorCategoryInfo,
} from './error-categories';
export * from './uapi';
export * from './features';
export { DmaRegion, DmaRegionOptions, IovaAllocator, IovaRange, HUGE_PAGE_SIZE } from './memory';
export { EventFd, EventFdListener } from './eventfd';
export {
  VhostVdpaDevice,
  Doorbell,
  DeviceCapabilities,
  DmaAccess,
  IotlbMapping,
  MapOptions,
  MapRequest,
  MemlockPolicy,
  Negotiation,
  OpenOptions,
  RawMemory,
  UNSUPPORTED_ERRNO_CODES,
} from './device';
export { PAGE_SIZE } from './native';
export * from './virtio-config';
export * from './virtqueue';
export * from './virtio';
export * from './blk';
export * from './net';
export { BouncePool } from './bounce';
export * from './mgmt';
export {
  ManagementService,
  KernelBackend,
  type ServiceOptions,
  type ServiceBackend,
  type KernelBackendOptions,
  type CreateInterfaceParams,
  type InterfaceInfo,
} from './service';
export type { NetlinkErrorPayload } from './mgmt/netlink';
export * from './check';
export { VduseBlockDevice, type VduseBlockOptions } from './vduse/blk-device';
export { VduseDevice, type VduseDeviceOptions, type VduseQueueHandler } from './vduse/device';
export {
  VduseControl,
  validateCreateOptions,
  type VduseCreateOptions,
  type VdusePaths,
} from './vduse/control';
export {
  createDeviceQueue,
  DEFAULT_MAX_SEGMENTS,
  type DeviceChain,
  type DeviceQueue,
  type DeviceQueueOptions,
  type DeviceQueueState,
} from './vduse/device-queue';
export { DriverMemory, type DriverMemoryRegion } from './vduse/driver-memory';
export { FaultPlan, parseFaults, type FaultAction, type FaultSpec } from './vduse/faults';
export * from './vmm';
