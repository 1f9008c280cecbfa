/**
 * `vhost-vdpa mgmtdev list|show`.
 * @module
 */
import { decodeFeatures } from '../features';
import type { MgmtDevice } from '../mgmt/vdpa';
import { expectPositionals, JSON_OPTION } from './args';
import { withManager, type Command } from './context';
import { hex, table, toJson, wrapWords } from './output';

const CLASS_IDS: Record<string, number> = { net: 1, block: 2 };

function featureNames(device: MgmtDevice): string[] | undefined {
  if (device.supportedFeatures === undefined) return undefined;
  // Device-class bits only have names when the class is unambiguous.
  const only =
    device.supportedClasses.length === 1 ? CLASS_IDS[device.supportedClasses[0] as string] : undefined;
  return decodeFeatures(device.supportedFeatures, only);
}

function toJsonObject(device: MgmtDevice): Record<string, unknown> {
  return { ...device, supportedFeatureNames: featureNames(device) };
}

function render(devices: MgmtDevice[], verbose: boolean): string {
  let out = table(
    ['MGMTDEV', 'CLASSES', 'MAX VQS', 'SUPPORTED FEATURES'],
    devices.map((d) => [
      d.handle,
      d.supportedClasses.join(','),
      d.maxSupportedVqs,
      d.supportedFeatures === undefined ? undefined : hex(d.supportedFeatures),
    ]),
  );
  if (verbose) {
    for (const d of devices) {
      const names = featureNames(d);
      if (names !== undefined) out += `\n${d.handle} features:\n${wrapWords(names, '  ')}\n`;
    }
  }
  return out;
}

export const mgmtdevList: Command = {
  name: 'mgmtdev list',
  summary: 'list management devices (parents that can create vdpa devices)',
  usage: 'vhost-vdpa mgmtdev list [--json]',
  details:
    'Shows each management device handle (what `dev add --mgmtdev` takes), the virtio classes it creates,\n' +
    'the most virtqueues a device may have, and the virtio features its devices can offer.',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    expectPositionals(args, []);
    const devices = await withManager(ctx, (m) => m.listMgmtDevices());
    ctx.stdout(
      args.options.json === true ? toJson(devices.map(toJsonObject)) + '\n' : render(devices, false),
    );
    return 0;
  },
};

export const mgmtdevShow: Command = {
  name: 'mgmtdev show',
  summary: 'show one management device, with its feature names',
  usage: 'vhost-vdpa mgmtdev show MGMTDEV [--json]',
  details: 'MGMTDEV is a handle such as vdpasim_blk, vduse or pci/0000:01:00.2.',
  options: { ...JSON_OPTION },
  async run(args, ctx) {
    const [handle] = expectPositionals(args, ['MGMTDEV']);
    const device = await withManager(ctx, (m) => m.getMgmtDevice(handle as string));
    ctx.stdout(args.options.json === true ? toJson(toJsonObject(device)) + '\n' : render([device], true));
    return 0;
  },
};
