/**
 * `vhost-vdpa vduse blk`: serve a virtio-blk device from this process over
 * VDUSE (a file or a RAM disk), attach it to the vdpa bus, run until
 * SIGTERM/SIGINT, then detach and destroy it.
 * @module
 */
import { VdpaError } from '../errors';
import { parseInteger } from '../mgmt/validate';
import type { VduseBlockOptions } from '../vduse/blk-device';
import { JSON_OPTION, expectPositionals, listOption, stringOption, UsageError } from './args';
import type { Command } from './context';
import { exitCodeFor, toJson } from './output';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** `64M`, `1G`, `512K`, `1048576` (binary units; `MiB`/`MB` mean the same) → bytes. */
export function parseSize(text: string, what: string): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  const bytes =
    match === null ? NaN : Number(match[1]) * (UNITS[(match[2] as string).toUpperCase()] as number);
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % 512 !== 0) {
    throw new UsageError(
      `${what} must be a size that is a multiple of 512 bytes, such as 64M or 1G, not "${text}"`,
    );
  }
  return bytes;
}

export const vduseBlk: Command = {
  name: 'vduse blk',
  summary: 'serve a file or RAM disk as a virtio-blk device over VDUSE, until SIGTERM',
  usage:
    'vhost-vdpa vduse blk --name NAME (--file disk.img [--size 1G] | --ram SIZE [--fill zero|sectors]) [--queues N]\n' +
    '                     [--queue-size N] [--read-only] [--packed] [--serial ID] [--fault SPEC]... [--no-attach] [--json]',
  details:
    'Creates /dev/vduse/NAME (a worker thread serves it), then adds the vdpa device NAME (mgmtdev vduse), which\n' +
    'binds to vhost_vdpa (/dev/vhost-vdpa-N) or virtio_vdpa (a /dev/vdX), whichever is loaded. Prints what it\n' +
    'created and runs until SIGTERM or SIGINT, which delete the vdpa device and destroy the VDUSE device.\n' +
    'A device of the same name left by a daemon that was killed is destroyed first (and reported).\n' +
    'Faults (repeat --fault, or separate with commas): bad-id@N, not-head@N, dup@N, bad-len@N, ioerr-every:N,\n' +
    'stall@N, slow:MS, resize@N:BYTES — N counts requests from 1; each applied fault is logged on stderr\n' +
    '("request N queue Q: KIND: …"). See docs/vduse.md.',
  options: {
    name: { type: 'string', value: 'NAME', description: 'the VDUSE and vdpa device name (required)' },
    file: { type: 'string', value: 'PATH', description: 'serve this file or block device' },
    size: { type: 'string', value: 'SIZE', description: 'with --file: create (or grow) it to this size' },
    ram: { type: 'string', value: 'SIZE', description: 'serve a RAM disk of this size instead of a file' },
    fill: {
      type: 'string',
      value: 'zero|sectors',
      description: 'with --ram: initial content, zeros or each sector number in every 8 bytes',
    },
    queues: { type: 'string', value: 'N', default: '1', description: 'request queues (num_queues)' },
    'queue-size': { type: 'string', value: 'N', default: '256', description: 'largest ring per queue' },
    'read-only': { type: 'boolean', description: 'offer VIRTIO_BLK_F_RO; writes fail' },
    packed: { type: 'boolean', description: 'offer packed rings (VIRTIO_F_RING_PACKED)' },
    serial: { type: 'string', value: 'ID', description: 'the GET_ID answer (default: the name)' },
    fault: { type: 'string', value: 'SPEC', multiple: true, description: 'inject a fault (repeatable)' },
    'no-attach': { type: 'boolean', description: 'only create the VDUSE device; do not add the vdpa device' },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    expectPositionals(args, []);
    const name = stringOption(args, 'name');
    if (name === undefined) throw new UsageError('missing --name NAME');
    const file = stringOption(args, 'file');
    const ram = stringOption(args, 'ram');
    if ((file === undefined) === (ram === undefined))
      throw new UsageError('give exactly one of --file PATH and --ram SIZE');
    const size = stringOption(args, 'size');
    if (size !== undefined && file === undefined)
      throw new UsageError('--size goes with --file (a RAM disk takes --ram SIZE)');
    const fill = stringOption(args, 'fill');
    if (fill !== undefined && ram === undefined)
      throw new UsageError('--fill goes with --ram (a file keeps its own content)');
    if (fill !== undefined && fill !== 'zero' && fill !== 'sectors')
      throw new UsageError(`--fill must be zero or sectors, not "${fill}"`);
    const queues = stringOption(args, 'queues');
    const queueSize = stringOption(args, 'queue-size');
    const options: VduseBlockOptions = {
      name,
      readOnly: args.options['read-only'] === true,
      packed: args.options.packed === true,
      faults: listOption(args, 'fault'),
      replaceStale: true,
      attach: args.options['no-attach'] !== true,
    };
    if (file !== undefined) options.file = file;
    if (size !== undefined) options.fileSize = parseSize(size, '--size');
    if (ram !== undefined) options.ramBytes = parseSize(ram, '--ram');
    if (fill !== undefined) options.fill = fill;
    if (queues !== undefined) options.queues = parseInteger(queues, '--queues', 1, 64);
    if (queueSize !== undefined) options.queueSize = parseInteger(queueSize, '--queue-size', 4, 32768);
    const serial = stringOption(args, 'serial');
    if (serial !== undefined) options.serial = serial;
    const json = args.options.json === true;
    const say = (line: string): void => ctx.stderr(`vhost-vdpa vduse: ${line}\n`);

    // Loaded here, not at the top: the CLI loads every command module to dispatch (see run.ts).
    const { VduseBlockDevice } = await import('../vduse/blk-device');
    const device = await VduseBlockDevice.start(options);
    device.on('log', (line: string) => say(`${name}: ${line}`));
    if (device.staleRecovered !== undefined) say(device.staleRecovered);
    const summary = {
      name,
      vduse: `/dev/vduse/${name}`,
      vdpaDevice: options.attach === true ? name : null,
      chardev: device.chardev ?? null,
      store: device.store,
      capacity: device.capacity,
      features: device.features,
      queues: options.queues ?? 1,
      queueSize: options.queueSize ?? 256,
      ring: options.packed === true ? 'packed' : 'split',
      readOnly: options.readOnly === true,
      faults: options.faults ?? [],
      staleRecovered: device.staleRecovered ?? null,
      pid: process.pid,
    };
    // The handlers go in before the summary is printed: whoever reads it may signal at once (the lab test
    // does), and a SIGTERM that found no handler would kill the process with both devices left behind.
    const stopped = new Promise<VdpaError | undefined>((resolve) => {
      const stop = (signal: string): void => {
        process.off('SIGTERM', onTerm);
        process.off('SIGINT', onInt);
        say(`${signal}: detaching ${name}`);
        resolve(undefined);
      };
      const onTerm = (): void => stop('SIGTERM');
      const onInt = (): void => stop('SIGINT');
      process.on('SIGTERM', onTerm);
      process.on('SIGINT', onInt);
      device.on('error', (error: VdpaError) => {
        say(error.message);
        process.off('SIGTERM', onTerm);
        process.off('SIGINT', onInt);
        resolve(error);
      });
    });
    if (json) {
      ctx.stdout(toJson(summary) + '\n');
    } else {
      ctx.stdout(
        `created VDUSE device /dev/vduse/${name}: ${device.store}, ${summary.queues} queue(s) of ${summary.queueSize}, ` +
          `${summary.ring} rings${summary.readOnly ? ', read-only' : ''}, features ${device.features}\n` +
          (options.attach === true
            ? `added vdpa device ${name}${device.chardev === undefined ? ' (bound to virtio_vdpa or no driver)' : ` → ${device.chardev}`}\n`
            : `not attached: vhost-vdpa dev add ${name} mgmtdev vduse\n`) +
          'running until SIGTERM/SIGINT\n',
      );
    }

    const failure = await stopped;
    await device.stop();
    say(`${options.attach === true ? `deleted vdpa device ${name}, ` : ''}destroyed /dev/vduse/${name}`);
    return failure === undefined ? 0 : exitCodeFor(failure.code);
  },
};
