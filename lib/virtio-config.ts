/**
 * Decoders for virtio device config space (virtio 1.x, little-endian), as
 * read with VhostVdpaDevice.getConfig(0, getConfigSize()). A field is present
 * only when the feature that makes it valid is in `features` (offered or
 * negotiated) and the config space is long enough to hold it.
 */
import { hasBit, VirtioBlkF, VirtioNetF } from './features';

/** struct virtio_blk_config, decoded. Sizes are in the units the spec uses (sectors of 512 bytes). */
export interface BlkConfig {
  /** Capacity in 512-byte sectors. */
  capacity: bigint;
  /** Largest segment in bytes (VIRTIO_BLK_F_SIZE_MAX). */
  sizeMax?: number;
  /** Most segments per request (VIRTIO_BLK_F_SEG_MAX). */
  segMax?: number;
  geometry?: { cylinders: number; heads: number; sectors: number };
  /** Logical block size in bytes (VIRTIO_BLK_F_BLK_SIZE). */
  blkSize?: number;
  topology?: { physicalBlockExp: number; alignmentOffset: number; minIoSize: number; optIoSize: number };
  /** Write cache mode, 1 = writeback (VIRTIO_BLK_F_CONFIG_WCE). */
  writeback?: number;
  /** Number of request queues (VIRTIO_BLK_F_MQ). */
  numQueues?: number;
  discard?: { maxSectors: number; maxSeg: number; sectorAlignment: number };
  writeZeroes?: { maxSectors: number; maxSeg: number; mayUnmap: boolean };
  secureErase?: { maxSectors: number; maxSeg: number; sectorAlignment: number };
  /** VIRTIO_BLK_F_RO offered: the device is read-only. */
  readOnly: boolean;
  /** VIRTIO_BLK_F_FLUSH offered. */
  flush: boolean;
}

/** struct virtio_net_config, decoded. */
export interface NetConfig {
  /** MAC address as aa:bb:cc:dd:ee:ff (VIRTIO_NET_F_MAC). */
  mac?: string;
  /** Link status bits, 1 = up (VIRTIO_NET_F_STATUS). */
  status?: number;
  /** VIRTIO_NET_F_MQ. */
  maxVirtqueuePairs?: number;
  /** VIRTIO_NET_F_MTU. */
  mtu?: number;
  /** Mbit/s and duplex (VIRTIO_NET_F_SPEED_DUPLEX). */
  speed?: number;
  duplex?: number;
}

function fits(config: Uint8Array, end: number): boolean {
  return config.length >= end;
}

/** Decodes a virtio-blk config space. */
export function decodeBlkConfig(config: Uint8Array, features: bigint): BlkConfig {
  const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const has = (bitNumber: number, end: number): boolean => hasBit(features, bitNumber) && fits(config, end);
  const result: BlkConfig = {
    capacity: fits(config, 8) ? view.getBigUint64(0, true) : 0n,
    readOnly: hasBit(features, VirtioBlkF.RO),
    flush: hasBit(features, VirtioBlkF.FLUSH),
  };
  if (has(VirtioBlkF.SIZE_MAX, 12)) result.sizeMax = view.getUint32(8, true);
  if (has(VirtioBlkF.SEG_MAX, 16)) result.segMax = view.getUint32(12, true);
  if (has(VirtioBlkF.GEOMETRY, 20)) {
    result.geometry = {
      cylinders: view.getUint16(16, true),
      heads: view.getUint8(18),
      sectors: view.getUint8(19),
    };
  }
  if (has(VirtioBlkF.BLK_SIZE, 24)) result.blkSize = view.getUint32(20, true);
  if (has(VirtioBlkF.TOPOLOGY, 32)) {
    result.topology = {
      physicalBlockExp: view.getUint8(24),
      alignmentOffset: view.getUint8(25),
      minIoSize: view.getUint16(26, true),
      optIoSize: view.getUint32(28, true),
    };
  }
  if (has(VirtioBlkF.CONFIG_WCE, 33)) result.writeback = view.getUint8(32);
  if (has(VirtioBlkF.MQ, 36)) result.numQueues = view.getUint16(34, true);
  if (has(VirtioBlkF.DISCARD, 48)) {
    result.discard = {
      maxSectors: view.getUint32(36, true),
      maxSeg: view.getUint32(40, true),
      sectorAlignment: view.getUint32(44, true),
    };
  }
  if (has(VirtioBlkF.WRITE_ZEROES, 57)) {
    result.writeZeroes = {
      maxSectors: view.getUint32(48, true),
      maxSeg: view.getUint32(52, true),
      mayUnmap: view.getUint8(56) !== 0,
    };
  }
  if (has(VirtioBlkF.SECURE_ERASE, 72)) {
    result.secureErase = {
      maxSectors: view.getUint32(60, true),
      maxSeg: view.getUint32(64, true),
      sectorAlignment: view.getUint32(68, true),
    };
  }
  return result;
}

/** Decodes a virtio-net config space. */
export function decodeNetConfig(config: Uint8Array, features: bigint): NetConfig {
  const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
  const has = (bitNumber: number, end: number): boolean => hasBit(features, bitNumber) && fits(config, end);
  const result: NetConfig = {};
  if (has(VirtioNetF.MAC, 6)) {
    result.mac = [...config.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
  }
  if (has(VirtioNetF.STATUS, 8)) result.status = view.getUint16(6, true);
  if (has(VirtioNetF.MQ, 10)) result.maxVirtqueuePairs = view.getUint16(8, true);
  if (has(VirtioNetF.MTU, 12)) result.mtu = view.getUint16(10, true);
  if (has(VirtioNetF.SPEED_DUPLEX, 17)) {
    result.speed = view.getUint32(12, true);
    result.duplex = view.getUint8(16);
  }
  return result;
}
