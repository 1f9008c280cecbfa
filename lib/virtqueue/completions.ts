/**
 * How completions reach the driver: the call eventfd through libuv's uv_poll
 * (one callback per wake-up, however many completions), or busy polling of the
 * used rings for the lowest latency.
 *
 * ## The poll loop and the event loop
 *
 * A poll *round* calls `service()` (which publishes what was submitted and
 * collects completions) and, when it finds nothing, re-checks for up to
 * `spinMicros`. Completions resolve promises whose reactions — typically the
 * caller's `await` continuation, which submits the next request — run only
 * after the round returns, at the next microtask checkpoint. So when a round
 * finds completions, the next round is chained to run right *after* that
 * checkpoint: a microtask queues a `process.nextTick`, and Node runs ticks
 * queued from a microtask only once the microtask queue is empty. That round
 * sees the resubmitted request (and publishes it itself: see
 * {@link CompletionDriver.roundQueued}) without a libuv iteration in between.
 *
 * One exception: when the caller reports (via {@link CompletionDriver.submittedAlone})
 * that it already published what the completions led to — a continuation's
 * single request at queue depth 1, or the callback API's resubmissions —
 * the chained round runs in the microtask itself, saving the nextTick: the
 * only thing it may delay (by at most one round) is other microtasks queued
 * later in the same checkpoint.
 *
 * Chained rounds run before timers and I/O callbacks, so they are bounded:
 * once `sliceMicros` (default 1000 µs) have passed since the loop last gave
 * the event loop a turn, the next round goes through `setImmediate` instead,
 * which lets timers, I/O and other immediates run first. A round that finds
 * nothing while requests are in flight also yields through `setImmediate`.
 * The event loop is therefore never held for longer than about
 * `sliceMicros + spinMicros` plus one round; polling stops when a round finds
 * nothing in flight.
 *
 * ## Parking
 *
 * A device that stops completing (a stalled simulator, a dead VDUSE daemon,
 * or just a slow request) would keep a poll loop spinning a whole core until
 * the request's deadline. So after `parkAfterMicros` (default 50 ms) without
 * a completion while requests are in flight, the loop *parks*: it asks the
 * device for interrupts again, re-checks once (a completion may have landed
 * just before), and stops; the call eventfd, watched in both modes, wakes it.
 * The next interrupt or submission unparks it and turns interrupts back off.
 */
import { performance } from 'node:perf_hooks';
import type { EventFd } from '../eventfd';

/**
 * `'interrupt'`: sleep until the device signals the call eventfd.
 * `'poll'`: while requests are in flight, check the used rings continually
 * (see the module comment for how this shares the event loop) and ask the
 * device not to interrupt. Costs a CPU while busy; other JavaScript still runs
 * between checks.
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
  /**
   * Poll mode only: the longest time (µs, default 1000) rounds are chained
   * through the microtask/nextTick queues before one goes through
   * `setImmediate` and lets timers and I/O run. 0 yields after every round.
   */
  sliceMicros?: number;
  /**
   * A cheap check whether `service()` would find completions (for a split ring,
   * one atomic load of the used index per queue). When given, the poll-mode
   * spin re-checks with it and calls `service()` only once it says yes.
   */
  ready?: () => boolean;
  /**
   * Poll mode: after this many µs without a completion while busy, ask for
   * interrupts and stop spinning until one arrives (default 50000; 0 = never).
   */
  parkAfterMicros?: number;
  /** Poll mode: turns the queues' interrupts on (parking) or off (polling). Needed for parking. */
  setInterrupts?: (enabled: boolean) => void;
}

/** Any atomic read-modify-write is a full barrier (a locked instruction on x86, dmb on arm64). */
const FENCE_CELL = new Int32Array(1);

/** A settled promise: `RESOLVED.then(f)` queues `f` as a microtask more cheaply than `queueMicrotask` (no AsyncResource). */
const RESOLVED = Promise.resolve();

/**
 * Calls `service()` when completions may be waiting. `service` publishes
 * pending submissions, collects from the used rings and returns how many
 * completions it found; `busy` says whether anything is queued or in flight
 * (poll mode stops when nothing is).
 */
export class CompletionDriver {
  readonly mode: CompletionMode;
  readonly #calls: readonly EventFd[];
  readonly #service: () => number;
  readonly #busy: () => boolean;
  readonly #spinMs: number;
  readonly #sliceMs: number;
  readonly #ready: (() => boolean) | undefined;
  /** A round is scheduled or running (poll mode). */
  #polling = false;
  /** A round is queued to run after the current microtask checkpoint. */
  #chained = false;
  /** {@link submittedAlone} was called since the last round. */
  #alone = false;
  /** When the poll loop last let the event loop have a turn. */
  #sliceStart = 0;
  readonly #parkAfterMs: number;
  readonly #setInterrupts: ((enabled: boolean) => void) | undefined;
  /** When a round last found completions (or polling started). */
  #lastProgress = 0;
  /** Parked: interrupts on, no rounds until an interrupt or a submission. */
  #parked = false;
  /** Times the poll loop parked. */
  parks = 0;
  #closed = false;
  /** Wake-ups from the call eventfds. */
  interrupts = 0;
  /** Poll-mode rounds (each checks the rings at least once). */
  polls = 0;
  /** Poll-mode rounds that went through `setImmediate` (a full event-loop turn). */
  pollYields = 0;

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
    this.#sliceMs = (options.sliceMicros ?? 1000) / 1000;
    this.#ready = options.ready;
    this.#setInterrupts = options.setInterrupts;
    this.#parkAfterMs = this.#setInterrupts === undefined ? 0 : (options.parkAfterMicros ?? 50000) / 1000;
    // The call eventfd is watched in both modes: in poll mode the device was
    // only asked not to interrupt, and a device that does anyway is served.
    const onCall = (): void => {
      this.interrupts++;
      if (this.#parked) this.#unpark();
      this.#service();
      // Unparked: whatever the completions' continuations submit is polled for again.
      if (this.mode === 'poll') this.submitted();
    };
    for (const call of calls) call.watch(onCall);
  }

  /**
   * True while a poll round is queued to run after the current microtask
   * checkpoint. That round calls `service()` first thing, so a submission made
   * now needs no publishing of its own: it will be published (with the others
   * of this checkpoint, one kick) before the rings are checked.
   */
  get roundQueued(): boolean {
    return this.#chained;
  }

  /**
   * Tells the driver requests were submitted; in poll mode this starts the
   * polling loop (its first round runs after the current microtask checkpoint).
   */
  submitted(): void {
    if (this.mode === 'poll' && !this.#polling && !this.#closed) {
      if (this.#parked) this.#unpark();
      this.#polling = true;
      this.#sliceStart = this.#lastProgress = performance.now();
      this.#chain();
    }
  }

  /** True while the poll loop is parked (waiting for an interrupt). */
  get parked(): boolean {
    return this.#parked;
  }

  #park(): void {
    this.#parked = true;
    this.#polling = false;
    this.parks++;
    (this.#setInterrupts as (enabled: boolean) => void)(true);
    // The flag store must be visible before we look at the used index again, or a completion written in
    // between (the device then saw interrupts still off) would wait for the next one.
    Atomics.add(FENCE_CELL, 0, 0);
    if (this.#ready?.() ?? true) {
      this.#unpark();
      this.#service();
      this.submitted();
    }
  }

  #unpark(): void {
    this.#parked = false;
    (this.#setInterrupts as (enabled: boolean) => void)(false);
  }

  /**
   * Like {@link submitted}, for requests the driver already published right
   * after a round's completions: a lone resubmission at queue depth 1, or what
   * callback-API completions submitted. Nothing waits for promise
   * continuations, so the chained round runs in its microtask rather than
   * waiting for a nextTick.
   */
  submittedAlone(): void {
    if (this.mode === 'poll') this.#alone = true;
    this.submitted();
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

  /** Queues a round after the current microtask checkpoint: microtask → nextTick (see the module comment). */
  #chain(): void {
    this.#chained = true;
    void RESOLVED.then(this.#afterMicrotasks);
  }

  readonly #afterMicrotasks = (): void => {
    if (this.#alone) this.#round();
    else process.nextTick(this.#round);
  };

  /**
   * Re-checks for up to `spinMicros`. Nothing else can run meanwhile, so
   * nothing new is submitted: with `ready`, only the used indices are watched
   * (and the clock read every 16 checks) until something arrives.
   */
  #spin(): number {
    const until = performance.now() + this.#spinMs;
    const ready = this.#ready;
    if (ready === undefined) {
      let found = 0;
      while (found === 0 && !this.#closed && performance.now() < until) found = this.#service();
      return found;
    }
    for (let i = 1; ; i++) {
      if (ready()) return this.#service();
      if ((i & 15) === 0 && performance.now() >= until) return 0;
    }
  }

  /** A round reached through `setImmediate`: the event loop just had its turn. */
  readonly #poll = (): void => {
    this.#sliceStart = performance.now();
    this.#round();
  };

  readonly #round = (): void => {
    this.#chained = false;
    this.#alone = false;
    if (this.#closed || !this.#busy()) {
      this.#polling = false;
      return;
    }
    this.polls++;
    let found = this.#service();
    if (found === 0 && this.#spinMs > 0 && this.#busy()) found = this.#spin();
    const now = performance.now();
    if (found > 0) this.#lastProgress = now;
    else if (this.#parkAfterMs > 0 && now - this.#lastProgress >= this.#parkAfterMs && this.#busy()) {
      this.#park();
      return;
    }
    if (found > 0 && now - this.#sliceStart < this.#sliceMs) {
      // Completions: their continuations may submit again; check right after them.
      this.#chain();
    } else if (this.#busy() || found > 0) {
      // Nothing yet (or the slice is used up): let timers and I/O run, then check again.
      this.pollYields++;
      setImmediate(this.#poll);
    } else {
      this.#polling = false;
    }
  };
}
