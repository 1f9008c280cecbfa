/**
 * eventfd wrapper: the kick, call and config notification channel between a
 * driver and vhost-vdpa. Completions are delivered through libuv (`uv_poll`)
 * on the loop thread, one callback per wake-up with the accumulated count.
 */
import { ErrorCodes, VdpaError } from './errors';
import { native, NativeEventFd } from './native';

/** Called with the number of signals accumulated since the last call. */
export type EventFdListener = (count: number) => void;

/** A non-blocking, close-on-exec eventfd. */
export class EventFd {
  readonly #native: NativeEventFd;
  #closed = false;

  constructor() {
    this.#native = new native.EventFd();
  }

  /** The descriptor, for VHOST_SET_VRING_KICK/CALL and friends. -1 once closed. */
  get fd(): number {
    return this.#native.fd;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Adds `value` (default 1) to the counter: a kick, seen from the device side. */
  signal(value = 1): void {
    this.#check();
    this.#native.signal(value);
  }

  /** Reads and resets the counter; 0 when nothing was signalled. */
  read(): number {
    this.#check();
    return this.#native.read();
  }

  /**
   * Calls `listener(count)` on the event loop whenever the eventfd is signalled.
   * `onError` receives read errors (none are expected on a healthy eventfd).
   * Replaces any previous listener.
   */
  watch(listener: EventFdListener, onError?: (error: Error) => void): void {
    this.#check();
    this.#native.watch((count, error) => {
      if (error !== undefined) {
        if (onError !== undefined) onError(error);
        return;
      }
      listener(count ?? 0);
    });
  }

  /** Stops watching. */
  unwatch(): void {
    if (!this.#closed) this.#native.unwatch();
  }

  /** Whether an active watch keeps the process alive (default true), like `timer.ref()/unref()`. */
  setRef(referenced: boolean): void {
    this.#check();
    this.#native.setRef(referenced);
  }

  /** Stops watching and closes the descriptor. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
  }

  #check(): void {
    if (this.#closed) throw new VdpaError('eventfd is closed', { code: ErrorCodes.CLOSED });
  }
}
