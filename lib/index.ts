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
export * from './vmm';
