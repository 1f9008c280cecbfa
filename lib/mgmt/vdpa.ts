/**
 * VdpaManager: a client of the kernel's `vdpa` generic netlink family —
 * management devices, device creation and deletion, device attributes,
 * typed config and vendor statistics — with errors that say what to do.
 * @module
 */
import * as fs from 'node:fs';

import { VdpaError } from '../errors';
import { GenericNetlink, NetlinkRequestError, type GenlFamily, type GenlMessage } from './genl';
import { openNativeTransport, type NetlinkTransport } from './native-netlink';
import { AttributeSet, AttributeWriter, NETLINK_GENERIC } from './netlink';
import { assertNotHeld, deviceExists, SYSTEM_PATHS, type SystemPaths } from './sysfs';
import * as uapi from './vdpa-uapi';
import {
  formatMac,
  parseFeatures,
  parseInteger,
  parseMac,
  parseMaxVqPairs,
  parseMgmtdevHandle,
  parseMtu,
  validateDeviceName,
} from './validate';

/** A management device: a parent that can create vdpa devices. */
export interface MgmtDevice {
  /** "name" or "bus/name" — what `addDevice({ mgmtdev })` takes. */
  handle: string;
  bus?: string;
  name: string;
  /** Virtio classes it can create ('net', 'block'). */
  supportedClasses: string[];
  /** MGMTDEV_SUPPORTED_CLASSES: bit N set = virtio device id N. */
  classMask: bigint;
  /** DEV_MGMTDEV_MAX_VQS: the most virtqueues a device of it can have. */
  maxSupportedVqs?: number;
  /** DEV_SUPPORTED_FEATURES: virtio features its devices can offer. */
  supportedFeatures?: bigint;
}

/** A vdpa device as DEV_GET reports it. */
export interface VdpaDeviceInfo {
  name: string;
  /** Handle of the management device that created it. */
  mgmtdev: string;
  /** Virtio device id (1 net, 2 block). */
  deviceId: number;
  /** Class name of deviceId ('net', 'block'). */
  deviceClass: string;
  vendorId: number;
  /** Number of virtqueues. */
  maxVqs: number;
  /** Largest virtqueue size. */
  maxVqSize: number;
  /** Smallest virtqueue size. */
  minVqSize?: number;
}

/** virtio-net config fields the kernel reports (those whose feature is offered). */
export interface NetDeviceConfig {
  mac?: string;
  /** virtio_net_config.status (bit 0 = link up, bit 1 = announce). */
  status?: number;
  linkUp?: boolean;
  mtu?: number;
  maxVqPairs?: number;
}

/** virtio-blk config fields the kernel reports (Linux ≥ 6.6). */
export interface BlkDeviceConfig {
  /** In 512-byte sectors. */
  capacity?: bigint;
  sizeMax?: number;
  blockSize?: number;
  segMax?: number;
  numQueues?: number;
  physicalBlockExp?: number;
  alignmentOffset?: number;
  minIoSize?: number;
  optIoSize?: number;
  maxDiscardSectors?: number;
  maxDiscardSeg?: number;
  discardSectorAlignment?: number;
  maxWriteZeroesSectors?: number;
  maxWriteZeroesSeg?: number;
  readOnly?: boolean;
  flush?: boolean;
}

/** DEV_CONFIG_GET: the device's config space, decoded by the kernel. */
export interface VdpaDeviceConfig {
  name: string;
  deviceId: number;
  deviceClass: string;
  /** Features the device offers (VDPA_ATTR_DEV_FEATURES). */
  deviceFeatures?: bigint;
  /** Features a driver negotiated (present once FEATURES_OK). */
  negotiatedFeatures?: bigint;
  net?: NetDeviceConfig;
  blk?: BlkDeviceConfig;
}

/** One vendor counter. */
export interface VendorCounter {
  name: string;
  value: bigint;
}

/** DEV_VSTATS_GET: a queue's vendor statistics. */
export interface VendorStats {
  name: string;
  deviceId: number;
  queueIndex: number;
  negotiatedFeatures?: bigint;
  maxVqPairs?: number;
  counters: VendorCounter[];
}

/** Options of `addDevice`; class options are checked by the kernel against the mgmtdev. */
export interface AddDeviceOptions {
  /** Name of the new device (becomes /sys/bus/vdpa/devices/NAME). */
  name: string;
  /** Management device handle ("vdpasim_net", "pci/0000:01:00.2"). */
  mgmtdev: string;
  /** net: MAC address "52:54:00:12:34:56". */
  mac?: string;
  /** net: MTU (≥ 68). */
  mtu?: number;
  /** net: maximum virtqueue pairs. */
  maxVqPairs?: number;
  /** Provisioned device features (a subset of what the mgmtdev supports). */
  deviceFeatures?: bigint | string | number;
}

/** Options of `VdpaManager.open`. */
export interface ManagerOptions {
  /** Per-request timeout in milliseconds (default 5000). */
  timeoutMs?: number;
  /** A transport to use instead of the addon's netlink socket (tests). */
  transport?: NetlinkTransport;
  /** Where sysfs/proc/dev are (tests). */
  paths?: SystemPaths;
}

/** Options of `deleteDevice`. */
export interface DeleteOptions {
  /**
   * Check that no process holds the device's /dev/vhost-vdpa-N before asking
   * the kernel (default true). The kernel's DEV_DEL waits, uninterruptibly,
   * until the char device is closed; without the check (or when a holder
   * appears after it) the delete stays pending until then. The request is
   * sent from the libuv thread pool, so the event loop keeps running meanwhile.
   */
  checkHolders?: boolean;
}

const DUMP_ATTEMPTS = 3;

/** The operations of the management client (what the CLI and the service use). */
export interface VdpaManagement {
  listMgmtDevices(): Promise<MgmtDevice[]>;
  getMgmtDevice(handle: string): Promise<MgmtDevice>;
  listDevices(): Promise<VdpaDeviceInfo[]>;
  getDevice(name: string): Promise<VdpaDeviceInfo>;
  addDevice(options: AddDeviceOptions): Promise<VdpaDeviceInfo>;
  deleteDevice(name: string, options?: DeleteOptions): Promise<void>;
  getConfig(name: string): Promise<VdpaDeviceConfig>;
  listConfigs(): Promise<VdpaDeviceConfig[]>;
  getVendorStats(name: string, queueIndex: number): Promise<VendorStats>;
  setMac(name: string, mac: string): Promise<void>;
  close(): void;
}

/** Explains why the `vdpa` family cannot be found. */
export function explainMissingFamily(paths: SystemPaths = SYSTEM_PATHS): string {
  if (!fs.existsSync(`${paths.sys}/bus/vdpa`)) {
    return 'the vdpa module is not loaded (modprobe vdpa; then load a parent such as vdpa_sim_blk or vduse)';
  }
  let self: string | undefined;
  let init: string | undefined;
  try {
    self = fs.readlinkSync(`${paths.proc}/self/ns/net`);
    init = fs.readlinkSync(`${paths.proc}/1/ns/net`);
  } catch {
    // /proc/1 is unreadable without privileges; fall through to the generic answer.
  }
  if (self !== undefined && init !== undefined && self === init) {
    return 'the vdpa generic netlink family is not registered although /sys/bus/vdpa exists; check dmesg';
  }
  return (
    'this process is not in the initial network namespace, and the vdpa netlink family exists only there ' +
    '(run it on the host, or in a container with the host network namespace: --net=host / hostNetwork: true)'
  );
}

function decodeMgmtdev(attrs: AttributeSet): MgmtDevice {
  const name = attrs.string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME) ?? '';
  const bus = attrs.string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME);
  const classMask = attrs.u64(uapi.VDPA_ATTR_MGMTDEV_SUPPORTED_CLASSES) ?? 0n;
  const out: MgmtDevice = {
    handle: bus === undefined ? name : `${bus}/${name}`,
    name,
    supportedClasses: uapi.decodeClassMask(classMask),
    classMask,
  };
  if (bus !== undefined) out.bus = bus;
  const maxVqs = attrs.u32(uapi.VDPA_ATTR_DEV_MGMTDEV_MAX_VQS);
  if (maxVqs !== undefined) out.maxSupportedVqs = maxVqs;
  const features = attrs.u64(uapi.VDPA_ATTR_DEV_SUPPORTED_FEATURES);
  if (features !== undefined) out.supportedFeatures = features;
  return out;
}

function decodeDevice(attrs: AttributeSet): VdpaDeviceInfo {
  const bus = attrs.string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME);
  const mgmt = attrs.string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME) ?? '';
  const deviceId = attrs.u32(uapi.VDPA_ATTR_DEV_ID) ?? 0;
  const out: VdpaDeviceInfo = {
    name: attrs.string(uapi.VDPA_ATTR_DEV_NAME) ?? '',
    mgmtdev: bus === undefined ? mgmt : `${bus}/${mgmt}`,
    deviceId,
    deviceClass: uapi.virtioClassName(deviceId),
    vendorId: attrs.u32(uapi.VDPA_ATTR_DEV_VENDOR_ID) ?? 0,
    maxVqs: attrs.u32(uapi.VDPA_ATTR_DEV_MAX_VQS) ?? 0,
    maxVqSize: attrs.u16(uapi.VDPA_ATTR_DEV_MAX_VQ_SIZE) ?? 0,
  };
  const min = attrs.u16(uapi.VDPA_ATTR_DEV_MIN_VQ_SIZE);
  if (min !== undefined) out.minVqSize = min;
  return out;
}

function setIfDefined<T, K extends keyof T>(target: T, key: K, value: T[K] | undefined): void {
  if (value !== undefined) target[key] = value;
}

/** Decodes a DEV_CONFIG_GET reply (exported for tests). */
export function decodeConfig(attrs: AttributeSet): VdpaDeviceConfig {
  const deviceId = attrs.u32(uapi.VDPA_ATTR_DEV_ID) ?? 0;
  const out: VdpaDeviceConfig = {
    name: attrs.string(uapi.VDPA_ATTR_DEV_NAME) ?? '',
    deviceId,
    deviceClass: uapi.virtioClassName(deviceId),
  };
  setIfDefined(out, 'deviceFeatures', attrs.u64(uapi.VDPA_ATTR_DEV_FEATURES));
  setIfDefined(out, 'negotiatedFeatures', attrs.u64(uapi.VDPA_ATTR_DEV_NEGOTIATED_FEATURES));
  if (deviceId === 1) {
    const net: NetDeviceConfig = {};
    const mac = attrs.binary(uapi.VDPA_ATTR_DEV_NET_CFG_MACADDR);
    if (mac !== undefined && mac.length >= 6) net.mac = formatMac(mac.subarray(0, 6));
    const status = attrs.uint(uapi.VDPA_ATTR_DEV_NET_STATUS);
    if (status !== undefined) {
      net.status = status;
      net.linkUp = (status & 1) !== 0;
    }
    setIfDefined(net, 'mtu', attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MTU));
    setIfDefined(net, 'maxVqPairs', attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MAX_VQP));
    out.net = net;
  } else if (deviceId === 2) {
    const blk: BlkDeviceConfig = {};
    setIfDefined(blk, 'capacity', attrs.u64(uapi.VDPA_ATTR_DEV_BLK_CFG_CAPACITY));
    setIfDefined(blk, 'sizeMax', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_SIZE_MAX));
    setIfDefined(blk, 'blockSize', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_BLK_SIZE));
    setIfDefined(blk, 'segMax', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_SEG_MAX));
    setIfDefined(blk, 'numQueues', attrs.u16(uapi.VDPA_ATTR_DEV_BLK_CFG_NUM_QUEUES));
    setIfDefined(blk, 'physicalBlockExp', attrs.u8(uapi.VDPA_ATTR_DEV_BLK_CFG_PHY_BLK_EXP));
    setIfDefined(blk, 'alignmentOffset', attrs.u8(uapi.VDPA_ATTR_DEV_BLK_CFG_ALIGN_OFFSET));
    setIfDefined(blk, 'minIoSize', attrs.u16(uapi.VDPA_ATTR_DEV_BLK_CFG_MIN_IO_SIZE));
    setIfDefined(blk, 'optIoSize', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_OPT_IO_SIZE));
    setIfDefined(blk, 'maxDiscardSectors', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEC));
    setIfDefined(blk, 'maxDiscardSeg', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_MAX_DISCARD_SEG));
    setIfDefined(blk, 'discardSectorAlignment', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_DISCARD_SEC_ALIGN));
    setIfDefined(blk, 'maxWriteZeroesSectors', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEC));
    setIfDefined(blk, 'maxWriteZeroesSeg', attrs.u32(uapi.VDPA_ATTR_DEV_BLK_CFG_MAX_WRITE_ZEROES_SEG));
    const ro = attrs.u8(uapi.VDPA_ATTR_DEV_BLK_READ_ONLY);
    if (ro !== undefined) blk.readOnly = ro !== 0;
    const flush = attrs.u8(uapi.VDPA_ATTR_DEV_BLK_FLUSH);
    if (flush !== undefined) blk.flush = flush !== 0;
    out.blk = blk;
  }
  return out;
}

/** Decodes a DEV_VSTATS_GET reply: NAME/VALUE attribute pairs in order (exported for tests). */
export function decodeVendorStats(attrs: AttributeSet): VendorStats {
  const deviceId = attrs.u32(uapi.VDPA_ATTR_DEV_ID) ?? 0;
  const out: VendorStats = {
    name: attrs.string(uapi.VDPA_ATTR_DEV_NAME) ?? '',
    deviceId,
    queueIndex: attrs.u32(uapi.VDPA_ATTR_DEV_QUEUE_INDEX) ?? 0,
    counters: [],
  };
  setIfDefined(out, 'negotiatedFeatures', attrs.u64(uapi.VDPA_ATTR_DEV_NEGOTIATED_FEATURES));
  setIfDefined(out, 'maxVqPairs', attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MAX_VQP));
  let pendingName: string | undefined;
  for (const attribute of attrs.list) {
    if (attribute.type === uapi.VDPA_ATTR_DEV_VENDOR_ATTR_NAME) {
      const nul = attribute.data.indexOf(0);
      pendingName = attribute.data.toString('utf8', 0, nul < 0 ? attribute.data.length : nul);
    } else if (attribute.type === uapi.VDPA_ATTR_DEV_VENDOR_ATTR_VALUE && pendingName !== undefined) {
      out.counters.push({
        name: pendingName,
        value: new AttributeSet([attribute]).u64(attribute.type) ?? 0n,
      });
      pendingName = undefined;
    }
  }
  return out;
}

/** Names the option bits in "Some provided attributes are not supported: 0x…". */
export function unsupportedOptionNames(kernelMessage: string): string[] {
  const match = /0x([0-9a-fA-F]+)/.exec(kernelMessage);
  if (match === null) return [];
  const mask = BigInt(`0x${match[1] as string}`);
  const names: string[] = [];
  for (const [bit, option] of Object.entries(uapi.VDPA_ADD_OPTION_BY_ATTR)) {
    if ((mask >> BigInt(bit)) & 1n) names.push(option);
  }
  return names;
}

function rewrap(error: NetlinkRequestError, message: string, code: string = error.code): VdpaError {
  const kernel = error.kernelMessage === undefined ? '' : ` [kernel: "${error.kernelMessage}"]`;
  const wrapped = new VdpaError(`${message}${kernel}`, {
    code,
    ...(error.errno === undefined ? {} : { errno: error.errno }),
    ...(error.syscall === undefined ? {} : { syscall: error.syscall }),
    cause: error,
  });
  return wrapped;
}

/**
 * A client of the kernel's vdpa management interface. Open one with
 * `VdpaManager.open()`, close it when done; requests may run concurrently.
 *
 * @example
 * const mgr = await VdpaManager.open();
 * await mgr.addDevice({ name: 'blk1', mgmtdev: 'vdpasim_blk' });
 * const path = await resolveCharDev('blk1'); // /dev/vhost-vdpa-N
 * mgr.close();
 */
export class VdpaManager implements VdpaManagement {
  private constructor(
    private readonly genl: GenericNetlink,
    /** The resolved `vdpa` family (id, version, commands the kernel implements). */
    readonly family: GenlFamily,
    private readonly paths: SystemPaths,
  ) {}

  /**
   * Opens a generic netlink socket and resolves the `vdpa` family. Fails with
   * ENOENT and a message saying whether the module is missing or this
   * process is outside the initial network namespace.
   */
  static async open(options: ManagerOptions = {}): Promise<VdpaManager> {
    const paths = options.paths ?? SYSTEM_PATHS;
    const genl = new GenericNetlink(
      options.transport ?? openNativeTransport(NETLINK_GENERIC),
      options.timeoutMs,
    );
    try {
      const family = await genl.resolveFamily(uapi.VDPA_GENL_NAME);
      return new VdpaManager(genl, family, paths);
    } catch (error) {
      genl.close();
      if (error instanceof NetlinkRequestError && error.code === 'ENOENT') {
        throw rewrap(error, `the vdpa netlink family was not found: ${explainMissingFamily(paths)}`);
      }
      throw error;
    }
  }

  private async call(
    cmd: number,
    attrs: AttributeWriter,
    what: string,
    explain: (error: NetlinkRequestError) => VdpaError | undefined = () => undefined,
    dump = false,
    offLoop = false,
  ): Promise<GenlMessage[]> {
    if (this.family.commands.length > 0 && !this.family.commands.includes(cmd)) {
      throw new VdpaError(
        `${what}: this kernel's vdpa module does not implement ${uapi.VDPA_CMD_NAMES[cmd] ?? cmd} (it is too old); ` +
          'upgrade the kernel',
        { code: 'EOPNOTSUPP', syscall: `netlink(vdpa ${uapi.VDPA_CMD_NAMES[cmd] ?? cmd})` },
      );
    }
    const label = `vdpa ${uapi.VDPA_CMD_NAMES[cmd] ?? String(cmd)}`;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.genl.request(this.family.id, cmd, uapi.VDPA_GENL_VERSION, attrs.toBuffer(), {
          what: label,
          dump,
          offLoop,
        });
      } catch (error) {
        if (!(error instanceof VdpaError)) throw error;
        if (
          dump &&
          error.code === 'EAGAIN' &&
          !(error instanceof NetlinkRequestError) &&
          attempt < DUMP_ATTEMPTS
        ) {
          continue;
        }
        if (!(error instanceof NetlinkRequestError)) throw error;
        if (error.code === 'EPERM') {
          throw rewrap(error, `${what}: needs CAP_NET_ADMIN (run as root)`);
        }
        throw explain(error) ?? rewrap(error, `${what} failed: ${error.code}`);
      }
    }
  }

  /** All management devices (MGMTDEV_GET dump). */
  async listMgmtDevices(): Promise<MgmtDevice[]> {
    const replies = await this.call(
      uapi.VDPA_CMD_MGMTDEV_GET,
      new AttributeWriter(),
      'listing management devices',
      undefined,
      true,
    );
    return replies.map((r) => decodeMgmtdev(r.attrs));
  }

  /** One management device by handle ("vdpasim_blk", "pci/0000:01:00.2"). */
  async getMgmtDevice(handle: string): Promise<MgmtDevice> {
    const parsed = parseMgmtdevHandle(handle);
    const attrs = new AttributeWriter();
    if (parsed.bus !== undefined) attrs.string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME, parsed.bus);
    attrs.string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME, parsed.name);
    const [reply] = await this.call(
      uapi.VDPA_CMD_MGMTDEV_GET,
      attrs,
      `showing management device ${handle}`,
      (e) => (e.code === 'ENODEV' ? this.unknownMgmtdev(e, handle) : undefined),
    );
    if (reply === undefined)
      throw new VdpaError(`no reply for management device ${handle}`, { code: 'ENODEV' });
    return decodeMgmtdev(reply.attrs);
  }

  private unknownMgmtdev(error: NetlinkRequestError, handle: string): VdpaError {
    return rewrap(
      error,
      `no management device "${handle}" (is its module loaded, e.g. modprobe vdpa_sim_blk?); ` +
        'see `vhost-vdpa mgmtdev list` for the available ones',
    );
  }

  /** All vdpa devices created through management devices (DEV_GET dump). */
  async listDevices(): Promise<VdpaDeviceInfo[]> {
    const replies = await this.call(
      uapi.VDPA_CMD_DEV_GET,
      new AttributeWriter(),
      'listing devices',
      undefined,
      true,
    );
    return replies.map((r) => decodeDevice(r.attrs));
  }

  private noDevice(error: NetlinkRequestError, name: string, action: string): VdpaError | undefined {
    if (error.code === 'ENODEV') {
      return rewrap(error, `cannot ${action}: no vdpa device named "${name}"; see \`vhost-vdpa dev list\``);
    }
    if (
      error.code === 'EINVAL' &&
      (error.kernelMessage === undefined || /unmanaged|user created/.test(error.kernelMessage))
    ) {
      return rewrap(
        error,
        `cannot ${action}: vdpa device "${name}" was not created through the management interface ` +
          '(it belongs to its parent driver; remove it by unloading or reconfiguring that driver)',
      );
    }
    return undefined;
  }

  /** One device (DEV_GET). */
  async getDevice(name: string): Promise<VdpaDeviceInfo> {
    validateDeviceName(name);
    const attrs = new AttributeWriter().string(uapi.VDPA_ATTR_DEV_NAME, name);
    const [reply] = await this.call(uapi.VDPA_CMD_DEV_GET, attrs, `showing device ${name}`, (e) =>
      this.noDevice(e, name, `show "${name}"`),
    );
    if (reply === undefined) throw new VdpaError(`no reply for device ${name}`, { code: 'ENODEV' });
    return decodeDevice(reply.attrs);
  }

  /**
   * Creates a device (DEV_NEW) and returns what DEV_GET then reports. The
   * device binds to whichever vdpa bus driver is loaded; use
   * `resolveCharDev(name)` for its /dev/vhost-vdpa-N.
   */
  async addDevice(options: AddDeviceOptions): Promise<VdpaDeviceInfo> {
    const name = validateDeviceName(options.name);
    const handle = parseMgmtdevHandle(options.mgmtdev);
    const attrs = new AttributeWriter();
    if (handle.bus !== undefined) attrs.string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME, handle.bus);
    attrs.string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME, handle.name);
    attrs.string(uapi.VDPA_ATTR_DEV_NAME, name);
    if (options.mac !== undefined) attrs.put(uapi.VDPA_ATTR_DEV_NET_CFG_MACADDR, parseMac(options.mac));
    if (options.mtu !== undefined) attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MTU, parseMtu(options.mtu));
    if (options.maxVqPairs !== undefined) {
      attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MAX_VQP, parseMaxVqPairs(options.maxVqPairs));
    }
    if (options.deviceFeatures !== undefined) {
      attrs.u64(uapi.VDPA_ATTR_DEV_FEATURES, parseFeatures(options.deviceFeatures));
    }
    await this.call(uapi.VDPA_CMD_DEV_NEW, attrs, `adding device ${name}`, (e) => {
      const kernel = e.kernelMessage ?? '';
      if (e.code === 'EEXIST') {
        return rewrap(
          e,
          `a vdpa device named "${name}" already exists; choose another name or delete it first ` +
            `(\`vhost-vdpa dev del ${name}\`)`,
        );
      }
      if (e.code === 'ENODEV' && /management device|mgmt/.test(kernel))
        return this.unknownMgmtdev(e, options.mgmtdev);
      if (e.code === 'EOPNOTSUPP' && /not supported/.test(kernel)) {
        const rejected = unsupportedOptionNames(kernel);
        return rewrap(
          e,
          `management device "${options.mgmtdev}" does not accept ` +
            `${rejected.length > 0 ? rejected.join(', ') : 'some of the given options'}; ` +
            'leave them out (see `vhost-vdpa mgmtdev list` for what it supports)',
        );
      }
      if (e.code === 'EINVAL' && /Missing features/.test(kernel)) {
        return rewrap(
          e,
          'the provisioned device features lack the feature bits the other options need; add them',
        );
      }
      if (e.code === 'EINVAL' && /Network class attributes/.test(kernel)) {
        return rewrap(
          e,
          `mac/mtu/maxVqPairs are net options, and "${options.mgmtdev}" does not create net devices`,
        );
      }
      if (e.code === 'EINVAL' && /[Aa]mbiguous/.test(kernel)) return undefined;
      return undefined;
    });
    return this.getDevice(name);
  }

  /**
   * Deletes a device created through a management device (DEV_DEL). Refuses
   * with EBUSY, naming the processes, when its /dev/vhost-vdpa-N is open —
   * the kernel would wait until it is closed. DEV_DEL is sent off the event
   * loop (libuv thread pool), so a holder that opens the device between the
   * check and the request delays only this promise, never the process.
   */
  async deleteDevice(name: string, options: DeleteOptions = {}): Promise<void> {
    validateDeviceName(name);
    if (options.checkHolders !== false && deviceExists(name, this.paths))
      assertNotHeld(name, 'delete', this.paths);
    const attrs = new AttributeWriter().string(uapi.VDPA_ATTR_DEV_NAME, name);
    // Off the loop: the kernel's DEV_DEL sleeps in our sendmsg while the char
    // device is open (a holder that appeared after the check above).
    await this.call(
      uapi.VDPA_CMD_DEV_DEL,
      attrs,
      `deleting device ${name}`,
      (e) => this.noDevice(e, name, `delete "${name}"`),
      false,
      true,
    );
  }

  /** The device's config as the kernel decodes it (DEV_CONFIG_GET). */
  async getConfig(name: string): Promise<VdpaDeviceConfig> {
    validateDeviceName(name);
    const attrs = new AttributeWriter().string(uapi.VDPA_ATTR_DEV_NAME, name);
    const [reply] = await this.call(
      uapi.VDPA_CMD_DEV_CONFIG_GET,
      attrs,
      `reading the config of ${name}`,
      (e) =>
        e.code === 'EOPNOTSUPP'
          ? rewrap(
              e,
              `the kernel cannot decode the config of "${name}": only net and block devices are supported`,
            )
          : this.noDevice(e, name, `read the config of "${name}"`),
    );
    if (reply === undefined) throw new VdpaError(`no reply for the config of ${name}`, { code: 'ENODEV' });
    return decodeConfig(reply.attrs);
  }

  /** The config of every device (DEV_CONFIG_GET dump). */
  async listConfigs(): Promise<VdpaDeviceConfig[]> {
    const replies = await this.call(
      uapi.VDPA_CMD_DEV_CONFIG_GET,
      new AttributeWriter(),
      'reading device configs',
      undefined,
      true,
    );
    return replies.map((r) => decodeConfig(r.attrs));
  }

  /** Vendor statistics of one queue (DEV_VSTATS_GET; net devices whose parent implements it). */
  async getVendorStats(name: string, queueIndex: number): Promise<VendorStats> {
    validateDeviceName(name);
    const index = parseInteger(queueIndex, 'queue index', 0, 0xffffffff);
    const attrs = new AttributeWriter()
      .string(uapi.VDPA_ATTR_DEV_NAME, name)
      .u32(uapi.VDPA_ATTR_DEV_QUEUE_INDEX, index);
    const [reply] = await this.call(uapi.VDPA_CMD_DEV_VSTATS_GET, attrs, `reading stats of ${name}`, (e) => {
      if (e.code === 'EAGAIN') {
        return rewrap(
          e,
          `no statistics for "${name}" yet: no driver has negotiated its features (FEATURES_OK); ` +
            'they appear once a vhost-vdpa user or virtio_vdpa has set the device up',
        );
      }
      if (e.code === 'EOPNOTSUPP') {
        return rewrap(
          e,
          `"${name}" has no vendor statistics: the kernel reports them only for net devices whose parent implements them`,
        );
      }
      if (e.code === 'ERANGE' || (e.code === 'EINVAL' && /index/.test(e.kernelMessage ?? ''))) {
        return rewrap(e, `queue index ${index} is out of range for "${name}"`);
      }
      return this.noDevice(e, name, `read stats of "${name}"`);
    });
    if (reply === undefined) throw new VdpaError(`no reply for stats of ${name}`, { code: 'ENODEV' });
    return decodeVendorStats(reply.attrs);
  }

  /** Sets a net device's MAC address (DEV_ATTR_SET). */
  async setMac(name: string, mac: string): Promise<void> {
    validateDeviceName(name);
    const attrs = new AttributeWriter()
      .string(uapi.VDPA_ATTR_DEV_NAME, name)
      .put(uapi.VDPA_ATTR_DEV_NET_CFG_MACADDR, parseMac(mac));
    await this.call(uapi.VDPA_CMD_DEV_ATTR_SET, attrs, `setting the MAC of ${name}`, (e) =>
      e.code === 'EOPNOTSUPP'
        ? rewrap(e, `the parent of "${name}" cannot change its MAC address after creation`)
        : this.noDevice(e, name, `set the MAC of "${name}"`),
    );
  }

  /** Closes the netlink socket; pending requests reject with ERR_CLOSED. */
  close(): void {
    this.genl.close();
  }
}
