/**
 * `vhost-vdpa info [PATH|NAME…]`: everything the device API can learn about
 * a vhost-vdpa device, plus what netlink and sysfs say about it.
 * @module
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { DeviceCapabilities, VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { decodeBackendFeatures, decodeFeatures, decodeStatus } from '../features';
import { describeBinding, describeHolders, findHolders, listBusDevices, resolveCharDev } from '../mgmt/sysfs';
import type { SystemPaths } from '../mgmt/sysfs';
import type { VdpaDeviceConfig, VdpaDeviceInfo, VdpaManagement } from '../mgmt/vdpa';
import { virtioClassName } from '../mgmt/vdpa-uapi';
import { decodeBlkConfig, decodeNetConfig, type BlkConfig, type NetConfig } from '../virtio-config';
import { JSON_OPTION } from './args';
import type { CliContext, Command } from './context';
import { hex, keyValues, toJson, wrapWords } from './output';

/** One queue's index and maximum size. */
export interface QueueInfo {
  index: number;
  /** VHOST_VDPA_GET_VRING_SIZE, or the device-wide VHOST_VDPA_GET_VRING_NUM where unsupported. */
  maxSize: number;
  /** VHOST_VDPA_GET_VRING_GROUP, when supported. */
  group?: number;
}

/** What `info` reports for one device. */
export interface DeviceReport {
  path: string;
  /** vdpa device name (from sysfs), when found. */
  name?: string;
  deviceId: number;
  deviceClass: string;
  status: number;
  statusNames: string[];
  features: bigint;
  featureNames: string[];
  backendFeatures: bigint;
  backendFeatureNames: string[];
  capabilities: DeviceCapabilities;
  configSize: number;
  /** The raw config space, hex. */
  configHex: string;
  blkConfig?: BlkConfig;
  netConfig?: NetConfig;
  vringNum: number;
  vqsCount?: number;
  queues: QueueInfo[];
  groupNum?: number;
  asNum?: number;
  iovaRange: { first: bigint; last: bigint };
  /** Netlink view (DEV_GET), when the device has a vdpa name and the family is reachable. */
  netlink?: VdpaDeviceInfo;
  /** Netlink config view (DEV_CONFIG_GET). */
  netlinkConfig?: VdpaDeviceConfig;
  /** Why the netlink view is missing. */
  netlinkError?: string;
}

function optional<T>(fn: () => T): T | undefined {
  try {
    return fn();
  } catch (error) {
    if (error instanceof VdpaError && ['ENOTTY', 'EOPNOTSUPP', 'ENOTSUPP'].includes(error.code))
      return undefined;
    throw error;
  }
}

/** The vdpa device name whose sysfs directory lists this char device. */
export function nameOfCharDev(devPath: string, paths: SystemPaths): string | undefined {
  const base = path.basename(devPath);
  return listBusDevices(paths).find((n) =>
    fs.existsSync(path.join(paths.sys, 'bus', 'vdpa', 'devices', n, base)),
  );
}

/** Opens `devPath` and gathers the report (the device is closed again). */
function probeDevice(Device: typeof VhostVdpaDevice, devPath: string, paths: SystemPaths): DeviceReport {
  let device: VhostVdpaDevice;
  try {
    // Owner: vhost refuses vring ioctls (GET_VRING_SIZE, GET_VRING_GROUP) to a non-owner with EPERM.
    device = Device.open(devPath);
  } catch (error) {
    if (error instanceof VdpaError && error.code === 'EBUSY') {
      const holders = findHolders(devPath, paths);
      throw new VdpaError(
        `${devPath} is already open${holders.length > 0 ? ` in ${describeHolders(holders)}` : ''}; ` +
          'vhost-vdpa allows one open at a time, so close it there first',
        { code: 'EBUSY', path: devPath, cause: error },
      );
    }
    throw error;
  }
  try {
    const deviceId = device.deviceId;
    const features = device.getFeatures();
    const backendFeatures = device.getBackendFeatures();
    const status = device.getStatus();
    const configSize = device.getConfigSize();
    const config = configSize > 0 ? device.getConfig(0, configSize) : Buffer.alloc(0);
    const vringNum = device.getVringNum();
    const vqsCount = optional(() => device.getVqsCount());
    const queues: QueueInfo[] = [];
    for (let index = 0; index < (vqsCount ?? 0); index++) {
      const size = optional(() => device.getVringSize(index));
      const group = optional(() => device.getVringGroup(index));
      queues.push({ index, maxSize: size ?? vringNum, ...(group === undefined ? {} : { group }) });
    }
    const groupNum = optional(() => device.getGroupNum());
    const asNum = optional(() => device.getAsNum());
    const name = nameOfCharDev(devPath, paths);
    const report: DeviceReport = {
      path: devPath,
      ...(name === undefined ? {} : { name }),
      deviceId,
      deviceClass: virtioClassName(deviceId),
      status,
      statusNames: decodeStatus(status),
      features,
      featureNames: decodeFeatures(features, deviceId),
      backendFeatures,
      backendFeatureNames: decodeBackendFeatures(backendFeatures),
      capabilities: device.capabilities(),
      configSize,
      configHex: config.toString('hex'),
      vringNum,
      ...(vqsCount === undefined ? {} : { vqsCount }),
      queues,
      ...(groupNum === undefined ? {} : { groupNum }),
      ...(asNum === undefined ? {} : { asNum }),
      iovaRange: device.getIovaRange(),
    };
    if (deviceId === 2) report.blkConfig = decodeBlkConfig(config, features);
    if (deviceId === 1) report.netConfig = decodeNetConfig(config, features);
    return report;
  } finally {
    device.close();
  }
}

async function addNetlinkView(report: DeviceReport, manager: VdpaManagement | VdpaError): Promise<void> {
  if (report.name === undefined) return;
  if (manager instanceof VdpaError) {
    report.netlinkError = manager.message;
    return;
  }
  try {
    report.netlink = await manager.getDevice(report.name);
    report.netlinkConfig = await manager.getConfig(report.name);
  } catch (error) {
    report.netlinkError = error instanceof Error ? error.message : String(error);
  }
}

function renderReport(r: DeviceReport): string {
  const c = r.capabilities;
  let out = keyValues([
    ['device', r.name === undefined ? r.path : `${r.name} (${r.path})`],
    ['class', `${r.deviceClass} (virtio id ${r.deviceId})`],
    ['status', `${hex(r.status)}${r.statusNames.length > 0 ? ` (${r.statusNames.join(' ')})` : ''}`],
    ['features', hex(r.features)],
  ]);
  out += wrapWords(r.featureNames, '  ') + '\n';
  out += keyValues([['backend features', `${hex(r.backendFeatures)} (${r.backendFeatureNames.join(' ')})`]]);
  out += keyValues(
    [
      ['capabilities', ''],
      ['suspend/resume', `${c.suspend}/${c.resume}`],
      ['iotlb v2/batch/asid/persist', `${c.iotlbMsgV2}/${c.iotlbBatch}/${c.iotlbAsid}/${c.iotlbPersist}`],
      ['enable after DRIVER_OK', c.enableAfterDriverOk],
      ['desc ASID', c.descAsid],
      ['vring group/desc group/size', `${c.vringGroup}/${c.vringDescGroup}/${c.vringSize}`],
      ['notification', c.doorbell ? 'doorbell' : `eventfd (doorbell: ${c.doorbellError ?? 'no'})`],
    ].map(([k, v]) => [k === 'capabilities' ? k : `  ${String(k)}`, v] as [string, string | boolean]),
  );
  out += keyValues([
    ['queues', `${r.vqsCount ?? '?'} (max size ${r.vringNum})`],
    ...r.queues.map((q): [string, string] => [
      `  vq ${q.index}`,
      `max size ${q.maxSize}${q.group === undefined ? '' : `, group ${q.group}`}`,
    ]),
    ['groups / address spaces', `${r.groupNum ?? '?'} / ${r.asNum ?? '?'}`],
    ['iova range', `${hex(r.iovaRange.first)}-${hex(r.iovaRange.last)}`],
    ['config size', r.configSize],
  ]);
  if (r.blkConfig !== undefined) {
    const b = r.blkConfig;
    out += keyValues(
      [
        ['capacity', `${b.capacity} sectors (${Number(b.capacity) / 2048} MiB)`],
        ['block size', b.blkSize],
        ['size max', b.sizeMax],
        ['seg max', b.segMax],
        ['queues', b.numQueues],
        ['topology', b.topology === undefined ? undefined : JSON.stringify(b.topology)],
        ['discard', b.discard === undefined ? undefined : JSON.stringify(b.discard)],
        ['write zeroes', b.writeZeroes === undefined ? undefined : JSON.stringify(b.writeZeroes)],
        ['read only', b.readOnly],
        ['flush', b.flush],
      ],
      '  ',
    );
  }
  if (r.netConfig !== undefined) {
    const n = r.netConfig;
    out += keyValues(
      [
        ['mac', n.mac],
        ['status', n.status],
        ['max vq pairs', n.maxVirtqueuePairs],
        ['mtu', n.mtu],
      ],
      '  ',
    );
  }
  if (r.netlink !== undefined) {
    out += keyValues([
      [
        'netlink',
        `mgmtdev ${r.netlink.mgmtdev}, vendor ${r.netlink.vendorId}, max vqs ${r.netlink.maxVqs}, vq size ${r.netlink.minVqSize ?? '?'}-${r.netlink.maxVqSize}`,
      ],
    ]);
  } else if (r.netlinkError !== undefined) {
    out += keyValues([['netlink', `unavailable: ${r.netlinkError}`]]);
  }
  return out;
}

/** The lab's device names ($VDPA_LAB_DEVICES or /run/vdpa-lab.json). */
function labNames(ctx: CliContext): string[] {
  const raw =
    ctx.env.VDPA_LAB_DEVICES ??
    (fs.existsSync('/run/vdpa-lab.json') ? fs.readFileSync('/run/vdpa-lab.json', 'utf8') : undefined);
  if (raw === undefined) {
    throw new VdpaError(
      '--lab: neither VDPA_LAB_DEVICES nor /run/vdpa-lab.json is there (run inside the lab)',
      {
        code: 'ENOENT',
      },
    );
  }
  return (JSON.parse(raw) as { name: string }[]).map((d) => d.name);
}

export const info: Command = {
  name: 'info',
  summary: 'everything the device API can learn about a vhost-vdpa device',
  usage: 'vhost-vdpa info [PATH|NAME…] [--lab] [--json]',
  details:
    'PATH is /dev/vhost-vdpa-N; NAME a vdpa device bound to vhost_vdpa. Without arguments: every device on\n' +
    "the vdpa bus that has a char device (--lab: the lab's devices). Opens each device briefly (vhost-vdpa\n" +
    'allows one open at a time) and reports decoded features, backend features, the capability probe,\n' +
    'the config space decoded per class, queue counts and sizes, the IOVA range, and the netlink view.',
  options: {
    lab: {
      type: 'boolean',
      description: "the lab's devices (from $VDPA_LAB_DEVICES or /run/vdpa-lab.json) instead of all",
    },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    let targets = args.positionals;
    if (targets.length === 0) {
      targets =
        args.options.lab === true
          ? labNames(ctx)
          : listBusDevices(ctx.paths).filter((n) => describeBinding(n, ctx.paths).charDev !== undefined);
    }
    if (targets.length === 0) {
      throw new VdpaError(
        'no vhost-vdpa devices found (see `vhost-vdpa dev list`; create one with `dev add`)',
        {
          code: 'ENODEV',
        },
      );
    }
    const paths: string[] = [];
    for (const t of targets)
      paths.push(t.startsWith('/') ? t : await resolveCharDev(t, { paths: ctx.paths, timeoutMs: 2000 }));
    // Loaded here, not at the top (it loads the addon): the CLI loads every command module (see run.ts).
    const { VhostVdpaDevice } = await import('../device');
    const reports = paths.map((p) => probeDevice(VhostVdpaDevice, p, ctx.paths));
    let manager: VdpaManagement | VdpaError;
    try {
      manager = await ctx.openManager();
    } catch (error) {
      manager =
        error instanceof VdpaError ? error : new VdpaError(String(error), { code: ErrorCodes.NETLINK });
    }
    try {
      for (const r of reports) await addNetlinkView(r, manager);
    } finally {
      if (!(manager instanceof VdpaError)) manager.close();
    }
    if (args.options.json === true)
      ctx.stdout(toJson(reports.length === 1 && args.positionals.length === 1 ? reports[0] : reports) + '\n');
    else ctx.stdout(reports.map(renderReport).join('\n'));
    return 0;
  },
};
