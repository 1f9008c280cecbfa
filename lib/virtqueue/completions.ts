/**
 * How completions reach the driver: the call eventfd through libuv's uv_poll
 * (one callback per wake-up, however many completions), or busy polling of the
 * used rings from the event loop for the lowest latency.
 */
import { performance } from 'node:perf_hooks';
import type { EventFd } from '../eventfd';

/**
 * `'interrupt'`: sleep until the device signals the call eventfd.
 * `'poll'`: while requests are in flight, check the used rings on every turn of
 * the event loop (setImmediate) and ask the device not to interrupt. Costs a
 * CPU while busy; other JavaScript still runs between checks.
 */
export type CompletionMode = 'interrupt' | 'poll';

/** Options for {@link CompletionDriver}. */
export interface CompletionDriverOptions {
  mode: CompletionMode;
  /**
   * Poll mode only: when a check finds nothing, keep re-checking for up to this
   * many microseconds before yielding to the event loop. 0 (default) yields at
   * once; a few tens of µs trade CPU for latency at queue depth 1.
   */
  spinMicros?: number;
}

/**
 * Calls `service()` when completions may be waiting. `service` collects from
 * the used rings and returns how many it found; `busy` says whether anything
 * is in flight (poll mode stops when nothing is).
 */
export class CompletionDriver {
  readonly mode: CompletionMode;
  readonly #calls: readonly EventFd[];
  readonly #service: () => number;
  readonly #busy: () => boolean;
  readonly #spinMs: number;
  #polling = false;
  #closed = false;
  /** Wake-ups from the call eventfds. */
  interrupts = 0;
  /** Poll-mode checks. */
  polls = 0;

  constructor(
    calls: readonly EventFd[],
    service: () => number,
    busy: () => boolean,
    options: CompletionDriverOptions,
  ) {
    this.mode = options.mode;
    this.#calls = calls;
    this.#service = service;
    this.#busy = busy;
    this.#spinMs = (options.spinMicros ?? 0) / 1000;
    // The call eventfd is watched in both modes: in poll mode the device was
    // only asked not to interrupt, and a device that does anyway is served.
    const onCall = (): void => {
      this.interrupts++;
      this.#service();
    };
    for (const call of calls) call.watch(onCall);
  }

  /** Tells the driver requests were submitted; in poll mode this starts the polling loop. */
  submitted(): void {
    if (this.mode === 'poll' && !this.#polling && !this.#closed) {
      this.#polling = true;
      setImmediate(this.#poll);
    }
  }

  /** Whether open watches keep the process alive (like `socket.ref()/unref()`). */
  setRef(referenced: boolean): void {
    for (const call of this.#calls) call.setRef(referenced);
  }

  /** Stops watching and polling; the eventfds themselves belong to the caller. */
  close(): void {
    this.#closed = true;
    for (const call of this.#calls) call.unwatch();
  }

  readonly #poll = (): void => {
    if (this.#closed) {
      this.#polling = false;
      return;
    }
    this.polls++;
    let found = this.#service();
    if (found === 0 && this.#spinMs > 0 && this.#busy()) {
      const until = performance.now() + this.#spinMs;
      while (found === 0 && performance.now() < until) found = this.#service();
    }
    if (this.#busy()) setImmediate(this.#poll);
    else this.#polling = false;
  };
}
