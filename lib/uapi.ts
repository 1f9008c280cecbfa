/**
 * The vhost / vhost-vdpa / virtio uAPI: ioctl request numbers, constants and
 * struct layouts, named as in the kernel headers (include/uapi/linux/vhost.h,
 * vhost_types.h, virtio_config.h) so they can be grepped against them. Numbers
 * newer than the host's installed headers (RESUME, GET_VRING_DESC_GROUP,
 * GET_VRING_SIZE, backend bits 5–8) are defined here from the kernel source.
 */

const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;

/** asm-generic `_IOC(dir, type, nr, size)` as an unsigned 32-bit number. */
function ioc(dir: number, type: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
const io = (nr: number): number => ioc(IOC_NONE, VHOST_VIRTIO, nr, 0);
const ior = (nr: number, size: number): number => ioc(IOC_READ, VHOST_VIRTIO, nr, size);
const iow = (nr: number, size: number): number => ioc(IOC_WRITE, VHOST_VIRTIO, nr, size);
const iowr = (nr: number, size: number): number => ioc(IOC_READ | IOC_WRITE, VHOST_VIRTIO, nr, size);

/** The vhost ioctl type byte. */
export const VHOST_VIRTIO = 0xaf;

/** sizeof(struct vhost_vring_state) — `{ __u32 index; __u32 num; }`. */
export const VRING_STATE_SIZE = 8;
/** sizeof(struct vhost_vring_file) — `{ __u32 index; __s32 fd; }`. */
export const VRING_FILE_SIZE = 8;
/** sizeof(struct vhost_vring_addr). */
export const VRING_ADDR_SIZE = 40;
/** sizeof(struct vhost_vdpa_config) without its flexible buffer — `{ __u32 off; __u32 len; }`. */
export const VDPA_CONFIG_HEADER_SIZE = 8;
/** sizeof(struct vhost_vdpa_iova_range) — `{ __u64 first; __u64 last; }`. */
export const VDPA_IOVA_RANGE_SIZE = 16;
/** sizeof(struct vhost_msg_v2). */
export const VHOST_MSG_V2_SIZE = 72;

/** Every ioctl vhost-vdpa handles, by kernel name. */
export const ioctls = {
  VHOST_GET_FEATURES: ior(0x00, 8),
  VHOST_SET_FEATURES: iow(0x00, 8),
  VHOST_SET_OWNER: io(0x01),
  VHOST_RESET_OWNER: io(0x02),
  VHOST_SET_LOG_BASE: iow(0x04, 8),
  VHOST_SET_VRING_NUM: iow(0x10, VRING_STATE_SIZE),
  VHOST_SET_VRING_ADDR: iow(0x11, VRING_ADDR_SIZE),
  VHOST_SET_VRING_BASE: iow(0x12, VRING_STATE_SIZE),
  VHOST_GET_VRING_BASE: iowr(0x12, VRING_STATE_SIZE),
  VHOST_SET_VRING_KICK: iow(0x20, VRING_FILE_SIZE),
  VHOST_SET_VRING_CALL: iow(0x21, VRING_FILE_SIZE),
  VHOST_SET_VRING_ERR: iow(0x22, VRING_FILE_SIZE),
  VHOST_SET_BACKEND_FEATURES: iow(0x25, 8),
  VHOST_GET_BACKEND_FEATURES: ior(0x26, 8),
  VHOST_VDPA_GET_DEVICE_ID: ior(0x70, 4),
  VHOST_VDPA_GET_STATUS: ior(0x71, 1),
  VHOST_VDPA_SET_STATUS: iow(0x72, 1),
  VHOST_VDPA_GET_CONFIG: ior(0x73, VDPA_CONFIG_HEADER_SIZE),
  VHOST_VDPA_SET_CONFIG: iow(0x74, VDPA_CONFIG_HEADER_SIZE),
  VHOST_VDPA_SET_VRING_ENABLE: iow(0x75, VRING_STATE_SIZE),
  VHOST_VDPA_GET_VRING_NUM: ior(0x76, 2),
  VHOST_VDPA_SET_CONFIG_CALL: iow(0x77, 4),
  VHOST_VDPA_GET_IOVA_RANGE: ior(0x78, VDPA_IOVA_RANGE_SIZE),
  VHOST_VDPA_GET_CONFIG_SIZE: ior(0x79, 4),
  VHOST_VDPA_GET_AS_NUM: ior(0x7a, 4),
  VHOST_VDPA_GET_VRING_GROUP: iowr(0x7b, VRING_STATE_SIZE),
  VHOST_VDPA_SET_GROUP_ASID: iow(0x7c, VRING_STATE_SIZE),
  VHOST_VDPA_SUSPEND: io(0x7d),
  VHOST_VDPA_RESUME: io(0x7e),
  VHOST_VDPA_GET_VRING_DESC_GROUP: iowr(0x7f, VRING_STATE_SIZE),
  VHOST_VDPA_GET_VQS_COUNT: ior(0x80, 4),
  VHOST_VDPA_GET_GROUP_NUM: ior(0x81, 4),
  VHOST_VDPA_GET_VRING_SIZE: iowr(0x82, VRING_STATE_SIZE),
} as const;

/** Name of a vhost-vdpa ioctl. */
export type IoctlName = keyof typeof ioctls;

/** Backend feature bits (VHOST_BACKEND_F_*), as bit numbers. */
export const VHOST_BACKEND_F_IOTLB_MSG_V2 = 1;
export const VHOST_BACKEND_F_IOTLB_BATCH = 2;
export const VHOST_BACKEND_F_IOTLB_ASID = 3;
export const VHOST_BACKEND_F_SUSPEND = 4;
export const VHOST_BACKEND_F_RESUME = 5;
export const VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK = 6;
export const VHOST_BACKEND_F_DESC_ASID = 7;
export const VHOST_BACKEND_F_IOTLB_PERSIST = 8;

/** IOTLB message kinds (`struct vhost_msg_v2.type`). */
export const VHOST_IOTLB_MSG = 0x1;
export const VHOST_IOTLB_MSG_V2 = 0x2;

/** IOTLB operations (`struct vhost_iotlb_msg.type`). */
export const VHOST_IOTLB_MISS = 1;
export const VHOST_IOTLB_UPDATE = 2;
export const VHOST_IOTLB_INVALIDATE = 3;
export const VHOST_IOTLB_ACCESS_FAIL = 4;
export const VHOST_IOTLB_BATCH_BEGIN = 5;
export const VHOST_IOTLB_BATCH_END = 6;

/** IOTLB access permissions (`struct vhost_iotlb_msg.perm`). */
export const VHOST_ACCESS_RO = 0x1;
export const VHOST_ACCESS_WO = 0x2;
export const VHOST_ACCESS_RW = 0x3;

/** Device status bits (include/uapi/linux/virtio_config.h). */
export const VIRTIO_CONFIG_S_ACKNOWLEDGE = 1;
export const VIRTIO_CONFIG_S_DRIVER = 2;
export const VIRTIO_CONFIG_S_DRIVER_OK = 4;
export const VIRTIO_CONFIG_S_FEATURES_OK = 8;
export const VIRTIO_CONFIG_S_NEEDS_RESET = 0x40;
export const VIRTIO_CONFIG_S_FAILED = 0x80;

/** Virtio device ids (include/uapi/linux/virtio_ids.h) the library knows by name. */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;

/** Split-ring flags (include/uapi/linux/virtio_ring.h). */
export const VRING_DESC_F_NEXT = 1;
export const VRING_DESC_F_WRITE = 2;
export const VRING_DESC_F_INDIRECT = 4;
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_F_NO_NOTIFY = 1;

/** The kernel's ENOTSUPP: not in libc, but vhost-vdpa returns it (doorbell mmap on parents without one). */
export const ENOTSUPP = 524;

/** Encodes a `struct vhost_vring_state`. */
export function encodeVringState(index: number, num: number): Uint8Array {
  const bytes = new Uint8Array(VRING_STATE_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, index, true);
  view.setUint32(4, num, true);
  return bytes;
}

/** Encodes a `struct vhost_vring_file`; fd -1 unbinds. */
export function encodeVringFile(index: number, fd: number): Uint8Array {
  const bytes = new Uint8Array(VRING_FILE_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, index, true);
  view.setInt32(4, fd, true);
  return bytes;
}

/** The addresses (IOVAs) of a split virtqueue's three parts. */
export interface VringAddresses {
  /** IOVA of the descriptor table. */
  desc: bigint;
  /** IOVA of the available (driver) ring. */
  avail: bigint;
  /** IOVA of the used (device) ring. */
  used: bigint;
  /** VHOST_VRING_F_LOG (bit 0) — vhost-vdpa has no dirty logging; keep 0. */
  flags?: number;
  /** Log address; unused by vhost-vdpa. */
  log?: bigint;
}

/** Encodes a `struct vhost_vring_addr`. */
export function encodeVringAddr(index: number, addr: VringAddresses): Uint8Array {
  const bytes = new Uint8Array(VRING_ADDR_SIZE);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, index, true);
  view.setUint32(4, addr.flags ?? 0, true);
  view.setBigUint64(8, addr.desc, true);
  view.setBigUint64(16, addr.used, true);
  view.setBigUint64(24, addr.avail, true);
  view.setBigUint64(32, addr.log ?? 0n, true);
  return bytes;
}

/** One `struct vhost_msg_v2` carrying an IOTLB message. */
export interface IotlbMessage {
  /** VHOST_IOTLB_UPDATE, _INVALIDATE, _BATCH_BEGIN or _BATCH_END. */
  type: number;
  asid: number;
  iova: bigint;
  size: bigint;
  uaddr: bigint;
  perm: number;
}

/** Encodes IOTLB messages back to back as `struct vhost_msg_v2` (72 bytes each). */
export function encodeIotlbMessages(messages: readonly IotlbMessage[]): Uint8Array {
  const bytes = new Uint8Array(VHOST_MSG_V2_SIZE * messages.length);
  const view = new DataView(bytes.buffer);
  messages.forEach((m, i) => {
    const at = i * VHOST_MSG_V2_SIZE;
    view.setUint32(at, VHOST_IOTLB_MSG_V2, true);
    view.setUint32(at + 4, m.asid, true);
    view.setBigUint64(at + 8, m.iova, true);
    view.setBigUint64(at + 16, m.size, true);
    view.setBigUint64(at + 24, m.uaddr, true);
    view.setUint8(at + 32, m.perm);
    view.setUint8(at + 33, m.type);
  });
  return bytes;
}
