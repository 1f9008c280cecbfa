/**
 * virtio-blk request protocol (include/uapi/linux/virtio_blk.h), named as in
 * the kernel header.
 */

/** Read. */
export const VIRTIO_BLK_T_IN = 0;
/** Write. */
export const VIRTIO_BLK_T_OUT = 1;
/** Flush the write cache. */
export const VIRTIO_BLK_T_FLUSH = 4;
/** Device id string (20 bytes). */
export const VIRTIO_BLK_T_GET_ID = 8;
/** Device lifetime (VIRTIO_BLK_F_LIFETIME). */
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
/** Discard. */
export const VIRTIO_BLK_T_DISCARD = 11;
/** Write zeroes. */
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
/** Secure erase (VIRTIO_BLK_F_SECURE_ERASE). */
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

/** Status byte values. */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** `flags` of struct virtio_blk_discard_write_zeroes: the device may deallocate. */
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;

/** Bytes of a GET_ID answer. */
export const VIRTIO_BLK_ID_BYTES = 20;
/** The unit of the `sector` field, whatever the logical block size. */
export const VIRTIO_BLK_SECTOR_SIZE = 512;
/** sizeof(struct virtio_blk_outhdr): le32 type, le32 ioprio, le64 sector. */
export const VIRTIO_BLK_OUTHDR_SIZE = 16;
/** sizeof(struct virtio_blk_discard_write_zeroes): le64 sector, le32 num_sectors, le32 flags. */
export const VIRTIO_BLK_DWZ_SIZE = 16;

/** Kernel name of a request type, for messages. */
export function blkRequestTypeName(type: number): string {
  const names: Record<number, string> = {
    [VIRTIO_BLK_T_IN]: 'IN',
    [VIRTIO_BLK_T_OUT]: 'OUT',
    [VIRTIO_BLK_T_FLUSH]: 'FLUSH',
    [VIRTIO_BLK_T_GET_ID]: 'GET_ID',
    [VIRTIO_BLK_T_GET_LIFETIME]: 'GET_LIFETIME',
    [VIRTIO_BLK_T_DISCARD]: 'DISCARD',
    [VIRTIO_BLK_T_WRITE_ZEROES]: 'WRITE_ZEROES',
    [VIRTIO_BLK_T_SECURE_ERASE]: 'SECURE_ERASE',
  };
  return `VIRTIO_BLK_T_${names[type] ?? String(type)}`;
}
