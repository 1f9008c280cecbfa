/**
 * The vdpa bus in sysfs: which bus driver a device is bound to, rebinding it
 * (vhost_vdpa ↔ virtio_vdpa), finding its /dev/vhost-vdpa-N, and finding the
 * processes that hold that char device open (the kernel waits for them to
 * close it before it can unbind or delete the device).
 * @module
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ErrorCodes, VdpaError } from '../errors';
import { validateDeviceName } from './validate';

/** Where sysfs, devtmpfs and procfs are mounted (overridable for tests). */
export interface SystemPaths {
  sys: string;
  dev: string;
  proc: string;
}

/** The real mount points. */
export const SYSTEM_PATHS: SystemPaths = { sys: '/sys', dev: '/dev', proc: '/proc' };

/** The two vdpa bus drivers. */
export type BusDriver = 'vhost_vdpa' | 'virtio_vdpa';

/** What a device is bound to, and what that gave it. */
export interface DeviceBinding {
  /** The bound bus driver, or null when none is. */
  driver: string | null;
  /** driver_override, when set. */
  driverOverride: string | null;
  /** /dev/vhost-vdpa-N when bound to vhost_vdpa. */
  charDev?: string;
  /** The virtio device (virtioN) when bound to virtio_vdpa. */
  virtioDevice?: string;
  /** Block devices (vda…) or network interfaces the kernel driver created. */
  kernelDevices?: string[];
}

/** A process holding a char device. */
export interface Holder {
  pid: number;
  /** /proc/PID/comm. */
  command: string;
  /** An open file descriptor ('fd') or a mapping (a doorbell: 'mmap'). */
  how: 'fd' | 'mmap';
  fd?: number;
}

function fsError(error: unknown, syscall: string, file: string, message: string): VdpaError {
  const e = error as NodeJS.ErrnoException;
  const code = typeof e.code === 'string' ? e.code : 'EIO';
  return new VdpaError(`${message} (${syscall} ${file}: ${code})`, {
    code,
    ...(typeof e.errno === 'number' ? { errno: Math.abs(e.errno) } : {}),
    syscall,
    path: file,
    cause: error,
  });
}

function busDir(paths: SystemPaths): string {
  return path.join(paths.sys, 'bus', 'vdpa');
}

function deviceDir(name: string, paths: SystemPaths): string {
  return path.join(busDir(paths), 'devices', validateDeviceName(name));
}

/** The names of all vdpa devices in sysfs (including those not created through netlink). */
export function listBusDevices(paths: SystemPaths = SYSTEM_PATHS): string[] {
  try {
    return fs.readdirSync(path.join(busDir(paths), 'devices')).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw fsError(error, 'readdir', path.join(busDir(paths), 'devices'), 'cannot list vdpa devices');
  }
}

/** Whether sysfs has a vdpa device of this name. */
export function deviceExists(name: string, paths: SystemPaths = SYSTEM_PATHS): boolean {
  return fs.existsSync(deviceDir(name, paths));
}

function requireDevice(name: string, paths: SystemPaths): string {
  const dir = deviceDir(name, paths);
  if (!fs.existsSync(dir)) {
    throw new VdpaError(
      `no vdpa device named "${name}" (${dir} does not exist); see \`vhost-vdpa dev list\``,
      {
        code: 'ENODEV',
        path: dir,
      },
    );
  }
  return dir;
}

/** The bus driver `name` is bound to ('vhost_vdpa', 'virtio_vdpa'), or null. */
export function getBoundDriver(name: string, paths: SystemPaths = SYSTEM_PATHS): string | null {
  const link = path.join(requireDevice(name, paths), 'driver');
  try {
    return path.basename(fs.readlinkSync(link));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw fsError(error, 'readlink', link, `cannot read the driver of ${name}`);
  }
}

/** The char device name (vhost-vdpa-N) sysfs lists under the device, if any. */
export function findCharDevName(name: string, paths: SystemPaths = SYSTEM_PATHS): string | null {
  const dir = requireDevice(name, paths);
  const entry = fs.readdirSync(dir).find((e) => /^vhost-vdpa-\d+$/.test(e));
  return entry ?? null;
}

function readTrimmed(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The driver binding of a device and what it produced (char dev, virtio device, disks/interfaces). */
export function describeBinding(name: string, paths: SystemPaths = SYSTEM_PATHS): DeviceBinding {
  const dir = requireDevice(name, paths);
  const override = readTrimmed(path.join(dir, 'driver_override'));
  const binding: DeviceBinding = {
    driver: getBoundDriver(name, paths),
    driverOverride: override === null || override === '(null)' || override === '' ? null : override,
  };
  const charDev = findCharDevName(name, paths);
  if (charDev !== null) binding.charDev = path.join(paths.dev, charDev);
  const virtio = fs.readdirSync(dir).find((e) => /^virtio\d+$/.test(e));
  if (virtio !== undefined) {
    binding.virtioDevice = virtio;
    const kernelDevices: string[] = [];
    for (const kind of ['block', 'net']) {
      try {
        kernelDevices.push(...fs.readdirSync(path.join(dir, virtio, kind)));
      } catch {
        // This virtio device has no disk / no interface.
      }
    }
    binding.kernelDevices = kernelDevices.sort();
  }
  return binding;
}

/** Options of waits on sysfs. */
export interface WaitOptions {
  /** Give up after this many milliseconds (default 5000). */
  timeoutMs?: number;
  /** Poll interval (default 20 ms). */
  intervalMs?: number;
  paths?: SystemPaths;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The char device of a vdpa device bound to vhost_vdpa: finds vhost-vdpa-N in
 * sysfs, then waits for /dev/vhost-vdpa-N to appear (udev may lag). Rejects
 * with ENODEV for an unknown device, ERR_WRONG_DRIVER (with the command that
 * fixes it) when it is bound to another driver, and ETIMEDOUT when the node
 * does not appear in time.
 */
export async function resolveCharDev(name: string, options: WaitOptions = {}): Promise<string> {
  const paths = options.paths ?? SYSTEM_PATHS;
  const timeoutMs = options.timeoutMs ?? 5000;
  const intervalMs = options.intervalMs ?? 20;
  const deadline = Date.now() + timeoutMs;
  let lastState = '';
  for (;;) {
    requireDevice(name, paths);
    const driver = getBoundDriver(name, paths);
    if (driver !== null && driver !== 'vhost_vdpa') {
      throw new VdpaError(
        `vdpa device "${name}" is bound to ${driver}, so it has no /dev/vhost-vdpa-N; ` +
          `run \`vhost-vdpa dev bind ${name} vhost\` to hand it to vhost_vdpa`,
        { code: ErrorCodes.WRONG_DRIVER, path: deviceDir(name, paths) },
      );
    }
    const charDev = findCharDevName(name, paths);
    if (charDev !== null) {
      const node = path.join(paths.dev, charDev);
      if (fs.existsSync(node)) return node;
      lastState = `sysfs lists ${charDev} but ${node} does not exist (is devtmpfs mounted on ${paths.dev}, is udev running?)`;
    } else {
      lastState =
        driver === null
          ? `it is not bound to any driver (is vhost_vdpa loaded? \`modprobe vhost_vdpa\`, then \`vhost-vdpa dev bind ${name} vhost\`)`
          : 'vhost_vdpa has not created its char device yet';
    }
    if (Date.now() >= deadline) {
      throw new VdpaError(`no char device for vdpa device "${name}" after ${timeoutMs} ms: ${lastState}`, {
        code: ErrorCodes.TIMEOUT,
        path: deviceDir(name, paths),
      });
    }
    await sleep(intervalMs);
  }
}

/**
 * The processes that hold `devPath` (a char device) open, through a file
 * descriptor or a mapping. Processes whose /proc entries cannot be read (not
 * root) are skipped, so an empty answer from an unprivileged caller is not proof.
 */
export function findHolders(devPath: string, paths: SystemPaths = SYSTEM_PATHS): Holder[] {
  let target: fs.Stats;
  try {
    target = fs.statSync(devPath);
  } catch {
    return [];
  }
  const holders: Holder[] = [];
  const pids = fs.readdirSync(paths.proc).filter((e) => /^\d+$/.test(e));
  for (const pidText of pids) {
    const pid = Number(pidText);
    const procDir = path.join(paths.proc, pidText);
    const command = readTrimmed(path.join(procDir, 'comm')) ?? '?';
    let fds: string[] = [];
    try {
      fds = fs.readdirSync(path.join(procDir, 'fd'));
    } catch {
      // Exited, or not ours to read.
    }
    for (const fd of fds) {
      const link = path.join(procDir, 'fd', fd);
      try {
        const where = fs.readlinkSync(link);
        if (!where.startsWith('/')) continue; // socket:[…], pipe:[…], anon_inode:…
        const st = fs.statSync(link);
        if (st.isCharacterDevice() && st.rdev === target.rdev)
          holders.push({ pid, command, how: 'fd', fd: Number(fd) });
      } catch {
        // Closed meanwhile.
      }
    }
    const maps = readTrimmed(path.join(procDir, 'maps'));
    if (maps !== null && !holders.some((h) => h.pid === pid)) {
      for (const line of maps.split('\n')) {
        // address perms offset dev inode pathname
        const fields = line.trim().split(/\s+/);
        if (fields.length >= 6 && Number(fields[4]) === target.ino && fields.slice(5).join(' ') === devPath) {
          holders.push({ pid, command, how: 'mmap' });
          break;
        }
      }
    }
  }
  return holders;
}

/** "pid 123 (node) via fd 21, pid 7 (qemu) via a mapping". */
export function describeHolders(holders: Holder[]): string {
  return holders
    .map((h) => `pid ${h.pid} (${h.command}) via ${h.how === 'fd' ? `fd ${String(h.fd)}` : 'a mapping'}`)
    .join(', ');
}

function refuseIfHeld(name: string, paths: SystemPaths, action: string): void {
  const charDev = findCharDevName(name, paths);
  if (charDev === null) return;
  const node = path.join(paths.dev, charDev);
  const holders = findHolders(node, paths);
  if (holders.length > 0) {
    throw new VdpaError(
      `cannot ${action} "${name}": ${node} is open in ${describeHolders(holders)}; ` +
        'the kernel would wait until it is closed. Close it (or stop that process) and retry.',
      { code: 'EBUSY', path: node },
    );
  }
}

/**
 * Refuses (EBUSY, naming the processes) when the device's vhost-vdpa char
 * device is open: deleting or unbinding it would block until they close it.
 */
export function assertNotHeld(name: string, action: string, paths: SystemPaths = SYSTEM_PATHS): void {
  refuseIfHeld(name, paths, action);
}

function writeSysfs(file: string, value: string, message: string): void {
  try {
    fs.writeFileSync(file, value);
  } catch (error) {
    throw fsError(error, 'write', file, message);
  }
}

/**
 * {@link writeSysfs} from the libuv thread pool, for writes the kernel may
 * make wait: unbinding vhost_vdpa waits for the last close of the char device.
 */
async function writeSysfsOffLoop(file: string, value: string, message: string): Promise<void> {
  try {
    await fs.promises.writeFile(file, value);
  } catch (error) {
    throw fsError(error, 'write', file, message);
  }
}

/**
 * Binds `name` to `driver` (vhost_vdpa or virtio_vdpa): sets driver_override
 * so the choice sticks, unbinds the current driver, binds the new one, and
 * for vhost_vdpa waits for the char device. Refuses with EBUSY when the
 * current vhost-vdpa char device is open.
 */
export async function bindDriver(
  name: string,
  driver: BusDriver,
  options: WaitOptions = {},
): Promise<DeviceBinding> {
  const paths = options.paths ?? SYSTEM_PATHS;
  const dir = requireDevice(name, paths);
  if (driver !== 'vhost_vdpa' && driver !== 'virtio_vdpa') {
    throw new VdpaError(`driver must be vhost_vdpa or virtio_vdpa, not ${JSON.stringify(driver)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  const driverDir = path.join(busDir(paths), 'drivers', driver);
  if (!fs.existsSync(driverDir)) {
    throw new VdpaError(`the ${driver} driver is not loaded: run \`modprobe ${driver}\``, {
      code: 'ENOENT',
      path: driverDir,
    });
  }
  const current = getBoundDriver(name, paths);
  writeSysfs(path.join(dir, 'driver_override'), driver, `cannot set driver_override of ${name}`);
  if (current !== driver) {
    if (current !== null) {
      if (current === 'vhost_vdpa') refuseIfHeld(name, paths, 'unbind');
      // Off the loop: a holder that opened the device after the check makes the kernel wait.
      await writeSysfsOffLoop(
        path.join(busDir(paths), 'drivers', current, 'unbind'),
        name,
        `cannot unbind ${name} from ${current}`,
      );
    }
    writeSysfs(path.join(driverDir, 'bind'), name, `cannot bind ${name} to ${driver}`);
  }
  if (driver === 'vhost_vdpa') await resolveCharDev(name, { ...options, paths });
  return describeBinding(name, paths);
}
