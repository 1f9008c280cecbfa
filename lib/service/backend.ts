/**
 * The service's real backend: VdpaManager (netlink) plus the vdpa bus in sysfs.
 * @module
 */
import { bindDriver, describeBinding, resolveCharDev, SYSTEM_PATHS, type SystemPaths } from '../mgmt/sysfs';
import { VdpaManager, type VdpaDeviceInfo, type VdpaManagement } from '../mgmt/vdpa';
import type { CreateInterfaceParams, InterfaceInfo, ServiceBackend } from './methods';

/** Options of the kernel backend. */
export interface KernelBackendOptions {
  /** Opens the management client (default: VdpaManager.open()). */
  openManager?: () => Promise<VdpaManagement>;
  paths?: SystemPaths;
  /** How long to wait for /dev/vhost-vdpa-N after creating a device (default 5000 ms). */
  charDevTimeoutMs?: number;
}

/**
 * A backend over the kernel. The netlink client is opened on first use and
 * kept; if opening fails (vdpa module not loaded yet) the request fails and
 * the next one tries again, so the service can start before the module.
 */
export class KernelBackend implements ServiceBackend {
  private manager: Promise<VdpaManagement> | undefined;
  private readonly paths: SystemPaths;

  constructor(private readonly options: KernelBackendOptions = {}) {
    this.paths = options.paths ?? SYSTEM_PATHS;
  }

  private getManager(): Promise<VdpaManagement> {
    if (this.manager === undefined) {
      const opening = (this.options.openManager ?? (() => VdpaManager.open({ paths: this.paths })))();
      this.manager = opening;
      opening.catch(() => {
        if (this.manager === opening) this.manager = undefined;
      });
    }
    return this.manager;
  }

  private toInterface(d: VdpaDeviceInfo): InterfaceInfo {
    let driver: string | null = null;
    let chardev: string | undefined;
    try {
      const binding = describeBinding(d.name, this.paths);
      driver = binding.driver;
      chardev = binding.charDev;
    } catch {
      // Gone from sysfs meanwhile: report what netlink said.
    }
    return {
      'device-id': d.name,
      class: d.deviceClass,
      mgmtdev: d.mgmtdev,
      driver,
      ...(chardev === undefined ? {} : { chardev }),
      'max-vqs': d.maxVqs,
      'max-vq-size': d.maxVqSize,
    };
  }

  async listInterfaces(): Promise<InterfaceInfo[]> {
    const manager = await this.getManager();
    return (await manager.listDevices()).map((d) => this.toInterface(d));
  }

  /** Creates the device, binds it if asked, waits for its char device; deletes it again if that fails. */
  async createInterface(params: CreateInterfaceParams): Promise<InterfaceInfo> {
    const manager = await this.getManager();
    const device = await manager.addDevice({
      name: params.name,
      mgmtdev: params.mgmtdev,
      ...(params.mac === undefined ? {} : { mac: params.mac }),
      ...(params.mtu === undefined ? {} : { mtu: params.mtu }),
      ...(params.maxVqPairs === undefined ? {} : { maxVqPairs: params.maxVqPairs }),
      ...(params.deviceFeatures === undefined ? {} : { deviceFeatures: params.deviceFeatures }),
    });
    const timeoutMs = this.options.charDevTimeoutMs ?? 5000;
    try {
      const current = describeBinding(params.name, this.paths).driver;
      if (params.driver !== undefined && current !== params.driver) {
        await bindDriver(params.name, params.driver, { paths: this.paths, timeoutMs });
      } else if (current === 'vhost_vdpa') {
        await resolveCharDev(params.name, { paths: this.paths, timeoutMs });
      }
    } catch (error) {
      await manager.deleteDevice(params.name).catch(() => undefined);
      throw error;
    }
    return this.toInterface(device);
  }

  async destroyInterface(name: string): Promise<void> {
    const manager = await this.getManager();
    await manager.deleteDevice(name);
  }

  async getStats(name: string, queue: number): ReturnType<ServiceBackend['getStats']> {
    const manager = await this.getManager();
    return manager.getVendorStats(name, queue);
  }

  close(): void {
    const manager = this.manager;
    this.manager = undefined;
    manager?.then((m) => m.close()).catch(() => undefined);
  }
}
