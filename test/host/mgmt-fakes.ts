/**
 * Test doubles for the management layers: a fake kernel behind the netlink
 * transport interface, and a fake sysfs tree in a temporary directory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import type { NetlinkTransport } from '../../lib/mgmt/native-netlink';
import {
  AttributeSet,
  AttributeWriter,
  decodeMessages,
  encodeMessage,
  hostOrder,
  NLM_F_ACK_TLVS,
  NLM_F_CAPPED,
  NLM_F_MULTI,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSGERR_ATTR_MSG,
  type NetlinkMessage,
} from '../../lib/mgmt/netlink';
import {
  CTRL_ATTR_FAMILY_ID,
  CTRL_ATTR_FAMILY_NAME,
  CTRL_ATTR_OPS,
  CTRL_ATTR_OP_ID,
  GENL_ID_CTRL,
} from '../../lib/mgmt/genl';
import type { SystemPaths } from '../../lib/mgmt/sysfs';

/** A decoded request as the fake kernel sees it. */
export interface FakeRequest {
  message: NetlinkMessage;
  cmd: number;
  attrs: AttributeSet;
}

/** What a handler answers: replies (genl cmd + attrs), an error, or nothing (a lost answer). */
export type FakeAnswer =
  | { replies: { cmd: number; attrs: AttributeWriter }[]; dumpInterrupted?: boolean }
  | { errno: number; extack?: string }
  | { silent: true };

export const FAKE_VDPA_FAMILY = 0x20;

/** Encodes an NLMSG_ERROR the way the kernel does with NETLINK_CAP_ACK and extended ACKs. */
export function errorMessage(request: NetlinkMessage, errno: number, extack?: string): Buffer {
  const header = Buffer.alloc(16);
  hostOrder.w32(header, 16 + request.payload.length, 0);
  hostOrder.w16(header, request.type, 4);
  const tlvs =
    extack === undefined
      ? Buffer.alloc(0)
      : new AttributeWriter().string(NLMSGERR_ATTR_MSG, extack).toBuffer();
  const code = Buffer.alloc(4);
  hostOrder.w32(code, -errno >>> 0, 0);
  const flags = NLM_F_CAPPED | (extack === undefined ? 0 : NLM_F_ACK_TLVS);
  return encodeMessage(NLMSG_ERROR, flags, request.seq, request.portId, Buffer.concat([code, header, tlvs]));
}

function genl(cmd: number, attrs: AttributeWriter): Buffer {
  return Buffer.concat([Buffer.from([cmd, 1, 0, 0]), attrs.toBuffer()]);
}

/**
 * A kernel behind NetlinkTransport. `handle` answers generic requests to the
 * fake vdpa family; nlctrl GETFAMILY "vdpa" is answered unless `vdpaMissing`.
 */
export class FakeKernel implements NetlinkTransport {
  readonly portId = 4242;
  readonly requests: FakeRequest[] = [];
  vdpaMissing = false;
  /** Commands reported in the family's ops (empty = all). */
  commands: number[] = [];
  closed = false;
  referenced = true;
  private deliver: ((error: Error | undefined, datagrams: Buffer[], senders: number[]) => void) | undefined;

  constructor(public handle: (request: FakeRequest) => FakeAnswer = () => ({ replies: [] })) {}

  listen(onDatagrams: (error: Error | undefined, datagrams: Buffer[], senders: number[]) => void): void {
    this.deliver = onDatagrams;
  }

  setRef(referenced: boolean): void {
    this.referenced = referenced;
  }

  close(): void {
    this.closed = true;
  }

  /** Delivers raw datagrams as if received (asynchronously, like uv_poll). */
  inject(datagrams: Buffer[], senders: number[] = datagrams.map(() => 0), error?: Error): void {
    setImmediate(() => this.deliver?.(error, datagrams, senders));
  }

  send(datagram: Buffer): void {
    for (const message of decodeMessages(datagram)) {
      const attrs = new AttributeSet(message.payload.subarray(4));
      const request: FakeRequest = { message, cmd: message.payload.readUInt8(0), attrs };
      this.requests.push(request);
      if (message.type === GENL_ID_CTRL) {
        this.answerCtrl(request);
        continue;
      }
      const answer = this.handle(request);
      if ('silent' in answer) continue;
      if ('errno' in answer) {
        this.inject([errorMessage(message, answer.errno, answer.extack)]);
        continue;
      }
      const dump = (message.flags & 0x300) === 0x300;
      const out = answer.replies.map((r) =>
        encodeMessage(
          FAKE_VDPA_FAMILY,
          (dump ? NLM_F_MULTI : 0) | (answer.dumpInterrupted === true ? 0x10 : 0),
          message.seq,
          this.portId,
          genl(r.cmd, r.attrs),
        ),
      );
      if (dump) out.push(encodeMessage(NLMSG_DONE, NLM_F_MULTI, message.seq, this.portId, Buffer.alloc(4)));
      else out.push(errorMessage(message, 0));
      this.inject([Buffer.concat(out)]);
    }
  }

  private answerCtrl(request: FakeRequest): void {
    const name = request.attrs.string(CTRL_ATTR_FAMILY_NAME);
    if (name !== 'vdpa' || this.vdpaMissing) {
      this.inject([errorMessage(request.message, 2)]);
      return;
    }
    const attrs = new AttributeWriter()
      .string(CTRL_ATTR_FAMILY_NAME, 'vdpa')
      .u16(CTRL_ATTR_FAMILY_ID, FAKE_VDPA_FAMILY)
      .nested(CTRL_ATTR_OPS, (ops) => {
        this.commands.forEach((cmd, i) => ops.nested(i + 1, (op) => op.u32(CTRL_ATTR_OP_ID, cmd)));
      });
    const reply = encodeMessage(GENL_ID_CTRL, 0, request.message.seq, this.portId, genl(1, attrs));
    this.inject([Buffer.concat([reply, errorMessage(request.message, 0)])]);
  }
}

/** A temporary tree with sys/bus/vdpa, dev and proc, removed by `cleanup()`. */
export class FakeSysfs {
  readonly root = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-sysfs-'));
  readonly paths: SystemPaths = {
    sys: path.join(this.root, 'sys'),
    dev: path.join(this.root, 'dev'),
    proc: path.join(this.root, 'proc'),
  };

  constructor() {
    for (const dir of ['sys/bus/vdpa/devices', 'sys/bus/vdpa/drivers', 'dev', 'proc']) {
      fs.mkdirSync(path.join(this.root, dir), { recursive: true });
    }
  }

  addDriver(driver: string): void {
    fs.mkdirSync(path.join(this.paths.sys, 'bus/vdpa/drivers', driver), { recursive: true });
  }

  /** A device, optionally bound to `driver`, with optionally a vhost-vdpa-N entry and /dev node (a regular file). */
  addDevice(name: string, options: { driver?: string; charDev?: string; devNode?: boolean } = {}): string {
    const dir = path.join(this.paths.sys, 'bus/vdpa/devices', name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'driver_override'), '(null)\n');
    if (options.driver !== undefined) {
      this.addDriver(options.driver);
      fs.symlinkSync(path.join(this.paths.sys, 'bus/vdpa/drivers', options.driver), path.join(dir, 'driver'));
    }
    if (options.charDev !== undefined) {
      fs.mkdirSync(path.join(dir, options.charDev));
      if (options.devNode !== false) fs.writeFileSync(path.join(this.paths.dev, options.charDev), '');
    }
    return dir;
  }

  cleanup(): void {
    fs.rmSync(this.root, { recursive: true, force: true });
  }
}
