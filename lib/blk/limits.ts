/**
 * The limits a virtio-blk driver enforces, derived from the device's config
 * space and the ring: how large one device request may be and how requests
 * are split.
 */
import { ErrorCodes, VdpaError } from '../errors';
import { PAGE_SIZE } from '../native';
import type { BlkConfig } from '../virtio-config';
import { VIRTIO_BLK_SECTOR_SIZE } from './protocol';

/** Limits the driver enforces, from the device's config space. */
export interface BlockLimits {
  /** Logical block size: every offset and length is a multiple of it. */
  logicalBlockSize: number;
  /** Physical block size (logical × 2^physical_block_exp). */
  physicalBlockSize: number;
  /** Largest segment the device accepts (VIRTIO_BLK_F_SIZE_MAX); undefined = no limit. */
  sizeMax?: number;
  /** Most data segments per request (VIRTIO_BLK_F_SEG_MAX, or 1). */
  segMax: number;
  /** Data segments the driver puts in one request (seg_max, capped by the ring or indirect table). */
  segmentsPerRequest: number;
  /** Largest read/write sent as one device request (larger ones are split). */
  maxTransferBytes: number;
  /** The same for data copied through the bounce pool (one pool chunk per segment). */
  maxBounceTransferBytes: number;
  /** Largest discard sent as one device request; undefined without VIRTIO_BLK_F_DISCARD. */
  maxDiscardBytes?: number;
  /** Largest write-zeroes sent as one device request; undefined without VIRTIO_BLK_F_WRITE_ZEROES. */
  maxWriteZeroesBytes?: number;
  /** The device may deallocate on write-zeroes with `unmap`. */
  writeZeroesMayUnmap: boolean;
}

const MAX_U32 = 0xffffffff;
/** Default largest single device request. */
export const DEFAULT_MAX_TRANSFER = 1 << 20;

/** The logical block size: blk_size when it is a power of two ≥ 512, else 512. */
export function logicalBlockSizeOf(config: BlkConfig): number {
  const blkSize = config.blkSize;
  return blkSize !== undefined && blkSize >= VIRTIO_BLK_SECTOR_SIZE && (blkSize & (blkSize - 1)) === 0
    ? blkSize
    : VIRTIO_BLK_SECTOR_SIZE;
}

/** The bounce pool's chunk size: a page, or size_max when the device's segments are smaller. */
export function bounceChunkSize(config: BlkConfig): number {
  const sizeMax = config.sizeMax !== undefined && config.sizeMax > 0 ? config.sizeMax : undefined;
  return Math.min(PAGE_SIZE, sizeMax ?? PAGE_SIZE);
}

/**
 * Computes the limits for `config` with `queueSize` descriptors per queue.
 * @throws VdpaError `ERR_INVALID_ARG` for a `maxTransferBytes` below one block.
 */
export function computeLimits(
  config: BlkConfig,
  queueSize: number,
  maxTransfer: number | undefined,
): BlockLimits {
  const block = logicalBlockSizeOf(config);
  const floorBlock = (n: number): number => Math.floor(n / block) * block;
  const segMax = Math.max(1, config.segMax ?? 1);
  const segmentsPerRequest = Math.min(segMax, queueSize - 2);
  const sizeMax = config.sizeMax !== undefined && config.sizeMax > 0 ? config.sizeMax : undefined;
  const cap = maxTransfer ?? DEFAULT_MAX_TRANSFER;
  if (!Number.isSafeInteger(cap) || cap < block) {
    throw new VdpaError(`maxTransferBytes must be an integer ≥ ${block}`, { code: ErrorCodes.INVALID_ARG });
  }
  const maxTransferBytes = Math.max(
    block,
    floorBlock(Math.min(cap, MAX_U32, segmentsPerRequest * (sizeMax ?? MAX_U32))),
  );
  const chunk = bounceChunkSize(config);
  const maxBounceTransferBytes = Math.max(
    block,
    floorBlock(Math.min(maxTransferBytes, segmentsPerRequest * chunk)),
  );
  const rangeMax = (sectors: number | undefined): number =>
    Math.max(
      block,
      floorBlock((sectors === undefined || sectors === 0 ? MAX_U32 : sectors) * VIRTIO_BLK_SECTOR_SIZE),
    );
  return {
    logicalBlockSize: block,
    physicalBlockSize: block * 2 ** (config.topology?.physicalBlockExp ?? 0),
    ...(sizeMax === undefined ? {} : { sizeMax }),
    segMax,
    segmentsPerRequest,
    maxTransferBytes,
    maxBounceTransferBytes,
    ...(config.discard === undefined ? {} : { maxDiscardBytes: rangeMax(config.discard.maxSectors) }),
    ...(config.writeZeroes === undefined
      ? {}
      : { maxWriteZeroesBytes: rangeMax(config.writeZeroes.maxSectors) }),
    writeZeroesMayUnmap: config.writeZeroes?.mayUnmap ?? false,
  };
}
