/**
 * `vhost-vdpa dev list|show|add|del|config|stats|set|bind`.
 * @module
 */
import { decodeFeatures } from '../features';
import {
  bindDriver,
  describeBinding,
  resolveCharDev,
  type BusDriver,
  type DeviceBinding,
} from '../mgmt/sysfs';
import type { VdpaDeviceConfig, VdpaDeviceInfo } from '../mgmt/vdpa';
import { parseInteger } from '../mgmt/validate';
import { expectPositionals, JSON_OPTION, stringOption, takeKeywordPairs, UsageError } from './args';
import { withManager, type CliContext, type Command } from './context';
import { hex, keyValues, table, toJson, wrapWords } from './output';

function bindingOf(name: string, ctx: CliContext): DeviceBinding | undefined {
  try {
    return describeBinding(name, ctx.paths);
  } catch {
    return undefined; // Deleted meanwhile, or sysfs not mounted: the netlink answer still stands.
  }
}

function deviceRow(d: VdpaDeviceInfo, b: DeviceBinding | undefined): (string | number | undefined)[] {
  const produced = b?.charDev ?? (b?.kernelDevices !== undefined ? b.kernelDevices.join(',') : undefined);
  return [
    d.name,
    d.deviceClass,
    d.mgmtdev,
    d.vendorId,
    d.maxVqs,
    d.maxVqSize,
    b?.driver ?? undefined,
    produced,
  ];
}

const DEVICE_HEADERS = ['NAME', 'CLASS', 'MGMTDEV', 'VENDOR', 'VQS', 'VQ SIZE', 'DRIVER', 'DEVICE'];

export const devList: Command = {
  name: 'dev list',
  summary: 'list vdpa devices with their bus driver and char device',
  usage: 'vhost-vdpa dev list [--json]',
  details:
    'DEVICE is /dev/vhost-vdpa-N for devices bound to vhost_vdpa, or the disks/interfaces the kernel\n' +
    'created for devices bound to virtio_vdpa.',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    expectPositionals(args, []);
    const devices = await withManager(ctx, (m) => m.listDevices());
    const rows = devices.map((d) => ({ ...d, binding: bindingOf(d.name, ctx) }));
    if (args.options.json === true) ctx.stdout(toJson(rows) + '\n');
    else
      ctx.stdout(
        table(
          DEVICE_HEADERS,
          rows.map((r) => deviceRow(r, r.binding)),
        ),
      );
    return 0;
  },
};

function renderDevice(d: VdpaDeviceInfo, b: DeviceBinding | undefined): string {
  return keyValues([
    ['name', d.name],
    ['class', `${d.deviceClass} (virtio id ${d.deviceId})`],
    ['mgmtdev', d.mgmtdev],
    ['vendor id', d.vendorId],
    ['max vqs', d.maxVqs],
    ['max vq size', d.maxVqSize],
    ['min vq size', d.minVqSize],
    ['driver', b === undefined ? undefined : (b.driver ?? 'none')],
    ['driver override', b?.driverOverride ?? undefined],
    ['char device', b?.charDev],
    ['virtio device', b?.virtioDevice],
    ['kernel devices', b?.kernelDevices?.join(', ')],
  ]);
}

export const devShow: Command = {
  name: 'dev show',
  summary: 'show one device',
  usage: 'vhost-vdpa dev show NAME [--json]',
  details: 'Netlink attributes (class, queues, sizes) plus the sysfs binding (driver, char device).',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    const [name] = expectPositionals(args, ['NAME']) as [string];
    const device = await withManager(ctx, (m) => m.getDevice(name));
    const binding = bindingOf(name, ctx);
    ctx.stdout(
      args.options.json === true ? toJson({ ...device, binding }) + '\n' : renderDevice(device, binding),
    );
    return 0;
  },
};

function parseDriver(word: string | undefined): BusDriver {
  switch (word) {
    case 'vhost':
    case 'vhost_vdpa':
      return 'vhost_vdpa';
    case 'virtio':
    case 'virtio_vdpa':
      return 'virtio_vdpa';
    default:
      throw new UsageError(`driver must be vhost or virtio, not ${JSON.stringify(word ?? '')}`);
  }
}

function parseTimeout(value: string | undefined, fallback: number): number {
  return value === undefined ? fallback : parseInteger(value, '--timeout (ms)', 0, 600000);
}

export const devAdd: Command = {
  name: 'dev add',
  summary: 'create a device',
  usage:
    'vhost-vdpa dev add NAME --mgmtdev MGMTDEV [--mac MAC] [--mtu N] [--max-vqp N] [--device-features MASK]\n' +
    '                  [--driver vhost|virtio] [--timeout MS] [--json]\n' +
    'vhost-vdpa dev add name NAME mgmtdev MGMTDEV [mac MAC] [mtu N] [max_vqp N] [device_features MASK]   (iproute2 form)',
  details:
    'Creates NAME on MGMTDEV (see `mgmtdev list`). mac/mtu/max-vqp are net options; device-features\n' +
    "provisions a subset of the management device's supported features (e.g. 0x300000000).\n" +
    'The new device binds to whichever vdpa bus driver is loaded; --driver picks one. For vhost_vdpa the\n' +
    'command waits (up to --timeout ms, default 5000) for /dev/vhost-vdpa-N and prints it.',
  options: {
    mgmtdev: {
      type: 'string',
      value: 'MGMTDEV',
      description: 'the management device that creates it (required; see `mgmtdev list`)',
    },
    mac: {
      type: 'string',
      value: 'MAC',
      description: "net: the device's MAC address, e.g. 52:54:00:12:34:56",
    },
    mtu: { type: 'string', value: 'N', description: 'net: the MTU the device reports' },
    'max-vqp': { type: 'string', value: 'N', description: 'net: the most queue pairs the device offers' },
    'device-features': {
      type: 'string',
      value: 'MASK',
      default: 'all supported',
      description: "features to offer, a subset of the mgmtdev's (hex)",
    },
    driver: {
      type: 'string',
      value: 'vhost|virtio',
      default: 'the loaded bus driver',
      description: 'bind it to vhost_vdpa or virtio_vdpa',
    },
    timeout: {
      type: 'string',
      value: 'MS',
      default: '5000',
      description: 'how long to wait for the char (or kernel) device to appear',
    },
    ...JSON_OPTION,
  },
  async run(raw, ctx) {
    const args = takeKeywordPairs(raw, {
      name: 'name',
      mgmtdev: 'mgmtdev',
      mac: 'mac',
      mtu: 'mtu',
      max_vqp: 'max-vqp',
      device_features: 'device-features',
    });
    const keywordName = stringOption(args, 'name');
    const positionals = expectPositionals(args, keywordName === undefined ? ['NAME'] : []);
    const name = keywordName ?? (positionals[0] as string);
    const mgmtdev = stringOption(args, 'mgmtdev');
    if (mgmtdev === undefined)
      throw new UsageError('missing --mgmtdev MGMTDEV (see `vhost-vdpa mgmtdev list`)');
    const driverWord = stringOption(args, 'driver');
    const driver = driverWord === undefined ? undefined : parseDriver(driverWord);
    const timeoutMs = parseTimeout(stringOption(args, 'timeout'), 5000);
    const options = {
      name,
      mgmtdev,
      ...(stringOption(args, 'mac') === undefined ? {} : { mac: stringOption(args, 'mac') as string }),
      ...(stringOption(args, 'mtu') === undefined
        ? {}
        : { mtu: parseInteger(stringOption(args, 'mtu'), 'mtu', 0, 0xffff) }),
      ...(stringOption(args, 'max-vqp') === undefined
        ? {}
        : { maxVqPairs: parseInteger(stringOption(args, 'max-vqp'), 'max-vqp', 0, 0xffff) }),
      ...(stringOption(args, 'device-features') === undefined
        ? {}
        : { deviceFeatures: stringOption(args, 'device-features') as string }),
    };
    const device = await withManager(ctx, (m) => m.addDevice(options));
    let binding = bindingOf(name, ctx);
    if (driver !== undefined && binding?.driver !== driver) {
      binding = await bindDriver(name, driver, { paths: ctx.paths, timeoutMs });
    } else if ((binding?.driver ?? null) === 'vhost_vdpa') {
      await resolveCharDev(name, { paths: ctx.paths, timeoutMs });
      binding = bindingOf(name, ctx);
    }
    ctx.stdout(
      args.options.json === true ? toJson({ ...device, binding }) + '\n' : renderDevice(device, binding),
    );
    return 0;
  },
};

export const devDel: Command = {
  name: 'dev del',
  summary: 'delete a device',
  usage: 'vhost-vdpa dev del NAME [--json]',
  details:
    'Refuses (exit 5, EBUSY) when /dev/vhost-vdpa-N of NAME is open, naming the processes: the kernel\n' +
    'would otherwise wait, uninterruptibly, until they close it.',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    const [name] = expectPositionals(args, ['NAME']) as [string];
    await withManager(ctx, (m) => m.deleteDevice(name));
    ctx.stdout(args.options.json === true ? toJson({ deleted: name }) + '\n' : `deleted ${name}\n`);
    return 0;
  },
};

function renderConfig(c: VdpaDeviceConfig): string {
  const pairs: [string, string | number | boolean | undefined][] = [
    ['name', c.name],
    ['class', `${c.deviceClass} (virtio id ${c.deviceId})`],
  ];
  if (c.net !== undefined) {
    pairs.push(
      ['mac', c.net.mac],
      ['link', c.net.linkUp === undefined ? undefined : c.net.linkUp ? 'up' : 'down'],
      ['status', c.net.status],
      ['mtu', c.net.mtu],
      ['max vq pairs', c.net.maxVqPairs],
    );
  }
  if (c.blk !== undefined) {
    const b = c.blk;
    pairs.push(
      [
        'capacity',
        b.capacity === undefined ? undefined : `${b.capacity} sectors (${Number(b.capacity) / 2048} MiB)`,
      ],
      ['block size', b.blockSize],
      ['size max', b.sizeMax],
      ['seg max', b.segMax],
      ['queues', b.numQueues],
      ['physical block exp', b.physicalBlockExp],
      ['alignment offset', b.alignmentOffset],
      ['min io size', b.minIoSize],
      ['opt io size', b.optIoSize],
      ['max discard sectors', b.maxDiscardSectors],
      ['max discard seg', b.maxDiscardSeg],
      ['discard alignment', b.discardSectorAlignment],
      ['max write zeroes sectors', b.maxWriteZeroesSectors],
      ['max write zeroes seg', b.maxWriteZeroesSeg],
      ['read only', b.readOnly],
      ['flush', b.flush],
    );
  }
  pairs.push(
    ['device features', c.deviceFeatures === undefined ? undefined : hex(c.deviceFeatures)],
    [
      'negotiated features',
      c.negotiatedFeatures === undefined ? 'none (no driver has set FEATURES_OK)' : hex(c.negotiatedFeatures),
    ],
  );
  let out = keyValues(pairs);
  if (c.deviceFeatures !== undefined)
    out += `${wrapWords(decodeFeatures(c.deviceFeatures, c.deviceId), '  ')}\n`;
  return out;
}

export const devConfig: Command = {
  name: 'dev config',
  summary: "show a device's config as the kernel decodes it (all devices without NAME)",
  usage: 'vhost-vdpa dev config [NAME] [--json]',
  details:
    'net: MAC, link status, MTU, max VQ pairs; block: capacity, block size, size/seg max, queues, topology,\n' +
    'discard and write-zeroes limits, read-only, flush; plus the offered and negotiated feature bits.',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    const [name] = expectPositionals(args, ['NAME'], 1);
    const configs = await withManager(ctx, async (m) =>
      name === undefined ? m.listConfigs() : [await m.getConfig(name)],
    );
    if (args.options.json === true) ctx.stdout(toJson(name === undefined ? configs : configs[0]) + '\n');
    else ctx.stdout(configs.map(renderConfig).join('\n'));
    return 0;
  },
};

export const devStats: Command = {
  name: 'dev stats',
  summary: "show a queue's vendor statistics",
  usage: 'vhost-vdpa dev stats NAME [--queue N] [--json]   (also: dev stats NAME qidx N)',
  details:
    'Vendor counters of queue N (default 0) as the parent driver reports them (DEV_VSTATS_GET). The kernel\n' +
    'has them only for net devices whose parent implements them, and only after feature negotiation.',
  options: {
    queue: {
      type: 'string',
      value: 'N',
      default: '0',
      description: 'the queue index (iproute2 form: qidx N)',
    },
    ...JSON_OPTION,
  },
  async run(raw, ctx) {
    const args = takeKeywordPairs(raw, { qidx: 'queue' });
    const [name] = expectPositionals(args, ['NAME']) as [string];
    const queue = parseInteger(stringOption(args, 'queue') ?? '0', 'queue', 0, 0xffffffff);
    const stats = await withManager(ctx, (m) => m.getVendorStats(name, queue));
    if (args.options.json === true) ctx.stdout(toJson(stats) + '\n');
    else {
      ctx.stdout(
        keyValues([
          ['name', stats.name],
          ['queue', stats.queueIndex],
          ['max vq pairs', stats.maxVqPairs],
          [
            'negotiated features',
            stats.negotiatedFeatures === undefined ? undefined : hex(stats.negotiatedFeatures),
          ],
        ]) +
          table(
            ['COUNTER', 'VALUE'],
            stats.counters.map((c) => [c.name, c.value.toString()]),
          ),
      );
    }
    return 0;
  },
};

export const devSet: Command = {
  name: 'dev set',
  summary: "change a net device's MAC address",
  usage: 'vhost-vdpa dev set NAME --mac MAC [--json]',
  details: 'Uses DEV_ATTR_SET; the parent driver must support changing attributes after creation.',
  options: {
    mac: {
      type: 'string',
      value: 'MAC',
      description: 'the new MAC address (required), e.g. 52:54:00:12:34:56',
    },
    ...JSON_OPTION,
  },
  async run(raw, ctx) {
    const args = takeKeywordPairs(raw, { mac: 'mac' });
    const [name] = expectPositionals(args, ['NAME']) as [string];
    const mac = stringOption(args, 'mac');
    if (mac === undefined) throw new UsageError('missing --mac MAC');
    await withManager(ctx, (m) => m.setMac(name, mac));
    ctx.stdout(args.options.json === true ? toJson({ name, mac }) + '\n' : `${name}: mac ${mac}\n`);
    return 0;
  },
};

export const devBind: Command = {
  name: 'dev bind',
  summary: 'bind a device to vhost_vdpa (userspace, /dev/vhost-vdpa-N) or virtio_vdpa (kernel driver)',
  usage: 'vhost-vdpa dev bind NAME vhost|virtio [--timeout MS] [--json]',
  details:
    'Sets driver_override (so the choice survives re-probing), unbinds the current driver and binds the\n' +
    'new one. Refuses (exit 5) when /dev/vhost-vdpa-N is open. For vhost, waits for the char device.',
  options: {
    timeout: {
      type: 'string',
      value: 'MS',
      default: '5000',
      description: 'how long to wait for the char (or kernel) device to appear',
    },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    const [name, word] = expectPositionals(args, ['NAME', 'vhost|virtio']) as [string, string];
    const driver = parseDriver(word);
    const binding = await bindDriver(name, driver, {
      paths: ctx.paths,
      timeoutMs: parseTimeout(stringOption(args, 'timeout'), 5000),
    });
    if (args.options.json === true) ctx.stdout(toJson({ name, ...binding }) + '\n');
    else {
      ctx.stdout(
        keyValues([
          ['name', name],
          ['driver', binding.driver ?? 'none'],
          ['char device', binding.charDev],
          ['virtio device', binding.virtioDevice],
          ['kernel devices', binding.kernelDevices?.join(', ')],
        ]),
      );
    }
    return 0;
  },
};
