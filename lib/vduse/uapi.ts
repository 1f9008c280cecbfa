/**
 * The VDUSE uAPI (include/uapi/linux/vduse.h, API version 0 as in Linux 6.12):
 * ioctl numbers, struct layouts and message codecs. Values and offsets were
 * compiled on x86_64 (shared/docs/vdpa-facts-next.md, C.1/C.2).
 * @module
 * @internal
 */

/** The control device every VDUSE device is created through. */
export const VDUSE_CONTROL_PATH = '/dev/vduse/control';
/** Where the device file of a created device appears. */
export const VDUSE_DEV_DIR = '/dev/vduse';
/** sysfs attributes of a VDUSE device (msg_timeout, bounce_size). */
export const VDUSE_SYSFS_DIR = '/sys/class/vduse';

/** The only API version Linux 6.12 knows. */
export const VDUSE_API_VERSION = 0n;

export const VDUSE_GET_API_VERSION = 0x80088100;
export const VDUSE_SET_API_VERSION = 0x40088101;
export const VDUSE_CREATE_DEV = 0x41508102;
export const VDUSE_DESTROY_DEV = 0x41008103;
export const VDUSE_IOTLB_GET_FD = 0xc0208110;
export const VDUSE_DEV_GET_FEATURES = 0x80088111;
export const VDUSE_DEV_SET_CONFIG = 0x40088112;
export const VDUSE_DEV_INJECT_CONFIG_IRQ = 0x00008113;
export const VDUSE_VQ_SETUP = 0x40208114;
export const VDUSE_VQ_GET_INFO = 0xc0308115;
export const VDUSE_VQ_SETUP_KICKFD = 0x40088116;
export const VDUSE_VQ_INJECT_IRQ = 0x40048117;
export const VDUSE_IOTLB_GET_INFO = 0xc030811a;

/** Length of the name field of vduse_dev_config (with its NUL). */
export const VDUSE_NAME_MAX = 256;
/** sizeof(struct vduse_dev_config) without the config bytes. */
export const VDUSE_DEV_CONFIG_SIZE = 336;
/** sizeof(struct vduse_dev_request) and sizeof(struct vduse_dev_response). */
export const VDUSE_MESSAGE_SIZE = 152;

/** vduse_dev_request.type */
export const VDUSE_GET_VQ_STATE = 0;
export const VDUSE_SET_STATUS = 1;
export const VDUSE_UPDATE_IOTLB = 2;

/** vduse_dev_response.result */
export const VDUSE_REQ_RESULT_OK = 0;
export const VDUSE_REQ_RESULT_FAILED = 1;

/** vduse_iotlb_entry.perm */
export const VDUSE_ACCESS_RO = 1;
export const VDUSE_ACCESS_WO = 2;
export const VDUSE_ACCESS_RW = 3;

/** struct vduse_dev_config: name, ids, features, queue count, then the config bytes. */
export interface DevConfigFields {
  name: string;
  vendorId: number;
  deviceId: number;
  features: bigint;
  vqNum: number;
  vqAlign: number;
  config: Uint8Array;
}

/** Encodes struct vduse_dev_config followed by the config space (reserved bytes zero). */
export function encodeDevConfig(fields: DevConfigFields): Buffer {
  const out = Buffer.alloc(VDUSE_DEV_CONFIG_SIZE + fields.config.length);
  out.write(fields.name, 0, VDUSE_NAME_MAX - 1, 'utf8');
  out.writeUInt32LE(fields.vendorId, 256);
  out.writeUInt32LE(fields.deviceId, 260);
  out.writeBigUInt64LE(fields.features, 264);
  out.writeUInt32LE(fields.vqNum, 272);
  out.writeUInt32LE(fields.vqAlign, 276);
  out.writeUInt32LE(fields.config.length, 332);
  out.set(fields.config, VDUSE_DEV_CONFIG_SIZE);
  return out;
}

/** The char[256] argument of VDUSE_DESTROY_DEV. */
export function encodeName(name: string): Buffer {
  const out = Buffer.alloc(VDUSE_NAME_MAX);
  out.write(name, 0, VDUSE_NAME_MAX - 1, 'utf8');
  return out;
}

/** struct vduse_vq_config { u32 index; u16 max_size; u16 reserved[13]; } (32 bytes). */
export function encodeVqConfig(index: number, maxSize: number): Buffer {
  const out = Buffer.alloc(32);
  out.writeUInt32LE(index, 0);
  out.writeUInt16LE(maxSize, 4);
  return out;
}

/** struct vduse_vq_eventfd { u32 index; s32 fd; } — fd -1 deassigns. */
export function encodeVqEventfd(index: number, fd: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeUInt32LE(index, 0);
  out.writeInt32LE(fd, 4);
  return out;
}

/** A u32 (VDUSE_VQ_INJECT_IRQ's argument). */
export function encodeU32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32LE(value, 0);
  return out;
}

/** struct vduse_config_data { u32 offset; u32 length; u8 buffer[]; }. */
export function encodeConfigData(offset: number, bytes: Uint8Array): Buffer {
  const out = Buffer.alloc(8 + bytes.length);
  out.writeUInt32LE(offset, 0);
  out.writeUInt32LE(bytes.length, 4);
  out.set(bytes, 8);
  return out;
}

/** Last-avail (and, packed, last-used) state of a virtqueue, as in vduse_vq_state_{split,packed}. */
export type VqState =
  | { split: { availIndex: number } }
  | { packed: { availCounter: number; availIndex: number; usedCounter: number; usedIndex: number } };

/** struct vduse_vq_info (48 bytes), decoded. */
export interface VqInfo {
  index: number;
  num: number;
  descAddr: bigint;
  driverAddr: bigint;
  deviceAddr: bigint;
  /** Both readings of the state union; the negotiated ring format picks one. */
  split: { availIndex: number };
  packed: { availCounter: number; availIndex: number; usedCounter: number; usedIndex: number };
  ready: boolean;
}

/** A zeroed vduse_vq_info with `index` set (VDUSE_VQ_GET_INFO's in/out argument). */
export function vqInfoRequest(index: number): Buffer {
  const out = Buffer.alloc(48);
  out.writeUInt32LE(index, 0);
  return out;
}

export function decodeVqInfo(bytes: Buffer): VqInfo {
  return {
    index: bytes.readUInt32LE(0),
    num: bytes.readUInt32LE(4),
    descAddr: bytes.readBigUInt64LE(8),
    driverAddr: bytes.readBigUInt64LE(16),
    deviceAddr: bytes.readBigUInt64LE(24),
    split: { availIndex: bytes.readUInt16LE(32) },
    packed: {
      availCounter: bytes.readUInt16LE(32),
      availIndex: bytes.readUInt16LE(34),
      usedCounter: bytes.readUInt16LE(36),
      usedIndex: bytes.readUInt16LE(38),
    },
    ready: bytes.readUInt8(40) !== 0,
  };
}

/** struct vduse_iotlb_entry { u64 offset, start, last; u8 perm; } (32 bytes). */
export interface IotlbEntry {
  offset: bigint;
  start: bigint;
  last: bigint;
  perm: number;
}

export function encodeIotlbEntry(start: bigint, last: bigint): Buffer {
  const out = Buffer.alloc(32);
  out.writeBigUInt64LE(start, 8);
  out.writeBigUInt64LE(last, 16);
  return out;
}

export function decodeIotlbEntry(bytes: Buffer): IotlbEntry {
  return {
    offset: bytes.readBigUInt64LE(0),
    start: bytes.readBigUInt64LE(8),
    last: bytes.readBigUInt64LE(16),
    perm: bytes.readUInt8(24),
  };
}

/** A request read from /dev/vduse/NAME, decoded by type. */
export type VduseRequest =
  | { type: typeof VDUSE_GET_VQ_STATE; requestId: number; index: number }
  | { type: typeof VDUSE_SET_STATUS; requestId: number; status: number }
  | { type: typeof VDUSE_UPDATE_IOTLB; requestId: number; start: bigint; last: bigint }
  | { type: number; requestId: number };

export function decodeRequest(bytes: Buffer): VduseRequest {
  const type = bytes.readUInt32LE(0);
  const requestId = bytes.readUInt32LE(4);
  switch (type) {
    case VDUSE_GET_VQ_STATE:
      return { type, requestId, index: bytes.readUInt32LE(24) };
    case VDUSE_SET_STATUS:
      return { type, requestId, status: bytes.readUInt8(24) };
    case VDUSE_UPDATE_IOTLB:
      return { type, requestId, start: bytes.readBigUInt64LE(24), last: bytes.readBigUInt64LE(32) };
    default:
      return { type, requestId };
  }
}

/**
 * Encodes struct vduse_dev_response: request_id, result, reserved bytes zero
 * (the kernel answers EINVAL otherwise), and for GET_VQ_STATE the queue state.
 * The packed counters are 1 bit and the indexes 15 bits (the kernel masks them).
 */
export function encodeResponse(requestId: number, ok: boolean, index?: number, state?: VqState): Buffer {
  const out = Buffer.alloc(VDUSE_MESSAGE_SIZE);
  out.writeUInt32LE(requestId, 0);
  out.writeUInt32LE(ok ? VDUSE_REQ_RESULT_OK : VDUSE_REQ_RESULT_FAILED, 4);
  if (state !== undefined) {
    out.writeUInt32LE(index ?? 0, 24);
    if ('split' in state) {
      out.writeUInt16LE(state.split.availIndex & 0xffff, 28);
    } else {
      out.writeUInt16LE(state.packed.availCounter & 1, 28);
      out.writeUInt16LE(state.packed.availIndex & 0x7fff, 30);
      out.writeUInt16LE(state.packed.usedCounter & 1, 32);
      out.writeUInt16LE(state.packed.usedIndex & 0x7fff, 34);
    }
  }
  return out;
}
