/**
 * /dev/vduse/control: API version, creating and destroying VDUSE devices, and
 * the checks VDUSE applies at creation (done here first, so a refusal says
 * which rule was broken instead of a bare EINVAL).
 * @module
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ErrorCodes, VdpaError } from '../errors';
import { hasBit, VirtioBlkF, VirtioF, VirtioNetF } from '../features';
import { native, PAGE_SIZE, type NativeVduseFile } from '../native';
import { VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from '../uapi';
import * as uapi from './uapi';

/** Where the VDUSE files are (tests point these elsewhere). */
export interface VdusePaths {
  /** /dev/vduse */
  devDir: string;
  /** /sys/class/vduse */
  sysfsDir: string;
}

export const VDUSE_PATHS: VdusePaths = { devDir: uapi.VDUSE_DEV_DIR, sysfsDir: uapi.VDUSE_SYSFS_DIR };

/** What VDUSE_CREATE_DEV needs. */
export interface VduseCreateOptions {
  /** Device name: /dev/vduse/NAME and the name `vdpa dev add … mgmtdev vduse` takes. */
  name: string;
  deviceType: 'block' | 'net';
  /** Offered features; VDUSE requires VERSION_1 and ACCESS_PLATFORM. */
  features: bigint;
  /** The device's config space (virtio_blk_config / virtio_net_config bytes). */
  config: Uint8Array;
  /** Number of virtqueues. */
  queueCount: number;
  /** PCI-style vendor id reported to the driver (default 0). */
  vendorId?: number;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]*$/;

/** Validates a VDUSE device name (what /dev/vduse/NAME and the vdpa bus accept). */
export function validateVduseName(name: unknown): string {
  if (typeof name !== 'string' || !NAME_RE.test(name) || name.length >= uapi.VDUSE_NAME_MAX) {
    throw new VdpaError(
      `VDUSE device name ${JSON.stringify(name)} is invalid: use 1-255 characters from A-Z a-z 0-9 _ . : - ` +
        '(it becomes /dev/vduse/NAME and the vdpa device name)',
      { code: ErrorCodes.INVALID_ARG },
    );
  }
  return name;
}

function refuse(message: string): never {
  throw new VdpaError(message, { code: ErrorCodes.NEGOTIATION });
}

/**
 * The checks of the kernel's vduse_validate_config()/features_is_valid() (6.12), with the rule that failed in
 * the message. Throws ERR_NEGOTIATION (features) or ERR_OUT_OF_RANGE (sizes).
 */
export function validateCreateOptions(options: VduseCreateOptions): void {
  validateVduseName(options.name);
  const f = options.features;
  if (!hasBit(f, VirtioF.ACCESS_PLATFORM)) {
    refuse(
      'VDUSE refuses devices that do not offer VIRTIO_F_ACCESS_PLATFORM (bit 33): the driver must go through ' +
        "VDUSE's IOTLB (vduse_dev_create checks it); add the bit to the features",
    );
  }
  if (!hasBit(f, VirtioF.VERSION_1)) {
    refuse(
      'VDUSE devices must offer VIRTIO_F_VERSION_1 (bit 32): legacy virtio is not supported; add the bit',
    );
  }
  if (options.deviceType === 'block' && hasBit(f, VirtioBlkF.CONFIG_WCE)) {
    refuse(
      'VDUSE refuses block devices offering VIRTIO_BLK_F_CONFIG_WCE (bit 11): the config space is read-only',
    );
  }
  if (options.deviceType === 'net' && hasBit(f, VirtioNetF.CTRL_VQ)) {
    refuse(
      'VDUSE (Linux 6.12) refuses net devices offering VIRTIO_NET_F_CTRL_VQ (bit 17), so it has no control ' +
        'queue and no multiqueue (kernel commit 56e71885b034); leave CTRL_VQ and MQ out',
    );
  }
  if (options.config.length > PAGE_SIZE) {
    throw new VdpaError(`config space of ${options.config.length} bytes exceeds VDUSE's limit of one page`, {
      code: ErrorCodes.OUT_OF_RANGE,
    });
  }
  if (!Number.isInteger(options.queueCount) || options.queueCount < 1 || options.queueCount > 0xffff) {
    throw new VdpaError(`queue count ${options.queueCount} must be 1-65535`, {
      code: ErrorCodes.OUT_OF_RANGE,
    });
  }
}

/** Turns an open() failure of /dev/vduse/control into an error that says how to get VDUSE. */
function explainOpen(error: unknown, controlPath: string): never {
  const code = (error as { code?: string }).code;
  if (code === 'ENOENT') {
    throw new VdpaError(
      `${controlPath} does not exist: the vduse kernel module is not loaded (modprobe vduse; the kernel needs ` +
        'CONFIG_VDPA_USER), or /dev is not devtmpfs',
      { code: 'ENOENT', errno: 2, syscall: 'open', path: controlPath, cause: error },
    );
  }
  if (code === 'EACCES' || code === 'EPERM') {
    throw new VdpaError(
      `${controlPath}: permission denied; creating VDUSE devices needs root (CAP_SYS_ADMIN)`,
      {
        code,
        syscall: 'open',
        path: controlPath,
        cause: error,
      },
    );
  }
  throw error;
}

/** An open /dev/vduse/control at API version 0. */
export class VduseControl {
  private constructor(
    private readonly file: NativeVduseFile,
    /** The paths in use. */
    readonly paths: VdusePaths,
  ) {}

  /** Opens the control device and sets API version 0 (the one 6.12 speaks). */
  static open(paths: VdusePaths = VDUSE_PATHS): VduseControl {
    const controlPath = path.join(paths.devDir, 'control');
    let file: NativeVduseFile;
    try {
      file = new native.VduseFile(controlPath, false);
    } catch (error) {
      explainOpen(error, controlPath);
    }
    try {
      const version = Buffer.alloc(8);
      file.ioctl(uapi.VDUSE_GET_API_VERSION, 'VDUSE_GET_API_VERSION', version);
      const wanted = Buffer.alloc(8);
      wanted.writeBigUInt64LE(uapi.VDUSE_API_VERSION);
      file.ioctl(uapi.VDUSE_SET_API_VERSION, 'VDUSE_SET_API_VERSION', wanted);
    } catch (error) {
      file.close();
      throw error;
    }
    return new VduseControl(file, paths);
  }

  /** Whether a VDUSE device of this name exists (its /dev/vduse/NAME or sysfs node). */
  exists(name: string): boolean {
    return (
      fs.existsSync(path.join(this.paths.devDir, name)) || fs.existsSync(path.join(this.paths.sysfsDir, name))
    );
  }

  /** VDUSE_CREATE_DEV, after {@link validateCreateOptions}; errors say what to do. */
  create(options: VduseCreateOptions): void {
    validateCreateOptions(options);
    const arg = uapi.encodeDevConfig({
      name: options.name,
      vendorId: options.vendorId ?? 0,
      deviceId: options.deviceType === 'block' ? VIRTIO_ID_BLOCK : VIRTIO_ID_NET,
      features: options.features,
      vqNum: options.queueCount,
      vqAlign: PAGE_SIZE,
      config: options.config,
    });
    try {
      this.file.ioctl(uapi.VDUSE_CREATE_DEV, 'VDUSE_CREATE_DEV', arg);
    } catch (error) {
      const code = (error as { code?: string }).code;
      const what = `creating VDUSE device "${options.name}"`;
      if (code === 'EEXIST') {
        rethrow(
          error,
          `${what}: the name is in use. If a daemon that served it died, destroy the stale device ` +
            `(\`vhost-vdpa vduse blk --name ${options.name} …\` does that on start; or delete its vdpa device ` +
            'and call VDUSE_DESTROY_DEV); otherwise choose another name',
        );
      }
      if (code === 'EPERM') {
        rethrow(
          error,
          `${what}: permission denied; VDUSE needs CAP_SYS_ADMIN` +
            (options.deviceType === 'net' ? ' and, for net devices, CAP_NET_ADMIN' : '') +
            ' (run as root)',
        );
      }
      if (code === 'EINVAL') {
        rethrow(
          error,
          `${what}: the kernel refused the configuration (features 0x${options.features.toString(16)}, ` +
            `${options.queueCount} queues, ${options.config.length} config bytes). Net devices need Linux 6.9+; ` +
            'see docs/vduse.md for the rules',
        );
      }
      throw error;
    }
  }

  /** VDUSE_DESTROY_DEV. EBUSY: still on the vdpa bus or its device file is open. */
  destroy(name: string): void {
    try {
      this.file.ioctl(uapi.VDUSE_DESTROY_DEV, 'VDUSE_DESTROY_DEV', uapi.encodeName(name));
    } catch (error) {
      const code = (error as { code?: string }).code;
      if (code === 'EBUSY') {
        rethrow(
          error,
          `VDUSE device "${name}" is busy: it is still a vdpa device (delete it first: vhost-vdpa dev del ${name}) ` +
            `or a process has /dev/vduse/${name} open (its daemon is running)`,
        );
      }
      if (code === 'EINVAL') rethrow(error, `there is no VDUSE device named "${name}"`);
      throw error;
    }
  }

  close(): void {
    this.file.close();
  }
}

function rethrow(error: unknown, message: string): never {
  const e = error as VdpaError;
  throw new VdpaError(message, {
    code: e.code,
    ...(e.errno === undefined ? {} : { errno: e.errno }),
    ...(e.syscall === undefined ? {} : { syscall: e.syscall }),
    cause: error,
  });
}

/** The device's msg_timeout in seconds (0 = wait forever), or undefined when sysfs lacks it. */
export function readMsgTimeout(name: string, paths: VdusePaths = VDUSE_PATHS): number | undefined {
  try {
    return Number(fs.readFileSync(path.join(paths.sysfsDir, name, 'msg_timeout'), 'utf8').trim());
  } catch {
    return undefined;
  }
}
