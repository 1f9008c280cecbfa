/**
 * vDPA device management: the kernel's `vdpa` generic netlink family and the
 * vdpa bus in sysfs.
 * @module
 */
export {
  VdpaManager,
  explainMissingFamily,
  type AddDeviceOptions,
  type BlkDeviceConfig,
  type DeleteOptions,
  type ManagerOptions,
  type MgmtDevice,
  type NetDeviceConfig,
  type VdpaDeviceConfig,
  type VdpaDeviceInfo,
  type VdpaManagement,
  type VendorCounter,
  type VendorStats,
} from './vdpa';
export {
  assertNotHeld,
  bindDriver,
  describeBinding,
  describeHolders,
  deviceExists,
  findCharDevName,
  findHolders,
  getBoundDriver,
  listBusDevices,
  resolveCharDev,
  SYSTEM_PATHS,
  type BusDriver,
  type DeviceBinding,
  type Holder,
  type SystemPaths,
  type WaitOptions,
} from './sysfs';
export { NetlinkRequestError } from './genl';
export type { NetlinkTransport } from './native-netlink';
