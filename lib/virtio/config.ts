/**
 * Bring-up steps every virtio driver shares: checking the device class,
 * negotiating features (with the ring format the caller asked for) and
 * reading the config space consistently.
 */
import type { VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { bit, hasBit, VirtioF } from '../features';

/** The device operations bring-up needs. */
export type BringUpTransport = Pick<
  VhostVdpaDevice,
  'path' | 'deviceId' | 'negotiate' | 'getConfigSize' | 'getConfig'
>;

/** Ring format choice of a driver's open options. */
export type RingChoice = 'split' | 'packed' | 'auto';

/** What {@link negotiateDevice} returns. */
export interface BringUp {
  /** Negotiated features (FEATURES_OK was accepted). */
  features: bigint;
  /** The config space, read after FEATURES_OK. */
  config: Buffer;
}

/**
 * Checks that `transport` is a virtio device of class `deviceId` (`what`
 * names it in errors), negotiates `wanted` minus `exclude` (plus
 * RING_PACKED unless `ring` is `'split'`), and reads the config space.
 * @throws VdpaError `ERR_UNSUPPORTED` (another device class), `ERR_INVALID_ARG`
 *   (bad `ring`), `ERR_NEGOTIATION` (refused, or `ring: 'packed'` not offered).
 */
export function negotiateDevice(
  transport: BringUpTransport,
  options: { deviceId: number; what: string; wanted: bigint; exclude?: bigint; ring?: RingChoice },
): BringUp {
  const id = transport.deviceId;
  if (id !== options.deviceId) {
    throw new VdpaError(
      `${transport.path} is virtio device ${id}, not a ${options.what} (${options.deviceId})`,
      {
        code: ErrorCodes.UNSUPPORTED,
        path: transport.path,
      },
    );
  }
  const ring = options.ring ?? 'auto';
  if (ring !== 'split' && ring !== 'packed' && ring !== 'auto') {
    throw new VdpaError(`ring must be 'split', 'packed' or 'auto', got ${String(ring)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  const wanted = options.wanted | (ring === 'split' ? 0n : bit(VirtioF.RING_PACKED));
  const { negotiated } = transport.negotiate(wanted & ~(options.exclude ?? 0n));
  if (ring === 'packed' && !hasBit(negotiated, VirtioF.RING_PACKED)) {
    throw new VdpaError(`${transport.path} does not offer VIRTIO_F_RING_PACKED (ring: 'packed' was asked)`, {
      code: ErrorCodes.NEGOTIATION,
      path: transport.path,
    });
  }
  return { features: negotiated, config: readConfigStable(transport) };
}

/** Attempts before {@link readConfigStable} gives up on a config space that keeps changing. */
const CONFIG_READ_ATTEMPTS = 16;

/**
 * Reads the whole config space until two reads in a row agree. vhost-vdpa
 * does not expose the virtio config generation counter (the kernel's own
 * virtio_vdpa driver loops on it), so a device updating its config while we
 * read (a capacity change, say) could otherwise hand us a torn value — half
 * of a 64-bit capacity from before and half from after.
 * @throws VdpaError `ERR_DEVICE_FAILED` when the config never settles.
 */
export function readConfigStable(
  transport: Pick<BringUpTransport, 'path' | 'getConfigSize' | 'getConfig'>,
): Buffer {
  const size = transport.getConfigSize();
  let previous = transport.getConfig(0, size);
  for (let i = 0; i < CONFIG_READ_ATTEMPTS; i++) {
    const current = transport.getConfig(0, size);
    if (current.equals(previous)) return current;
    previous = current;
  }
  throw new VdpaError(
    `${transport.path}: the config space changed on each of ${CONFIG_READ_ATTEMPTS} reads in a row; the device ` +
      'is not settling',
    { code: ErrorCodes.DEVICE_FAILED, path: transport.path },
  );
}
