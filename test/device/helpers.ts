/**
 * Where the device suite finds its devices: the lab's VDPA_LAB_DEVICES (JSON),
 * or VDPA_DEVICE=/dev/vhost-vdpa-N on a host that has one. With neither, the
 * suites register a failing test: a device suite that silently skips proves
 * nothing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { VhostVdpaDevice, VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from '../../lib';

/** A device the suite may use. */
export interface TestDevice {
  /** vdpa device name (lab) or the path. */
  name: string;
  /** Management device (lab only): 'vdpasim_blk', 'vduse', 'vdpasim_net'. */
  mgmtdev?: string;
  class: 'block' | 'net' | 'other';
  /** /dev/vhost-vdpa-N */
  chardev: string;
  /** VDUSE: the file qemu-storage-daemon serves. */
  backingFile?: string;
  /**
   * Lab devices with a property the general-purpose ones lack: `'mq'` (vduse-mq, two request queues) and `'ro'`
   * (vduse-ro, read-only). {@link forEachDevice} leaves them out; tests find them with {@link labVariant}.
   */
  variant?: 'mq' | 'ro';
}

function fromLab(): TestDevice[] | undefined {
  const raw =
    process.env.VDPA_LAB_DEVICES ??
    (existsSync('/run/vdpa-lab.json') ? readFileSync('/run/vdpa-lab.json', 'utf8') : undefined);
  if (raw === undefined) return undefined;
  return (JSON.parse(raw) as TestDevice[]).filter((d) => d.chardev !== undefined && d.chardev !== '');
}

function fromEnv(): TestDevice[] | undefined {
  const value = process.env.VDPA_DEVICE;
  if (value === undefined || value === '') return undefined;
  return value.split(',').map((chardev) => {
    const device = VhostVdpaDevice.open(chardev);
    try {
      const id = device.deviceId;
      const cls = id === VIRTIO_ID_BLOCK ? 'block' : id === VIRTIO_ID_NET ? 'net' : 'other';
      return { name: chardev, class: cls, chardev };
    } finally {
      device.close();
    }
  });
}

/** All devices available to the suite (possibly empty). */
export function testDevices(): TestDevice[] {
  return fromEnv() ?? fromLab() ?? [];
}

const HOW =
  'no vhost-vdpa device to test against: run `npm test` (boots the lab VM) or set ' +
  'VDPA_DEVICE=/dev/vhost-vdpa-N on a host that has one';

/**
 * Runs `body` once per general-purpose device of `cls` (no `variant`) inside a
 * describe block named after it. With no such device, registers one failing test that says how to get one.
 */
export function forEachDevice(
  cls: TestDevice['class'],
  title: string,
  body: (device: TestDevice) => void,
): void {
  const devices = testDevices().filter((d) => d.class === cls && d.variant === undefined);
  if (devices.length === 0) {
    describe(title, () => {
      it(`has a ${cls} device to test against`, () => {
        throw new Error(HOW);
      });
    });
    return;
  }
  for (const device of devices) {
    describe(`${title} [${device.name}${device.mgmtdev === undefined ? '' : ' on ' + device.mgmtdev}]`, () =>
      body(device));
  }
}

/** The lab device with this name; throws (failing the test) when absent. */
export function labDevice(name: string): TestDevice {
  const device = testDevices().find((d) => d.name === name);
  if (device === undefined) throw new Error(`lab device ${name} not found. ${HOW}`);
  return device;
}

/** The lab device of this variant (vduse-mq, vduse-ro); throws (failing the test) when absent. */
export function labVariant(variant: NonNullable<TestDevice['variant']>): TestDevice {
  const device = testDevices().find((d) => d.variant === variant);
  if (device === undefined) throw new Error(`no lab device with variant "${variant}". ${HOW}`);
  return device;
}

/** Polls `probe` every 50 ms until it returns a value, or throws after `timeoutMs`. */
export async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 10000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Runs a command and returns stdout; throws with stderr on failure. */
export function sh(command: string, args: string[]): string {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawnSync } = require('node:child_process') as typeof import('node:child_process');
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0)
    throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr}`);
  return result.stdout;
}
