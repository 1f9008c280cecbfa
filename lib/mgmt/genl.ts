/**
 * Netlink requests over a transport (sequence numbers, ACKs, dumps, timeouts)
 * and generic netlink on top (genlmsghdr, family resolution through nlctrl).
 * @module
 */
import { ErrorCodes, VdpaError } from '../errors';
import { errnoName } from './errno';
import type { NetlinkTransport } from './native-netlink';
import {
  AttributeSet,
  AttributeWriter,
  decodeDone,
  decodeError,
  decodeMessages,
  encodeMessage,
  NLM_F_ACK,
  NLM_F_DUMP,
  NLM_F_DUMP_INTR,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_NOOP,
  NLMSG_OVERRUN,
  type NetlinkErrorPayload,
  type NetlinkMessage,
} from './netlink';

/** A request the kernel refused: errno, plus the kernel's extended-ACK message verbatim. */
export class NetlinkRequestError extends VdpaError {
  /** The kernel's extended-ACK message, when it sent one. */
  readonly kernelMessage?: string;
  /** Type of the attribute the kernel reported missing (NLMSGERR_ATTR_MISS_TYPE). */
  readonly missingAttribute?: number;

  constructor(what: string, payload: NetlinkErrorPayload) {
    const code = errnoName(payload.errno);
    const detail = payload.message === undefined ? '' : `: kernel says "${payload.message}"`;
    super(`${what} failed with ${code}${detail}`, {
      code,
      errno: payload.errno,
      syscall: `netlink(${what})`,
    });
    this.name = 'VdpaError';
    if (payload.message !== undefined) this.kernelMessage = payload.message;
    if (payload.missingType !== undefined) this.missingAttribute = payload.missingType;
  }
}

/** Options of one request. */
export interface RequestOptions {
  /** Send with NLM_F_DUMP and collect every reply until NLMSG_DONE. */
  dump?: boolean;
  /** Milliseconds to wait for the answer (default: the client's). */
  timeoutMs?: number;
  /** Names the request in errors, e.g. 'vdpa DEV_GET'. */
  what: string;
  /**
   * Send from the libuv thread pool (the transport's `sendAsync`), for
   * requests whose kernel handler may sleep: the kernel runs a generic
   * netlink handler inside the sender's sendmsg, so a sleeping one (DEV_DEL of
   * a device whose char device is open) would freeze the event loop. The
   * answer timeout starts when the send returns, because the kernel has
   * queued its answer by then.
   */
  offLoop?: boolean;
}

interface Pending {
  what: string;
  dump: boolean;
  replies: NetlinkMessage[];
  interrupted: boolean;
  timer: NodeJS.Timeout | undefined;
  resolve(replies: NetlinkMessage[]): void;
  reject(error: Error): void;
}

/** Default time to wait for the kernel's answer. */
export const DEFAULT_TIMEOUT_MS = 5000;

/**
 * Sends netlink requests and matches answers by sequence number. Any number
 * of requests may be outstanding. The socket never keeps the process alive by
 * itself; a pending request's timer does.
 */
export class NetlinkClient {
  private nextSeq = (Math.random() * 0x7fffffff) >>> 0;
  private readonly pending = new Map<number, Pending>();
  private closed = false;

  constructor(
    private readonly transport: NetlinkTransport,
    private readonly defaultTimeoutMs: number = DEFAULT_TIMEOUT_MS,
  ) {
    transport.listen((error, datagrams, senders) => this.onDatagrams(error, datagrams, senders));
    transport.setRef(false);
  }

  /** Number of requests waiting for an answer. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Sends one request and resolves with its reply messages (for a dump: all
   * of them; otherwise those before the ACK). Rejects with a
   * NetlinkRequestError when the kernel answers with an error, ETIMEDOUT
   * when it does not answer in time, and ERR_CLOSED when the client closes.
   */
  request(type: number, payload: Buffer, options: RequestOptions): Promise<NetlinkMessage[]> {
    if (this.closed) {
      return Promise.reject(
        new VdpaError(`${options.what}: the netlink client is closed`, { code: ErrorCodes.CLOSED }),
      );
    }
    const seq = this.nextSeq;
    this.nextSeq = (this.nextSeq + 1) >>> 0 || 1;
    const dump = options.dump === true;
    const flags = NLM_F_REQUEST | NLM_F_ACK | (dump ? NLM_F_DUMP : 0);
    const timeoutMs = options.timeoutMs ?? this.defaultTimeoutMs;
    const datagram = encodeMessage(type, flags, seq, this.transport.portId, payload);
    return new Promise<NetlinkMessage[]>((resolve, reject) => {
      const entry: Pending = {
        what: options.what,
        dump,
        replies: [],
        interrupted: false,
        timer: undefined,
        resolve,
        reject,
      };
      const startTimer = (): void => {
        entry.timer = setTimeout(() => {
          this.pending.delete(seq);
          reject(
            new VdpaError(
              `${options.what}: the kernel did not answer within ${timeoutMs} ms; retry, and check dmesg if it persists`,
              { code: ErrorCodes.TIMEOUT, syscall: `netlink(${options.what})` },
            ),
          );
        }, timeoutMs);
      };
      this.pending.set(seq, entry);
      const sendAsync = options.offLoop === true ? this.transport.sendAsync : undefined;
      if (sendAsync !== undefined) {
        sendAsync.call(this.transport, datagram).then(
          () => {
            // The answer may already have been read (and the request settled).
            if (this.pending.get(seq) === entry) startTimer();
          },
          (error: unknown) => this.settle(seq, error instanceof Error ? error : new Error(String(error))),
        );
        return;
      }
      startTimer();
      try {
        this.transport.send(datagram);
      } catch (error) {
        this.settle(seq, error instanceof Error ? error : new Error(String(error)));
      }
    });
  }

  /** Rejects every pending request with ERR_CLOSED and closes the transport. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const seq of [...this.pending.keys()]) {
      this.settle(seq, new VdpaError('the netlink client was closed', { code: ErrorCodes.CLOSED }));
    }
    this.transport.close();
  }

  private settle(seq: number, outcome: Error | NetlinkMessage[]): void {
    const entry = this.pending.get(seq);
    if (entry === undefined) return;
    this.pending.delete(seq);
    clearTimeout(entry.timer);
    if (outcome instanceof Error) entry.reject(outcome);
    else entry.resolve(outcome);
  }

  private onDatagrams(error: Error | undefined, datagrams: Buffer[], senders: number[]): void {
    datagrams.forEach((datagram, i) => {
      // Only the kernel (port 0) answers our requests; anything else is not ours.
      if (senders[i] !== 0) return;
      let messages: NetlinkMessage[];
      try {
        messages = decodeMessages(datagram);
      } catch (decodeError) {
        this.failAll(decodeError as Error);
        return;
      }
      for (const message of messages) this.onMessage(message);
    });
    if (error !== undefined) {
      // ENOBUFS: the receive queue overflowed and answers were lost.
      this.failAll(error);
    }
  }

  private failAll(error: Error): void {
    for (const seq of [...this.pending.keys()]) this.settle(seq, error);
  }

  private onMessage(message: NetlinkMessage): void {
    const entry = this.pending.get(message.seq);
    if (entry === undefined || message.type === NLMSG_NOOP) return;
    if ((message.flags & NLM_F_DUMP_INTR) !== 0) entry.interrupted = true;
    if (message.type === NLMSG_ERROR) {
      const payload = decodeError(message);
      if (payload.errno !== 0) this.settle(message.seq, new NetlinkRequestError(entry.what, payload));
      else if (!entry.dump) this.settle(message.seq, entry.replies);
      return;
    }
    if (message.type === NLMSG_DONE && entry.dump) {
      const payload = decodeDone(message);
      if (payload.errno !== 0) this.settle(message.seq, new NetlinkRequestError(entry.what, payload));
      else if (entry.interrupted) {
        this.settle(
          message.seq,
          new VdpaError(`${entry.what}: the list changed while it was being read (NLM_F_DUMP_INTR); retry`, {
            code: 'EAGAIN',
            syscall: `netlink(${entry.what})`,
          }),
        );
      } else this.settle(message.seq, entry.replies);
      return;
    }
    if (message.type === NLMSG_OVERRUN) {
      this.settle(message.seq, new VdpaError(`${entry.what}: netlink overrun`, { code: 'ENOBUFS' }));
      return;
    }
    entry.replies.push(message);
  }
}

/** sizeof(struct genlmsghdr). */
export const GENL_HDRLEN = 4;
/** The id of the generic netlink controller family (nlctrl). */
export const GENL_ID_CTRL = 0x10;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_ATTR_FAMILY_ID = 1;
export const CTRL_ATTR_FAMILY_NAME = 2;
export const CTRL_ATTR_VERSION = 3;
export const CTRL_ATTR_HDRSIZE = 4;
export const CTRL_ATTR_MAXATTR = 5;
export const CTRL_ATTR_OPS = 6;
export const CTRL_ATTR_OP_ID = 1;

/** One generic netlink reply. */
export interface GenlMessage {
  /** genlmsghdr.cmd (parse by attributes: vdpa answers GET with *_NEW). */
  cmd: number;
  version: number;
  attrs: AttributeSet;
}

/** Encodes genlmsghdr + attributes. */
export function encodeGenl(cmd: number, version: number, attrs: Buffer): Buffer {
  const header = Buffer.alloc(GENL_HDRLEN);
  header.writeUInt8(cmd, 0);
  header.writeUInt8(version, 1);
  return Buffer.concat([header, attrs]);
}

/** Decodes the payload of a generic netlink message. */
export function decodeGenl(message: NetlinkMessage): GenlMessage {
  if (message.payload.length < GENL_HDRLEN) {
    throw new VdpaError(
      `malformed netlink data: generic netlink payload of ${message.payload.length} bytes`,
      {
        code: ErrorCodes.NETLINK_PROTOCOL,
      },
    );
  }
  return {
    cmd: message.payload.readUInt8(0),
    version: message.payload.readUInt8(1),
    attrs: new AttributeSet(message.payload.subarray(GENL_HDRLEN)),
  };
}

/** What nlctrl says about a family. */
export interface GenlFamily {
  name: string;
  id: number;
  version: number;
  maxAttr: number;
  /** The command numbers the running kernel implements. */
  commands: number[];
}

/** A generic netlink client: family resolution plus typed requests. */
export class GenericNetlink {
  readonly client: NetlinkClient;

  constructor(transport: NetlinkTransport, timeoutMs: number = DEFAULT_TIMEOUT_MS) {
    this.client = new NetlinkClient(transport, timeoutMs);
  }

  /**
   * Resolves a family by name (CTRL_CMD_GETFAMILY). A missing family rejects
   * with code ENOENT (the raw kernel answer; callers know what it means).
   */
  async resolveFamily(name: string): Promise<GenlFamily> {
    const attrs = new AttributeWriter().string(CTRL_ATTR_FAMILY_NAME, name).toBuffer();
    const [reply] = await this.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, attrs, {
      what: `nlctrl GETFAMILY ${name}`,
    });
    if (reply === undefined) {
      throw new VdpaError(`nlctrl GETFAMILY ${name}: the kernel sent no reply`, {
        code: ErrorCodes.NETLINK_PROTOCOL,
      });
    }
    const id = reply.attrs.u16(CTRL_ATTR_FAMILY_ID);
    if (id === undefined) {
      throw new VdpaError(`nlctrl GETFAMILY ${name}: reply without a family id`, {
        code: ErrorCodes.NETLINK_PROTOCOL,
      });
    }
    const commands: number[] = [];
    const ops = reply.attrs.nested(CTRL_ATTR_OPS);
    for (const op of ops?.list ?? []) {
      const cmd = new AttributeSet(op.data).u32(CTRL_ATTR_OP_ID);
      if (cmd !== undefined) commands.push(cmd);
    }
    return {
      name: reply.attrs.string(CTRL_ATTR_FAMILY_NAME) ?? name,
      id,
      version: reply.attrs.u32(CTRL_ATTR_VERSION) ?? 0,
      maxAttr: reply.attrs.u32(CTRL_ATTR_MAXATTR) ?? 0,
      commands,
    };
  }

  /** Sends a generic netlink request and decodes the replies. */
  async request(
    familyId: number,
    cmd: number,
    version: number,
    attrs: Buffer,
    options: RequestOptions,
  ): Promise<GenlMessage[]> {
    const replies = await this.client.request(familyId, encodeGenl(cmd, version, attrs), options);
    return replies.filter((m) => m.type === familyId).map(decodeGenl);
  }

  close(): void {
    this.client.close();
  }
}
