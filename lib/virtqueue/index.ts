/**
 * Virtqueues: the split ring (driver side), its connection to a vhost-vdpa
 * device, and completion delivery. See docs/virtqueue.md.
 */
export {
  ERR_QUEUE_CORRUPT,
  SplitRingLayout,
  SplitVirtqueue,
  SplitVirtqueueOptions,
  splitRingLayout,
  VIRTQUEUE_MAX_SIZE,
  VirtqueueStats,
  VRING_DESC_SIZE,
} from './split';
export { attachVirtqueue, NotificationPath, QueueNotifier, VirtqueueTransport } from './attach';
export { CompletionDriver, CompletionDriverOptions, CompletionMode } from './completions';
