/**
 * The virtio-net wire protocol (virtio 1.2 §5.1.6) for the driver core: how a
 * transmitted frame, a receive buffer and a control command are laid out as
 * descriptor chains, and what comes back. Every op is targeted at its queue
 * (RX 0, TX 1, control 2); receive buffers are standing ops (no deadline).
 *
 * Device memory per chain lives in the queue's per-descriptor slot (the
 * chain's index picks it), so nothing is allocated on the hot path:
 * - TX: [virtio_net_hdr 12 | frame] — the frame is copied in at dispatch, one
 *   descriptor; a frame in `allocBuffer()` memory goes as a second descriptor
 *   instead (zero-copy);
 * - RX: the whole slot, one device-writable descriptor [header | frame];
 * - control: [class, command | data at 16 | ack at 96].
 */
import { ErrorCodes, VdpaError } from '../errors';
import type { DriverProtocol } from '../virtio/types';
import type { DriverQueue } from '../virtio/queues';
import { DeviceOp, DriverRequest } from '../virtio/request';
import { controlCommandName, ETH_HLEN, VIRTIO_NET_ERR, VIRTIO_NET_HDR_SIZE, VIRTIO_NET_OK } from './protocol';

export const OP_TX = 0;
export const OP_RX = 1;
export const OP_CTRL = 2;

/** Queue indexes of the one queue pair and the control queue (no VIRTIO_NET_F_MQ). */
export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
export const CTRL_QUEUE = 2;

/** Control slot layout. */
export const CTRL_DATA_OFFSET = 16;
export const CTRL_DATA_MAX = 64;
const CTRL_ACK_OFFSET = 96;
/** Written before submission; an ack that still shows it means the device never wrote one. */
const ACK_UNSET = 0xff;

/** One virtio-net chain. */
export class NetOp extends DeviceOp {
  kind = OP_TX;
  /** TX: the frame (copied into the slot at dispatch unless it lives in DMA memory). */
  frame: Uint8Array | undefined = undefined;
  /** TX: the frame was detached or shrunk before dispatch (sent as an empty chain, rejected). */
  lost = false;
  /** Control: class and command. */
  ctrlClass = 0;
  ctrlCmd = 0;
}

/** What the codec reports back to {@link NetDevice}. */
export interface NetCodecHooks {
  /** A frame arrived in `slot[offset, offset + length)` of the RX queue (header stripped). */
  received(q: DriverQueue, offset: number, length: number): void;
  /** An RX completion too short to hold a header and an Ethernet header. */
  receivedRunt(length: number): void;
  /** An RX buffer came back (after `received`): post it again or keep it (paused). */
  rxReturned(): void;
  /** A frame was transmitted. */
  sent(length: number): void;
  configChanged(config: Buffer): unknown;
  restarted(): void;
}

/** Encodes and decodes virtio-net chains for the driver core. */
export class NetCodec implements DriverProtocol<NetOp> {
  readonly #path: string;
  readonly #slotSize: number;
  /** Bytes of an RX buffer (header included). */
  readonly #rxBytes: number;
  readonly #hooks: NetCodecHooks;
  readonly configChanged: (config: Buffer) => unknown;
  readonly restarted: () => void;

  constructor(options: { path: string; slotSize: number; rxBytes: number; hooks: NetCodecHooks }) {
    this.#path = options.path;
    this.#slotSize = options.slotSize;
    this.#rxBytes = options.rxBytes;
    this.#hooks = options.hooks;
    this.configChanged = (config) => this.#hooks.configChanged(config);
    this.restarted = () => this.#hooks.restarted();
  }

  newOp(): NetOp {
    return new NetOp(0);
  }

  encode(op: NetOp, q: DriverQueue, head: number): void {
    const vq = q.vq;
    const slot = head * this.#slotSize;
    const iova = q.slotsIova + slot;
    if (op.kind === OP_RX) {
      vq.push(iova, this.#rxBytes, true);
    } else if (op.kind === OP_TX) {
      // virtio_net_hdr_v1 all zero: no checksum or segmentation offload asked, num_buffers 0.
      const w = slot >> 2;
      q.slots32[w] = 0;
      q.slots32[w + 1] = 0;
      q.slots32[w + 2] = 0;
      const frame = op.frame as Uint8Array;
      if (op.dataIova >= 0) {
        vq.push(iova, VIRTIO_NET_HDR_SIZE, false);
        vq.push(op.dataIova, op.length, false);
      } else if (frame.length === op.length) {
        q.slots8.set(frame, slot + VIRTIO_NET_HDR_SIZE);
        vq.push(iova, VIRTIO_NET_HDR_SIZE + op.length, false);
      } else {
        // Detached or shrunk since send(): a header-only chain, which devices drop; complete() rejects it.
        op.lost = true;
        vq.push(iova, VIRTIO_NET_HDR_SIZE, false);
      }
    } else {
      q.slots8[slot] = op.ctrlClass;
      q.slots8[slot + 1] = op.ctrlCmd;
      q.slots8[slot + CTRL_ACK_OFFSET] = ACK_UNSET;
      vq.push(iova, 2, false);
      const data = op.request.data;
      if (data !== undefined && data.length > 0) {
        q.slots8.set(data, slot + CTRL_DATA_OFFSET);
        vq.push(iova + CTRL_DATA_OFFSET, data.length, false);
      }
      vq.push(iova + CTRL_ACK_OFFSET, 1, true);
    }
  }

  complete(op: NetOp, q: DriverQueue, usedLength: number): Error | undefined {
    const slot = op.head * this.#slotSize;
    if (op.kind === OP_RX) {
      if (usedLength < VIRTIO_NET_HDR_SIZE + ETH_HLEN) this.#hooks.receivedRunt(usedLength);
      else {
        this.#hooks.received(
          q,
          slot + VIRTIO_NET_HDR_SIZE,
          Math.min(usedLength, this.#rxBytes) - VIRTIO_NET_HDR_SIZE,
        );
      }
      this.#hooks.rxReturned();
      return undefined;
    }
    if (op.kind === OP_TX) {
      op.frame = undefined;
      if (op.lost) {
        op.lost = false;
        return new VdpaError(
          `${this.describe(op.request)} on ${this.#path}: the frame's buffer could not be read at dispatch ` +
            '(was its ArrayBuffer transferred or detached?); nothing was sent',
          { code: ErrorCodes.INVALID_ARG, path: this.#path },
        );
      }
      this.#hooks.sent(op.length);
      return undefined;
    }
    const ack = q.slots8[slot + CTRL_ACK_OFFSET];
    if (ack === VIRTIO_NET_OK) return undefined;
    const name = controlCommandName(op.ctrlClass, op.ctrlCmd);
    return new VdpaError(
      ack === VIRTIO_NET_ERR
        ? `${name} (${op.request.kind}) on ${this.#path} was refused by the device (VIRTIO_NET_ERR)`
        : `${name} (${op.request.kind}) on ${this.#path}: the device wrote ${ack === ACK_UNSET ? 'no ack' : `an invalid ack 0x${ack.toString(16)}`}`,
      { code: ErrorCodes.DEVICE_UNSUPP, path: this.#path },
    );
  }

  describe(request: DriverRequest): string {
    return request.kind;
  }
}
