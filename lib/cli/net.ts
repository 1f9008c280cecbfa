/**
 * `vhost-vdpa net send|capture|loopback-test`: frames through a vhost-vdpa
 * net device with the userspace driver (NetDevice).
 * @module
 */
import { writeFileSync } from 'node:fs';
import { formatMac, parseMac } from '../net/mac';
import { expectPositionals, JSON_OPTION, stringOption, UsageError } from './args';
import { devicePath, intOption } from './device-arg';
import type { Command } from './context';
import { keyValues, toJson } from './output';

/** Source MAC of the frames the CLI builds (no zero byte: vdpa_sim_net's filter uses strncmp). */
const SOURCE_MAC = Uint8Array.of(0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99);
/** The MAC `loopback-test` gives the device, so its frames pass the filter. */
const LOOPBACK_MAC = '52:54:aa:bb:cc:01';
/** IEEE 802 local experimental EtherType. */
const ETHERTYPE = 0x88b5;

/** A frame of `size` bytes to `dst` carrying `seq`, its payload a function of `seq`. */
function buildFrame(seq: number, size: number, dst: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(size);
  frame.set(dst, 0);
  frame.set(SOURCE_MAC, 6);
  frame.writeUInt16BE(ETHERTYPE, 12);
  frame.writeUInt32BE(seq >>> 0, 14);
  let x = (seq * 2654435761 + 1) >>> 0 || 1;
  for (let i = 18; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    frame[i] = x & 0xff;
  }
  return frame;
}

/** Frame size of `seq` between min and max (a function of seq, so the receiver can check it). */
function sizeOf(seq: number, min: number, max: number): number {
  return min + ((Math.imul(seq + 1, 2246822519) >>> 0) % (max - min + 1));
}

export const netSend: Command = {
  name: 'net send',
  summary: 'send Ethernet frames through a vhost-vdpa net device',
  usage: 'vhost-vdpa net send DEV [--count N] [--size BYTES] [--dst MAC] [--json]',
  details:
    'DEV is /dev/vhost-vdpa-N or a vdpa device name. Sends N frames (default 1) of BYTES bytes (default 64,\n' +
    'at most MTU + 14) to MAC (default broadcast), EtherType 0x88b5, a sequence number at byte 14.',
  options: {
    count: { type: 'string', value: 'N', description: 'frames to send', default: '1' },
    size: { type: 'string', value: 'BYTES', description: 'frame size, 18 … MTU + 14', default: '64' },
    dst: {
      type: 'string',
      value: 'MAC',
      description: 'destination MAC address',
      default: 'ff:ff:ff:ff:ff:ff',
    },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    const [dev] = expectPositionals(args, ['DEV']);
    const count = intOption(args, 'count', 1, 1, 2 ** 32 - 1);
    const size = intOption(args, 'size', 64, 18, 65535);
    const dst = parseMac(stringOption(args, 'dst') ?? 'ff:ff:ff:ff:ff:ff', '--dst');
    const { NetDevice } = await import('../net/net-device'); // on use: see run.ts
    const nic = NetDevice.open(devicePath(dev as string, ctx));
    try {
      if (size > nic.maxFrameSize) {
        throw new UsageError(`--size ${size} is larger than the device's MTU + 14 (${nic.maxFrameSize})`);
      }
      const started = process.hrtime.bigint();
      for (let seq = 0; seq < count; ) {
        const batch: Buffer[] = [];
        for (; batch.length < 64 && seq < count; seq++) batch.push(buildFrame(seq, size, dst));
        await nic.sendBatch(batch);
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const result = {
        device: nic.path,
        sent: count,
        bytes: count * size,
        seconds,
        framesPerSecond: Math.round(count / seconds),
      };
      ctx.stdout(
        args.options.json === true
          ? toJson(result) + '\n'
          : `sent ${count} frame(s) of ${size} bytes to ${formatMac(dst)} in ${seconds.toFixed(3)} s\n`,
      );
      return 0;
    } finally {
      await nic.close();
    }
  },
};

/** The pcap file header (LINKTYPE_ETHERNET) and one record per frame. */
function pcap(frames: { frame: Buffer; time: number }[]): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65535, 16);
  header.writeUInt32LE(1, 20);
  const records = frames.map(({ frame, time }) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(Math.floor(time / 1000), 0);
    r.writeUInt32LE(Math.floor((time % 1000) * 1000), 4);
    r.writeUInt32LE(frame.length, 8);
    r.writeUInt32LE(frame.length, 12);
    return Buffer.concat([r, frame]);
  });
  return Buffer.concat([header, ...records]);
}

export const netCapture: Command = {
  name: 'net capture',
  summary: 'receive frames from a vhost-vdpa net device, print them or write a pcap file',
  usage: 'vhost-vdpa net capture DEV [--count N] [--write FILE.pcap] [--timeout MS] [--json]',
  details:
    'Receives N frames (default 10), or what arrives within MS milliseconds (default: no limit), and prints one\n' +
    'line per frame or writes them to FILE.pcap (Ethernet link type; Wireshark and tcpdump -r read it).',
  options: {
    count: { type: 'string', value: 'N', description: 'frames to receive', default: '10' },
    write: { type: 'string', value: 'FILE', description: 'write a pcap file instead of printing the frames' },
    timeout: { type: 'string', value: 'MS', description: 'stop after this long', default: 'no limit' },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    const [dev] = expectPositionals(args, ['DEV']);
    const count = intOption(args, 'count', 10, 1, 2 ** 32 - 1);
    const timeoutMs = intOption(args, 'timeout', 0, 0, 2 ** 31 - 1);
    const file = stringOption(args, 'write');
    const { NetDevice } = await import('../net/net-device'); // on use: see run.ts
    const nic = NetDevice.open(devicePath(dev as string, ctx));
    const captured: { frame: Buffer; time: number }[] = [];
    try {
      const frames = nic.frames();
      const timer = timeoutMs > 0 ? setTimeout(() => void frames.return?.(), timeoutMs) : undefined;
      for await (const frame of frames) {
        captured.push({ frame, time: Date.now() });
        if (captured.length === count) break;
      }
      if (timer !== undefined) clearTimeout(timer);
    } finally {
      await nic.close();
    }
    if (file !== undefined) writeFileSync(file, pcap(captured));
    const rows = captured.map(({ frame }) => ({
      length: frame.length,
      dst: formatMac(frame.subarray(0, 6)),
      src: formatMac(frame.subarray(6, 12)),
      ethertype: `0x${frame.readUInt16BE(12).toString(16).padStart(4, '0')}`,
    }));
    if (args.options.json === true) ctx.stdout(toJson({ captured: rows.length, file, frames: rows }) + '\n');
    else {
      for (const r of rows) ctx.stdout(`${r.src} > ${r.dst} type ${r.ethertype} length ${r.length}\n`);
      ctx.stdout(`${rows.length} frame(s) captured${file === undefined ? '' : ` to ${file}`}\n`);
    }
    return 0;
  },
};

export const netLoopbackTest: Command = {
  name: 'net loopback-test',
  summary: 'send frames and check each comes back byte for byte (loopback devices: vdpa_sim_net)',
  usage: 'vhost-vdpa net loopback-test DEV [--count N] [--window N] [--json]',
  details:
    `Sets the device MAC to ${LOOPBACK_MAC}, sends N frames (default 10000) of sizes 60 … MTU + 14 with\n` +
    'sequence numbers and payloads derived from them, at most WINDOW (default 128) unanswered, and checks\n' +
    'every frame that comes back. Reports loss, corruption and throughput; exit 1 if any frame was lost or\n' +
    'corrupt.',
  options: {
    count: { type: 'string', value: 'N', description: 'frames to send and check', default: '10000' },
    window: {
      type: 'string',
      value: 'N',
      description: 'most frames in flight (sent, not yet back)',
      default: '128',
    },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    const [dev] = expectPositionals(args, ['DEV']);
    const count = intOption(args, 'count', 10000, 1, 2 ** 32 - 1);
    const window = intOption(args, 'window', 128, 1, 65536);
    const { NetDevice } = await import('../net/net-device'); // on use: see run.ts
    const nic = NetDevice.open(devicePath(dev as string, ctx));
    let received = 0;
    let corrupt = 0;
    let bytes = 0;
    let seconds = 0;
    try {
      await nic.setMac(LOOPBACK_MAC);
      const dst = parseMac(LOOPBACK_MAC, 'mac');
      const max = nic.maxFrameSize;
      nic.on('frame', (frame: Buffer) => {
        const seq = frame.length >= 18 ? frame.readUInt32BE(14) : -1;
        if (seq < 0 || !frame.equals(buildFrame(seq, sizeOf(seq, 60, max), dst))) corrupt++;
        received++;
      });
      const started = process.hrtime.bigint();
      for (let seq = 0; seq < count; ) {
        const batch: Buffer[] = [];
        while (batch.length < 32 && seq < count && seq - received < window) {
          const frame = buildFrame(seq, sizeOf(seq, 60, max), dst);
          bytes += frame.length;
          batch.push(frame);
          seq++;
        }
        if (batch.length > 0) await nic.sendBatch(batch);
        else await new Promise((resolve) => setImmediate(resolve));
      }
      // Wait for the stragglers: until all are back or nothing arrives for 1 s.
      for (let last = -1, since = Date.now(); received < count && Date.now() - since < 1000; ) {
        if (received !== last) {
          last = received;
          since = Date.now();
        }
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      seconds = Number(process.hrtime.bigint() - started) / 1e9;
    } finally {
      await nic.close();
    }
    const result = {
      sent: count,
      received,
      lost: count - received,
      corrupt,
      seconds,
      framesPerSecond: Math.round(received / seconds),
      mbitPerSecond: Number(((bytes * 8) / seconds / 1e6).toFixed(1)),
    };
    ctx.stdout(
      args.options.json === true
        ? toJson(result) + '\n'
        : keyValues(Object.entries(result).map(([k, v]) => [k, typeof v === 'number' ? v : String(v)])),
    );
    return result.lost === 0 && corrupt === 0 ? 0 : 1;
  },
};
