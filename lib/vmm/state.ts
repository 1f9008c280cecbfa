/**
 * The saved state of a paused vDPA device ({@link DeviceState}): what a VMM
 * writes to a file (or sends to another host) so another device can take over
 * the guest's rings. Plain JSON: bigints as hex strings, config as hex.
 */
import { ErrorCodes, VdpaError } from '../errors';

/** The ring position a device reports with VHOST_GET_VRING_BASE, decoded. */
export interface RingBase {
  /** The raw 32-bit value for VHOST_SET_VRING_BASE. */
  raw: number;
  /** Split: the next avail index the device will read (last_avail_idx). Packed: the avail index (bits 0-14). */
  availIdx: number;
  /** Packed only: the driver ring wrap counter (bit 15). */
  availWrap?: boolean;
  /** Packed only: the used index (bits 16-30). */
  usedIdx?: number;
  /** Packed only: the device ring wrap counter (bit 31). */
  usedWrap?: boolean;
}

/** One queue of a {@link DeviceState}. */
export interface QueueState {
  index: number;
  size: number;
  /** GPAs (or IOVAs in iommu mode) as hex strings. */
  descGpa: string;
  availGpa: string;
  usedGpa: string;
  enabled: boolean;
  base: RingBase;
}

/** How the queue positions were obtained. */
export type PauseMethod = 'suspend' | 'reset-and-rewind';

/** A paused device, JSON-serialisable. */
export interface DeviceState {
  /** Format version of this object. */
  version: 1;
  /** The backend's `id` (cloud-hypervisor's `id=`). */
  id: string;
  /** The device it was saved from. */
  source: string;
  /** Virtio device id (2 = block, 1 = net). */
  deviceId: number;
  /** The negotiated virtio features, hex. */
  features: string;
  /** Guest IOMMU in use: ring addresses are IOVAs, not GPAs. */
  iommu: boolean;
  /** The whole config space at the pause, hex. */
  config: string;
  /**
   * `suspend`: bases read from the suspended device. `reset-and-rewind`: the device could not
   * suspend; it was reset, and each base is the guest's used index, so the next device
   * re-executes every request the old one had taken but not completed.
   */
  method: PauseMethod;
  /** Per queue: chains the guest had made available but not seen used at the pause (avail idx − used idx). */
  inFlightAtPause: number[];
  /**
   * `reset-and-rewind` only: per queue, avail idx − used idx at the reset. These requests were not taken by the
   * old device, or were taken and dropped by its reset; the next device executes them.
   */
  requeued?: number[];
  queues: QueueState[];
}

/** Decodes VHOST_GET_VRING_BASE (facts B.1): split = last_avail_idx; packed = idx|wrap<<15|used<<16|wrap<<31. */
export function decodeRingBase(raw: number, packed: boolean): RingBase {
  if (!packed) return { raw, availIdx: raw & 0xffff };
  return {
    raw,
    availIdx: raw & 0x7fff,
    availWrap: (raw & 0x8000) !== 0,
    usedIdx: (raw >>> 16) & 0x7fff,
    usedWrap: (raw & 0x80000000) !== 0,
  };
}

function fail(what: string): never {
  throw new VdpaError(`not a saved device state: ${what}`, { code: ErrorCodes.INVALID_ARG });
}

function isHex(value: unknown): value is string {
  return typeof value === 'string' && /^0x[0-9a-f]+$/i.test(value);
}

/**
 * Checks a parsed JSON object is a {@link DeviceState} (a file written by {@link serializeDeviceState}).
 * @throws VdpaError `ERR_INVALID_ARG` naming the first field that is wrong.
 */
export function parseDeviceState(json: string | unknown): DeviceState {
  let value: unknown = json;
  if (typeof json === 'string') {
    try {
      value = JSON.parse(json);
    } catch (error) {
      fail(`invalid JSON (${(error as Error).message})`);
    }
  }
  if (typeof value !== 'object' || value === null) fail('not an object');
  const s = value as Record<string, unknown>;
  if (s.version !== 1) fail(`version ${String(s.version)} (expected 1)`);
  if (typeof s.id !== 'string' || typeof s.source !== 'string') fail('id/source');
  if (!Number.isInteger(s.deviceId)) fail('deviceId');
  if (!isHex(s.features)) fail('features');
  if (typeof s.iommu !== 'boolean') fail('iommu');
  if (typeof s.config !== 'string' || !/^[0-9a-f]*$/i.test(s.config)) fail('config');
  if (s.method !== 'suspend' && s.method !== 'reset-and-rewind') fail(`method ${String(s.method)}`);
  if (!Array.isArray(s.queues) || s.queues.length === 0) fail('queues');
  if (!Array.isArray(s.inFlightAtPause)) fail('inFlightAtPause');
  for (const [i, q] of (s.queues as unknown[]).entries()) {
    const queue = q as Record<string, unknown>;
    if (queue.index !== i) fail(`queues[${i}].index`);
    if (!Number.isInteger(queue.size)) fail(`queues[${i}].size`);
    for (const key of ['descGpa', 'availGpa', 'usedGpa']) if (!isHex(queue[key])) fail(`queues[${i}].${key}`);
    if (typeof queue.enabled !== 'boolean') fail(`queues[${i}].enabled`);
    const base = queue.base as Record<string, unknown> | undefined;
    if (base === undefined || !Number.isInteger(base.raw) || (base.raw as number) < 0)
      fail(`queues[${i}].base`);
  }
  return value as DeviceState;
}

/** The state as a JSON text (what a VMM writes to its state file). */
export function serializeDeviceState(state: DeviceState): string {
  return JSON.stringify(state, null, 2) + '\n';
}
