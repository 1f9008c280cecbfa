/**
 * virtio-blk over vhost-vdpa: {@link BlockDevice}. See docs/blk.md.
 */
export {
  BlockCallback,
  BlockDevice,
  BlockDeviceOptions,
  BlockDeviceStats,
  BlockLimits,
  BlockOperation,
  BlockTransport,
  CloseOptions,
  RequestOptions,
  ResetEvent,
} from './block-device';
export * from './protocol';
