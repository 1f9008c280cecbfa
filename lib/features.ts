/**
 * Virtio and vhost feature bits, by kernel name, and decoders that turn a
 * 64-bit feature mask into names (unknown bits come out as `bit<N>`).
 */
import { VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from './uapi';

/** Device-independent feature bits (include/uapi/linux/virtio_config.h, virtio_ring.h). */
export const VirtioF = {
  NOTIFY_ON_EMPTY: 24,
  ANY_LAYOUT: 27,
  RING_INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  NOTIF_CONFIG_DATA: 39,
  RING_RESET: 40,
  ADMIN_VQ: 41,
} as const;

/** virtio-blk feature bits (include/uapi/linux/virtio_blk.h). */
export const VirtioBlkF = {
  BARRIER: 0,
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  SCSI: 7,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
  LIFETIME: 15,
  SECURE_ERASE: 16,
  ZONED: 17,
} as const;

/** virtio-net feature bits (include/uapi/linux/virtio_net.h). */
export const VirtioNetF = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GSO: 6,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  CTRL_RX: 18,
  CTRL_VLAN: 19,
  CTRL_RX_EXTRA: 20,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
  CTRL_MAC_ADDR: 23,
  DEVICE_STATS: 50,
  VQ_NOTF_COAL: 52,
  NOTF_COAL: 53,
  GUEST_USO4: 54,
  GUEST_USO6: 55,
  HOST_USO: 56,
  HASH_REPORT: 57,
  GUEST_HDRLEN: 59,
  RSS: 60,
  RSC_EXT: 61,
  STANDBY: 62,
  SPEED_DUPLEX: 63,
} as const;

/** vhost backend feature bits (include/uapi/linux/vhost_types.h). */
export const VhostBackendF = {
  IOTLB_MSG_V2: 1,
  IOTLB_BATCH: 2,
  IOTLB_ASID: 3,
  SUSPEND: 4,
  RESUME: 5,
  ENABLE_AFTER_DRIVER_OK: 6,
  DESC_ASID: 7,
  IOTLB_PERSIST: 8,
} as const;

/** The mask of one feature bit. */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

/** The mask of several feature bits. */
export function bits(...numbers: number[]): bigint {
  return numbers.reduce((mask, n) => mask | bit(n), 0n);
}

/** True when `mask` has bit `n`. */
export function hasBit(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}

function decode(mask: bigint, ...tables: Record<string, number>[]): string[] {
  const names: string[] = [];
  for (let n = 0; n < 64; n++) {
    if (!hasBit(mask, n)) continue;
    let name: string | undefined;
    for (const table of tables) {
      name = Object.keys(table).find((key) => table[key] === n);
      if (name !== undefined) break;
    }
    names.push(name ?? `bit${n}`);
  }
  return names;
}

/**
 * Names of the bits in a virtio feature mask: device-class bits (below 24 and
 * from 50) decoded for block (id 2) and net (id 1) devices, transport bits
 * (24–49) for every device.
 */
export function decodeFeatures(mask: bigint, deviceId?: number): string[] {
  const classTable: Record<string, number> =
    deviceId === VIRTIO_ID_BLOCK ? VirtioBlkF : deviceId === VIRTIO_ID_NET ? VirtioNetF : {};
  return decode(mask, VirtioF, classTable);
}

/** Names of the bits in a vhost backend feature mask. */
export function decodeBackendFeatures(mask: bigint): string[] {
  return decode(mask, VhostBackendF);
}

/** Names of the bits in a virtio device status byte. */
export function decodeStatus(status: number): string[] {
  const names: [number, string][] = [
    [1, 'ACKNOWLEDGE'],
    [2, 'DRIVER'],
    [4, 'DRIVER_OK'],
    [8, 'FEATURES_OK'],
    [0x40, 'NEEDS_RESET'],
    [0x80, 'FAILED'],
  ];
  return names.filter(([value]) => (status & value) !== 0).map(([, name]) => name);
}
