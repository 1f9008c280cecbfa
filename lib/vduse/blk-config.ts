/**
 * The virtio-blk side of a VDUSE block device: the features it offers and its
 * struct virtio_blk_config (the layout lib/virtio-config.ts decodes).
 * @module
 */
import { bits, VirtioBlkF, VirtioF } from '../features';

/** sizeof(struct virtio_blk_config) with every field up to secure erase. */
export const BLK_CONFIG_SIZE = 72;
/** Largest discard / write-zeroes request, in sectors (what qemu-storage-daemon offers). */
export const BLK_MAX_DISCARD_SECTORS = 0x3fffff;

/** What the config space describes. */
export interface BlkConfigFields {
  /** Capacity in bytes (a multiple of 512). */
  capacity: number;
  /** Most data segments per request. */
  segMax: number;
  /** Logical block size in bytes (512, 4096). */
  blkSize: number;
  numQueues: number;
}

/** Encodes struct virtio_blk_config (little-endian). */
export function encodeBlkConfig(fields: BlkConfigFields): Buffer {
  const out = Buffer.alloc(BLK_CONFIG_SIZE);
  out.writeBigUInt64LE(BigInt(Math.floor(fields.capacity / 512)), 0);
  out.writeUInt32LE(fields.segMax, 12);
  out.writeUInt32LE(fields.blkSize, 20);
  // topology: physical block = logical block, no alignment offset, min I/O 1 block, no optimal size
  out.writeUInt8(0, 24);
  out.writeUInt8(0, 25);
  out.writeUInt16LE(1, 26);
  out.writeUInt32LE(0, 28);
  out.writeUInt16LE(fields.numQueues, 34);
  out.writeUInt32LE(BLK_MAX_DISCARD_SECTORS, 36);
  out.writeUInt32LE(1, 40);
  out.writeUInt32LE(fields.blkSize / 512, 44);
  out.writeUInt32LE(BLK_MAX_DISCARD_SECTORS, 48);
  out.writeUInt32LE(1, 52);
  out.writeUInt8(0, 56);
  return out;
}

/** The capacity field alone (a resize rewrites these 8 bytes at offset 0). */
export function encodeCapacity(bytes: number): Buffer {
  const out = Buffer.alloc(8);
  out.writeBigUInt64LE(BigInt(Math.floor(bytes / 512)), 0);
  return out;
}

/**
 * Features offered: VERSION_1 and ACCESS_PLATFORM (VDUSE requires both), indirect descriptors, EVENT_IDX,
 * SEG_MAX, BLK_SIZE, TOPOLOGY, FLUSH, MQ; DISCARD and WRITE_ZEROES unless read-only, RO when read-only,
 * RING_PACKED when asked for. Not CONFIG_WCE: VDUSE refuses it.
 */
export function blkFeatures(options: { readOnly: boolean; packed: boolean }): bigint {
  let features = bits(
    VirtioF.VERSION_1,
    VirtioF.ACCESS_PLATFORM,
    VirtioF.RING_INDIRECT_DESC,
    VirtioF.RING_EVENT_IDX,
    VirtioBlkF.SEG_MAX,
    VirtioBlkF.BLK_SIZE,
    VirtioBlkF.TOPOLOGY,
    VirtioBlkF.FLUSH,
    VirtioBlkF.MQ,
  );
  features |= options.readOnly ? bits(VirtioBlkF.RO) : bits(VirtioBlkF.DISCARD, VirtioBlkF.WRITE_ZEROES);
  if (options.packed) features |= bits(VirtioF.RING_PACKED);
  return features;
}
