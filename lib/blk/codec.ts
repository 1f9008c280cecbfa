/**
 * The virtio-blk wire protocol (virtio 1.2 §5.2.6): how one device request is
 * laid out as a descriptor chain, and what its status byte means. The driver
 * core (lib/virtio) calls {@link BlkCodec.encode} when it dispatches an op and
 * {@link BlkCodec.complete} when the device returns it.
 *
 * Per-request device memory lives in the queue's per-descriptor slots (the
 * chain's index picks the slot): [header 16 | out payload 32 | in payload 64 |
 * status 1 | pad], so the hot path allocates no DMA memory.
 */
import { ErrorCodes, VdpaError } from '../errors';
import type { DriverProtocol } from '../virtio/types';
import type { DriverQueue } from '../virtio/queues';
import { DeviceOp, DriverRequest } from '../virtio/request';
import {
  blkRequestTypeName,
  VIRTIO_BLK_DWZ_SIZE,
  VIRTIO_BLK_ID_BYTES,
  VIRTIO_BLK_OUTHDR_SIZE,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_SECTOR_SIZE,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from './protocol';

/** Bytes of device memory per descriptor slot. */
export const SLOT_SIZE = 128;
/** Offset of the device-readable payload (discard/write-zeroes range, raw payload) in a slot. */
export const SLOT_OUT = 16;
/** Offset of the device-writable payload (GET_ID answer, raw response). */
export const SLOT_IN = 48;
/** Most device-writable payload bytes. */
export const SLOT_IN_MAX = 64;
const SLOT_STATUS = 112;
/** Written before submission; a completion that still shows it means the device never wrote a status. */
const STATUS_UNSET = 0xff;

/** One virtio-blk device request. */
export class BlkOp extends DeviceOp {
  /** VIRTIO_BLK_T_*. */
  type = 0;
  /** Start in 512-byte sectors (header for IN/OUT, payload for DISCARD/WRITE_ZEROES). */
  sector = 0;
  /** DISCARD/WRITE_ZEROES flags. */
  flags = 0;
  /** A `rawRequest()`: payload from the request's data, response into its result. */
  raw = false;
}

/** Encodes and decodes virtio-blk requests for the driver core. */
export class BlkCodec implements DriverProtocol<BlkOp> {
  readonly #path: string;
  readonly #maxChunks: number;
  /** Largest data segment of a zero-copy request (size_max). */
  readonly #maxSegment: number;
  readonly #pushData: (op: BlkOp, q: DriverQueue, writable: boolean, maxSegment: number) => void;
  readonly configChanged: (config: Buffer) => unknown;

  constructor(options: {
    path: string;
    maxChunks: number;
    maxSegment: number;
    pushData: (op: BlkOp, q: DriverQueue, writable: boolean, maxSegment: number) => void;
    configChanged: (config: Buffer) => unknown;
  }) {
    this.#path = options.path;
    this.#maxChunks = options.maxChunks;
    this.#maxSegment = options.maxSegment;
    this.#pushData = options.pushData;
    this.configChanged = options.configChanged;
  }

  newOp(): BlkOp {
    return new BlkOp(this.#maxChunks);
  }

  /** Writes one device request into the open chain: header, data or payload, status. */
  encode(op: BlkOp, q: DriverQueue, head: number): void {
    const vq = q.vq;
    const slot = head * SLOT_SIZE;
    const w = slot >> 2;
    const slots32 = q.slots32;
    const slotIova = q.slotsIova + slot;
    const isData = !op.raw && (op.type === VIRTIO_BLK_T_IN || op.type === VIRTIO_BLK_T_OUT);
    // Only IN/OUT carry a sector in the header; vdpa_sim fails other types whose sector is not 0.
    const headerSector = isData || op.raw ? op.sector : 0;
    slots32[w] = op.type;
    slots32[w + 1] = 0;
    slots32[w + 2] = headerSector >>> 0;
    slots32[w + 3] = Math.floor(headerSector / 0x100000000);
    q.slots8[slot + SLOT_STATUS] = STATUS_UNSET;
    vq.push(slotIova, VIRTIO_BLK_OUTHDR_SIZE, false);
    if (isData) {
      this.#pushData(op, q, op.type === VIRTIO_BLK_T_IN, this.#maxSegment);
    } else if (op.raw) {
      const payload = op.request.data;
      if (payload !== undefined && payload.length > 0) {
        q.slots8.set(payload, slot + SLOT_OUT);
        vq.push(slotIova + SLOT_OUT, payload.length, false);
      }
      if (op.length > 0) vq.push(slotIova + SLOT_IN, op.length, true);
    } else if (op.type === VIRTIO_BLK_T_DISCARD || op.type === VIRTIO_BLK_T_WRITE_ZEROES) {
      const p = (slot + SLOT_OUT) >> 2;
      slots32[p] = op.sector >>> 0;
      slots32[p + 1] = Math.floor(op.sector / 0x100000000);
      slots32[p + 2] = op.length / VIRTIO_BLK_SECTOR_SIZE;
      slots32[p + 3] = op.flags;
      vq.push(slotIova + SLOT_OUT, VIRTIO_BLK_DWZ_SIZE, false);
    } else if (op.type === VIRTIO_BLK_T_GET_ID) {
      vq.push(slotIova + SLOT_IN, VIRTIO_BLK_ID_BYTES, true);
    }
    vq.push(slotIova + SLOT_STATUS, 1, true);
  }

  /** Decodes the status byte; copies a raw response or the device id into the request's result. */
  complete(op: BlkOp, q: DriverQueue, _usedLength: number): Error | undefined {
    const slot = op.head * SLOT_SIZE;
    const status = q.slots8[slot + SLOT_STATUS];
    if (status !== VIRTIO_BLK_S_OK) return this.#statusError(op, status);
    const request = op.request;
    if (op.raw) {
      (request.result as Buffer).set(q.slots8.subarray(slot + SLOT_IN, slot + SLOT_IN + op.length));
    } else if (op.type === VIRTIO_BLK_T_GET_ID) {
      const id = q.slots8.subarray(slot + SLOT_IN, slot + SLOT_IN + VIRTIO_BLK_ID_BYTES);
      const end = id.indexOf(0);
      request.result = Buffer.from(id.subarray(0, end < 0 ? id.length : end)).toString('latin1');
    }
    return undefined;
  }

  describe(request: DriverRequest): string {
    if (request.kind === 'flush' || request.kind === 'get-id') return request.kind;
    if (request.kind.startsWith('request ')) return `${request.kind} at offset ${request.offset}`;
    return `${request.kind} of ${request.length} bytes at offset ${request.offset}`;
  }

  #statusError(op: BlkOp, status: number): VdpaError {
    const request = op.request;
    const piece =
      request.length > 0 && op.length !== request.length
        ? ` (device request ${blkRequestTypeName(op.type)} of ${op.length} bytes at offset ${op.sector * VIRTIO_BLK_SECTOR_SIZE})`
        : '';
    const what = `${this.describe(request)} on ${this.#path}${piece}`;
    if (status === VIRTIO_BLK_S_IOERR) {
      return new VdpaError(`${what} failed: the device reported VIRTIO_BLK_S_IOERR`, {
        code: 'EIO',
        errno: 5,
        path: this.#path,
      });
    }
    if (status === VIRTIO_BLK_S_UNSUPP) {
      return new VdpaError(
        `${what} failed: the device reported VIRTIO_BLK_S_UNSUPP (operation not supported)`,
        {
          code: ErrorCodes.DEVICE_UNSUPP,
          path: this.#path,
        },
      );
    }
    return new VdpaError(
      status === STATUS_UNSET
        ? `${what} failed: the device completed it without writing a status byte`
        : `${what} failed: the device wrote an invalid status byte 0x${status.toString(16)}`,
      { code: 'EIO', errno: 5, path: this.#path },
    );
  }
}
