/**
 * Connecting a virtqueue to a vhost-vdpa device: the per-queue ioctls in the
 * order the kernel expects, and the notification path (a mapped doorbell page
 * when the parent has one, otherwise the kick eventfd).
 */
import type { Doorbell, VhostVdpaDevice } from '../device';
import { EventFd } from '../eventfd';
import type { Virtqueue } from './types';

/** The device operations a queue needs; {@link VhostVdpaDevice} has them all (tests substitute a fake). */
export type VirtqueueTransport = Pick<
  VhostVdpaDevice,
  | 'path'
  | 'setVringNum'
  | 'setVringBase'
  | 'setVringAddr'
  | 'setVringKick'
  | 'setVringCall'
  | 'setVringEnable'
  | 'mapDoorbell'
>;

/** How a queue notifies its device. */
export type NotificationPath = 'doorbell' | 'eventfd';

/**
 * The kick side of one queue. The kick eventfd is always registered
 * (VHOST_SET_VRING_KICK) because the kernel polls it whatever else exists;
 * {@link notify} prefers the doorbell page, which needs no system call.
 */
export class QueueNotifier {
  /** Queue index. */
  readonly index: number;
  /** The eventfd registered with VHOST_SET_VRING_KICK. */
  readonly kick: EventFd;
  readonly #doorbell: Doorbell | undefined;

  private constructor(index: number, kick: EventFd, doorbell: Doorbell | undefined) {
    this.index = index;
    this.kick = kick;
    this.#doorbell = doorbell;
  }

  /**
   * Creates the kick eventfd and, unless `useDoorbell` is false, tries to map
   * the queue's doorbell. Parents without notification areas (vdpa_sim,
   * VDUSE) refuse the mapping (ENOTSUPP); the eventfd is used then.
   */
  static create(device: VirtqueueTransport, index: number, useDoorbell = true): QueueNotifier {
    const kick = new EventFd();
    let doorbell: Doorbell | undefined;
    if (useDoorbell) {
      try {
        doorbell = device.mapDoorbell(index);
      } catch {
        // No notification area: ENOTSUPP (vdpa_sim, VDUSE) or EINVAL on odd
        // parents. The eventfd works everywhere, so this is not an error.
        doorbell = undefined;
      }
    }
    return new QueueNotifier(index, kick, doorbell);
  }

  /** Which path {@link notify} takes. */
  get path(): NotificationPath {
    return this.#doorbell === undefined ? 'eventfd' : 'doorbell';
  }

  /** Notifies the device: one store to the doorbell page, or one write(2) to the eventfd. */
  notify(): void {
    if (this.#doorbell !== undefined) this.#doorbell.notify();
    else this.kick.signal(1);
  }

  /** Unmaps the doorbell and closes the eventfd. Idempotent. */
  close(): void {
    this.#doorbell?.unmap();
    this.kick.close();
  }
}

/**
 * Programs queue `vq.index` on the device: SET_VRING_NUM, SET_VRING_BASE
 * (`vq.vringBase`: 0 for a new split ring; a packed ring's wrap counters in
 * bits 15 and 31), SET_VRING_ADDR (IOVAs: descriptors and driver/device areas),
 * SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ENABLE(1).
 * Call after feature negotiation and after the ring memory is mapped, before
 * DRIVER_OK (SET_VRING_ADDR/BASE fail with EINVAL on a running device).
 */
export function attachVirtqueue(
  device: VirtqueueTransport,
  vq: Virtqueue<unknown>,
  kickFd: number,
  callFd: number,
): void {
  device.setVringNum(vq.index, vq.size);
  device.setVringBase(vq.index, vq.vringBase);
  device.setVringAddr(vq.index, vq.addresses);
  device.setVringKick(vq.index, kickFd);
  device.setVringCall(vq.index, callFd);
  device.setVringEnable(vq.index, true);
}
