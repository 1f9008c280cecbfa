/**
 * Virtqueues: the split and packed rings (driver side), its connection to a vhost-vdpa
 * device, and completion delivery. See docs/virtqueue.md.
 */
export {
  ERR_QUEUE_CORRUPT,
  SplitRingLayout,
  SplitVirtqueue,
  SplitVirtqueueOptions,
  splitRingLayout,
  VIRTQUEUE_MAX_SIZE,
  VRING_DESC_SIZE,
} from './split';
export {
  PackedRingLayout,
  PackedVirtqueue,
  PackedVirtqueueOptions,
  packedRingLayout,
  VRING_PACKED_DESC_F_AVAIL,
  VRING_PACKED_DESC_F_USED,
  VRING_PACKED_EVENT_F_WRAP_CTR,
  VRING_PACKED_EVENT_FLAG_DESC,
  VRING_PACKED_EVENT_FLAG_DISABLE,
  VRING_PACKED_EVENT_FLAG_ENABLE,
  VRING_PACKED_EVENT_SIZE,
} from './packed';
export { Virtqueue, VirtqueueFormat, VirtqueueStats } from './types';
export { attachVirtqueue, NotificationPath, QueueNotifier, VirtqueueTransport } from './attach';
export { CompletionDriver, CompletionDriverOptions, CompletionMode } from './completions';
