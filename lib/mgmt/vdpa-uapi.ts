/**
 * The vdpa generic netlink uAPI (`include/uapi/linux/vdpa.h`, Linux 6.12),
 * with the kernel's names so they can be grepped against the header.
 * @module
 */

export const VDPA_GENL_NAME = 'vdpa';
export const VDPA_GENL_VERSION = 1;

export const VDPA_CMD_MGMTDEV_NEW = 1;
export const VDPA_CMD_MGMTDEV_GET = 2;
export const VDPA_CMD_DEV_NEW = 3;
export const VDPA_CMD_DEV_DEL = 4;
export const VDPA_CMD_DEV_GET = 5;
export const VDPA_CMD_DEV_CONFIG_GET = 6;
export const VDPA_CMD_DEV_VSTATS_GET = 7;
export const VDPA_CMD_DEV_ATTR_SET = 8;

/** Command names for error messages. */
export const VDPA_CMD_NAMES: Readonly<Record<number, string>> = {
  [VDPA_CMD_MGMTDEV_GET]: 'MGMTDEV_GET',
  [VDPA_CMD_DEV_NEW]: 'DEV_NEW',
  [VDPA_CMD_DEV_DEL]: 'DEV_DEL',
  [VDPA_CMD_DEV_GET]: 'DEV_GET',
  [VDPA_CMD_DEV_CONFIG_GET]: 'DEV_CONFIG_GET',
  [VDPA_CMD_DEV_VSTATS_GET]: 'DEV_VSTATS_GET',
  [VDPA_CMD_DEV_ATTR_SET]: 'DEV_ATTR_SET',
};

export const VDPA_ATTR_PAD = 0;
export const VDPA_ATTR_MGMTDEV_BUS_NAME = 1;
export const VDPA_ATTR_MGMTDEV_DEV_NAME = 2;
export const VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES = 3;
export const VDPA_ATTR_DEV_NAME = 4;
export const VDPA_ATTR_DEV_ID = 5;
export const VDPA_ATTR_DEV_VENDOR_ID = 6;
export const VDPA_ATTR_DEV_MAX_VQS = 7;
export const VDPA_ATTR_DEV_MAX_VQ_SIZE = 8;
export const VDPA_ATTR_DEV_MIN_VQ_SIZE = 9;
export const VDPA_ATTR_DEV_NET_CFG_MACADDR = 10;
/** Documented as u8; drivers/vdpa/vdpa.c sends a u16. */
export const VDPA_ATTR_DEV_NET_STATUS = 11;
export const VDPA_ATTR_DEV_NET_CFG_MAX_VQP = 12;
export const VDPA_ATTR_DEV_NET_CFG_MTU = 13;
export const VDPA_ATTR_DEV_NEGOTIATED_FEATURES = 14;
export const VDPA_ATTR_DEV_MGMTDEV_MAX_VQS = 15;
export const VDPA_ATTR_DEV_SUPPORTED_FEATURES = 16;
export const VDPA_ATTR_DEV_QUEUE_INDEX = 17;
export const VDPA_ATTR_DEV_VENDOR_ATTR_NAME = 18;
export const VDPA_ATTR_DEV_VENDOR_ATTR_VALUE = 19;
export const VDPA_ATTR_DEV_FEATURES = 20;
// Linux ≤ 6.1 had VDPA_ATTR_VDPA_DEV_SUPPORTED_FEATURES (u64) at 21; it was
// merged into DEV_FEATURES and 21.. became the block config attributes, so
// they are only read from block devices.
export const VDPA_ATTR_DEV_BLK_CFG_CAPACITY = 21;
export const VDPA_ATTR_DEV_BLK_CFG_SIZE_MAX = 22;
export const VDPA_ATTR_DEV_BLK_CFG_BLK_SIZE = 23;
export const VDPA_ATTR_DEV_BLK_CFG_SEG_MAX = 24;
export const VDPA_ATTR_DEV_BLK_CFG_NUM_QUEUES = 25;
export const VDPA_ATTR_DEV_BLK_CFG_PHY_BLK_EXP = 26;
export const VDPA_ATTR_DEV_BLK_CFG_ALIGN_OFFSET = 27;
export const VDPA_ATTR_DEV_BLK_CFG_MIN_IO_SIZE = 28;
export const VDPA_ATTR_DEV_BLK_CFG_OPT_IO_SIZE = 29;
export const VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEC = 30;
export const VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEG = 31;
export const VDPA_ATTR_DEV_BLK_CFG_DISCARD_SEC_ALIGN = 32;
export const VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC = 33;
export const VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG = 34;
export const VDPA_ATTR_DEV_BLK_READ_ONLY = 35;
export const VDPA_ATTR_DEV_BLK_FLUSH = 36;

/** Device-creation options, by the attribute bit the kernel reports in "not supported: 0x…". */
export const VDPA_ADD_OPTION_BY_ATTR: Readonly<Record<number, string>> = {
  [VDPA_ATTR_DEV_NET_CFG_MACADDR]: 'mac',
  [VDPA_ATTR_DEV_NET_CFG_MTU]: 'mtu',
  [VDPA_ATTR_DEV_NET_CFG_MAX_VQP]: 'maxVqPairs',
  [VDPA_ATTR_DEV_FEATURES]: 'deviceFeatures',
};

/** `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX`: the largest max_vqp the kernel accepts. */
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000;
/** The smallest MTU the kernel's policy accepts (virtio spec 1.1 §5.1.4.1). */
export const VDPA_MIN_MTU = 68;

/** Virtio device ids (`linux/virtio_ids.h`) by class name, as iproute2 prints them. */
export const VIRTIO_CLASS_NAMES: Readonly<Record<number, string>> = {
  1: 'net',
  2: 'block',
  3: 'console',
  4: 'rng',
  5: 'balloon',
  8: 'scsi',
  9: '9p',
  16: 'gpu',
  18: 'input',
  19: 'vsock',
  20: 'crypto',
  26: 'fs',
  41: 'gpio',
};

/** The class name of a virtio device id ('block'), or 'id N' for ids without a name here. */
export function virtioClassName(deviceId: number): string {
  return VIRTIO_CLASS_NAMES[deviceId] ?? `id ${deviceId}`;
}

/** The class names in a MGMTDEV_SUPPORTED_CLASSES bit mask (bit N = virtio id N). */
export function decodeClassMask(mask: bigint): string[] {
  const out: string[] = [];
  for (let id = 0; id < 64; id++) {
    if ((mask >> BigInt(id)) & 1n) out.push(virtioClassName(id));
  }
  return out;
}
