/**
 * Netlink message and attribute codec (`linux/netlink.h`), pure TypeScript:
 * nlmsghdr framing, TLV attributes with 4-byte alignment, NLMSG_ERROR
 * payloads with extended-ACK TLVs. Integers are in host byte order, as the
 * kernel reads them.
 * @module
 */
import { endianness } from 'node:os';

import { ErrorCodes, VdpaError } from '../errors';

/** `NETLINK_GENERIC`: the protocol number of generic netlink sockets. */
export const NETLINK_GENERIC = 16;
/** `SOL_NETLINK`: the setsockopt level of netlink options. */
export const SOL_NETLINK = 270;
/** `NETLINK_CAP_ACK`: errors echo only the request header, not its payload. */
export const NETLINK_CAP_ACK = 10;
/** `NETLINK_EXT_ACK`: errors carry TLVs such as the kernel's message string. */
export const NETLINK_EXT_ACK = 11;

export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP_INTR = 0x10;
export const NLM_F_ROOT = 0x100;
export const NLM_F_MATCH = 0x200;
export const NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH;
/** On NLMSG_ERROR: the echoed request was cut to its header (NETLINK_CAP_ACK). */
export const NLM_F_CAPPED = 0x100;
/** On NLMSG_ERROR: extended-ACK TLVs follow the echoed request. */
export const NLM_F_ACK_TLVS = 0x200;

export const NLMSGERR_ATTR_MSG = 1;
export const NLMSGERR_ATTR_OFFS = 2;
export const NLMSGERR_ATTR_COOKIE = 3;
export const NLMSGERR_ATTR_POLICY = 4;
export const NLMSGERR_ATTR_MISS_TYPE = 5;
export const NLMSGERR_ATTR_MISS_NEST = 6;

export const NLA_F_NESTED = 1 << 15;
export const NLA_F_NET_BYTEORDER = 1 << 14;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

/** sizeof(struct nlmsghdr). */
export const NLMSG_HDRLEN = 16;
/** sizeof(struct nlattr). */
export const NLA_HDRLEN = 4;

const LITTLE = endianness() === 'LE';

/** Rounds up to the 4-byte netlink alignment (NLMSG_ALIGN / NLA_ALIGN). */
export function align4(n: number): number {
  return (n + 3) & ~3;
}

function protocolError(what: string): VdpaError {
  return new VdpaError(`malformed netlink data: ${what}`, { code: ErrorCodes.NETLINK_PROTOCOL });
}

/** Host-order integer readers and writers over a Buffer. */
export const hostOrder = {
  u16: (b: Buffer, o: number): number => (LITTLE ? b.readUInt16LE(o) : b.readUInt16BE(o)),
  u32: (b: Buffer, o: number): number => (LITTLE ? b.readUInt32LE(o) : b.readUInt32BE(o)),
  i32: (b: Buffer, o: number): number => (LITTLE ? b.readInt32LE(o) : b.readInt32BE(o)),
  u64: (b: Buffer, o: number): bigint => (LITTLE ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)),
  w16: (b: Buffer, v: number, o: number): number => (LITTLE ? b.writeUInt16LE(v, o) : b.writeUInt16BE(v, o)),
  w32: (b: Buffer, v: number, o: number): number => (LITTLE ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o)),
  w64: (b: Buffer, v: bigint, o: number): number =>
    LITTLE ? b.writeBigUInt64LE(v, o) : b.writeBigUInt64BE(v, o),
};

/** One decoded netlink message. */
export interface NetlinkMessage {
  /** nlmsg_type: NLMSG_ERROR, NLMSG_DONE or a family id. */
  type: number;
  /** nlmsg_flags. */
  flags: number;
  /** nlmsg_seq: the sequence number of the request this answers. */
  seq: number;
  /** nlmsg_pid: the port id it was addressed to. */
  portId: number;
  /** The bytes after the 16-byte header (a view, not a copy). */
  payload: Buffer;
}

/** Encodes one message: nlmsghdr + payload, padded to 4 bytes. */
export function encodeMessage(
  type: number,
  flags: number,
  seq: number,
  portId: number,
  payload: Buffer,
): Buffer {
  const length = NLMSG_HDRLEN + payload.length;
  const out = Buffer.alloc(align4(length));
  hostOrder.w32(out, length, 0);
  hostOrder.w16(out, type, 4);
  hostOrder.w16(out, flags, 6);
  hostOrder.w32(out, seq >>> 0, 8);
  hostOrder.w32(out, portId >>> 0, 12);
  payload.copy(out, NLMSG_HDRLEN);
  return out;
}

/**
 * Splits a datagram into messages. Throws ERR_NETLINK_PROTOCOL when a
 * header's length runs past the datagram or is shorter than a header.
 */
export function decodeMessages(datagram: Buffer): NetlinkMessage[] {
  const messages: NetlinkMessage[] = [];
  let offset = 0;
  while (offset + NLMSG_HDRLEN <= datagram.length) {
    const length = hostOrder.u32(datagram, offset);
    if (length < NLMSG_HDRLEN || offset + length > datagram.length) {
      throw protocolError(
        `message length ${length} at offset ${offset} of a ${datagram.length}-byte datagram`,
      );
    }
    messages.push({
      type: hostOrder.u16(datagram, offset + 4),
      flags: hostOrder.u16(datagram, offset + 6),
      seq: hostOrder.u32(datagram, offset + 8),
      portId: hostOrder.u32(datagram, offset + 12),
      payload: datagram.subarray(offset + NLMSG_HDRLEN, offset + length),
    });
    offset += align4(length);
  }
  if (offset < datagram.length && datagram.length - offset >= NLMSG_HDRLEN) {
    throw protocolError(`${datagram.length - offset} trailing bytes`);
  }
  return messages;
}

/** One attribute as found on the wire. */
export interface NetlinkAttribute {
  /** The type without the NESTED/NET_BYTEORDER flag bits. */
  type: number;
  /** NLA_F_NESTED was set. */
  nested: boolean;
  /** The attribute's value bytes (a view). */
  data: Buffer;
}

/** Splits a TLV area into attributes, validating every length. */
export function decodeAttributes(area: Buffer): NetlinkAttribute[] {
  const attributes: NetlinkAttribute[] = [];
  let offset = 0;
  while (offset + NLA_HDRLEN <= area.length) {
    const length = hostOrder.u16(area, offset);
    const rawType = hostOrder.u16(area, offset + 2);
    if (length < NLA_HDRLEN || offset + length > area.length) {
      throw protocolError(`attribute length ${length} at offset ${offset} of a ${area.length}-byte area`);
    }
    attributes.push({
      type: rawType & NLA_TYPE_MASK,
      nested: (rawType & NLA_F_NESTED) !== 0,
      data: area.subarray(offset + NLA_HDRLEN, offset + length),
    });
    offset += align4(length);
  }
  return attributes;
}

/**
 * Typed, bounds-checked access to decoded attributes. Getters return
 * `undefined` for an absent attribute and throw ERR_NETLINK_PROTOCOL for one
 * that is too short for its type.
 */
export class AttributeSet {
  readonly list: readonly NetlinkAttribute[];

  constructor(area: Buffer | readonly NetlinkAttribute[]) {
    this.list = Buffer.isBuffer(area) ? decodeAttributes(area) : area;
  }

  /** The first attribute of this type. */
  get(type: number): NetlinkAttribute | undefined {
    return this.list.find((a) => a.type === type);
  }

  has(type: number): boolean {
    return this.get(type) !== undefined;
  }

  private sized(type: number, size: number, what: string): Buffer | undefined {
    const attribute = this.get(type);
    if (attribute === undefined) return undefined;
    if (attribute.data.length < size) {
      throw protocolError(`attribute ${type} has ${attribute.data.length} bytes, a ${what} needs ${size}`);
    }
    return attribute.data;
  }

  u8(type: number): number | undefined {
    return this.sized(type, 1, 'u8')?.readUInt8(0);
  }

  u16(type: number): number | undefined {
    const d = this.sized(type, 2, 'u16');
    return d === undefined ? undefined : hostOrder.u16(d, 0);
  }

  u32(type: number): number | undefined {
    const d = this.sized(type, 4, 'u32');
    return d === undefined ? undefined : hostOrder.u32(d, 0);
  }

  u64(type: number): bigint | undefined {
    const d = this.sized(type, 8, 'u64');
    return d === undefined ? undefined : hostOrder.u64(d, 0);
  }

  /**
   * An unsigned integer of whatever width the kernel sent (1, 2, 4 or 8
   * bytes). For attributes whose documented and emitted widths differ
   * (VDPA_ATTR_DEV_NET_STATUS is documented u8, sent as u16).
   */
  uint(type: number): number | undefined {
    const attribute = this.get(type);
    if (attribute === undefined) return undefined;
    switch (attribute.data.length) {
      case 1:
        return attribute.data.readUInt8(0);
      case 2:
        return hostOrder.u16(attribute.data, 0);
      case 4:
        return hostOrder.u32(attribute.data, 0);
      case 8:
        return Number(hostOrder.u64(attribute.data, 0));
      default:
        throw protocolError(`attribute ${type} has ${attribute.data.length} bytes, not an integer width`);
    }
  }

  /** A string, without the trailing NUL (and anything after it). */
  string(type: number): string | undefined {
    const attribute = this.get(type);
    if (attribute === undefined) return undefined;
    const nul = attribute.data.indexOf(0);
    return attribute.data.toString('utf8', 0, nul < 0 ? attribute.data.length : nul);
  }

  binary(type: number): Buffer | undefined {
    return this.get(type)?.data;
  }

  /** The attributes inside a nested attribute. */
  nested(type: number): AttributeSet | undefined {
    const attribute = this.get(type);
    return attribute === undefined ? undefined : new AttributeSet(attribute.data);
  }
}

/** Builds a TLV attribute area. Every put returns `this` for chaining. */
export class AttributeWriter {
  private readonly parts: Buffer[] = [];

  /** Appends an attribute with raw value bytes. */
  put(type: number, data: Buffer): this {
    if (NLA_HDRLEN + data.length > 0xffff) {
      throw new VdpaError(`netlink attribute ${type} is too long (${data.length} bytes)`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const out = Buffer.alloc(align4(NLA_HDRLEN + data.length));
    hostOrder.w16(out, NLA_HDRLEN + data.length, 0);
    hostOrder.w16(out, type, 2);
    data.copy(out, NLA_HDRLEN);
    this.parts.push(out);
    return this;
  }

  u8(type: number, value: number): this {
    return this.put(type, Buffer.from([value & 0xff]));
  }

  u16(type: number, value: number): this {
    const b = Buffer.alloc(2);
    hostOrder.w16(b, value, 0);
    return this.put(type, b);
  }

  u32(type: number, value: number): this {
    const b = Buffer.alloc(4);
    hostOrder.w32(b, value >>> 0, 0);
    return this.put(type, b);
  }

  u64(type: number, value: bigint): this {
    const b = Buffer.alloc(8);
    hostOrder.w64(b, value, 0);
    return this.put(type, b);
  }

  /** A NUL-terminated string (what NLA_NUL_STRING requires and NLA_STRING accepts). */
  string(type: number, value: string): this {
    return this.put(type, Buffer.concat([Buffer.from(value, 'utf8'), Buffer.alloc(1)]));
  }

  /** A nested attribute built by `build`. */
  nested(type: number, build: (writer: AttributeWriter) => void): this {
    const inner = new AttributeWriter();
    build(inner);
    return this.put(type | NLA_F_NESTED, inner.toBuffer());
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** What an NLMSG_ERROR (or an NLMSG_DONE ending a failed dump) says. */
export interface NetlinkErrorPayload {
  /** 0 for an ACK, else the positive errno. */
  errno: number;
  /** The kernel's extended-ACK message, verbatim, when it gave one. */
  message?: string;
  /** Byte offset of the offending attribute in the request (NLMSGERR_ATTR_OFFS). */
  offset?: number;
  /** Type of a required attribute that was missing (NLMSGERR_ATTR_MISS_TYPE). */
  missingType?: number;
}

/**
 * Decodes an NLMSG_ERROR payload: `int error`, the echoed request (only its
 * header when NLM_F_CAPPED) and, with NLM_F_ACK_TLVS, extended-ACK TLVs.
 */
export function decodeError(message: NetlinkMessage): NetlinkErrorPayload {
  const payload = message.payload;
  if (payload.length < 4) throw protocolError(`NLMSG_ERROR payload of ${payload.length} bytes`);
  const result: NetlinkErrorPayload = { errno: Math.abs(hostOrder.i32(payload, 0)) };
  if ((message.flags & NLM_F_ACK_TLVS) === 0) return result;
  let tlvOffset = 4 + NLMSG_HDRLEN;
  if ((message.flags & NLM_F_CAPPED) === 0) {
    if (payload.length < 4 + NLMSG_HDRLEN) throw protocolError('NLMSG_ERROR without the echoed header');
    tlvOffset = 4 + align4(hostOrder.u32(payload, 4));
  }
  if (tlvOffset > payload.length) throw protocolError('extended ACK TLVs past the end of NLMSG_ERROR');
  return { ...result, ...decodeExtack(payload.subarray(tlvOffset)) };
}

/** Decodes the extended-ACK TLVs that end an NLMSG_DONE of a failed dump (after `int error`). */
export function decodeDone(message: NetlinkMessage): NetlinkErrorPayload {
  if (message.payload.length < 4) return { errno: 0 };
  const result: NetlinkErrorPayload = { errno: Math.abs(hostOrder.i32(message.payload, 0)) };
  if ((message.flags & NLM_F_ACK_TLVS) === 0) return result;
  return { ...result, ...decodeExtack(message.payload.subarray(4)) };
}

function decodeExtack(area: Buffer): Omit<NetlinkErrorPayload, 'errno'> {
  const tlvs = new AttributeSet(area);
  const out: Omit<NetlinkErrorPayload, 'errno'> = {};
  const text = tlvs.string(NLMSGERR_ATTR_MSG);
  if (text !== undefined && text.length > 0) out.message = text;
  const offset = tlvs.u32(NLMSGERR_ATTR_OFFS);
  if (offset !== undefined) out.offset = offset;
  const missing = tlvs.u32(NLMSGERR_ATTR_MISS_TYPE);
  if (missing !== undefined) out.missingType = missing;
  return out;
}
