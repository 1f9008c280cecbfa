/**
 * The virtio driver core: everything a virtio driver over vhost-vdpa does
 * that is not its device class's protocol. A protocol driver (lib/blk, and
 * lib/net next) encodes requests into descriptor chains and decodes the
 * answers; this core owns the rest:
 *
 * - queues, DMA memory (rings, per-descriptor slots, the bounce pool, the
 *   caller's zero-copy buffers) and DRIVER_OK;
 * - the request life cycle: a FIFO of ops waiting for ring or bounce space
 *   (back-pressure, never an error), dispatch with one kick per queue per
 *   batch, completions from the call eventfd or polling (lib/virtqueue/completions.ts);
 * - deadlines: an op not completed `requestTimeoutMs` after dispatch rejects
 *   with `ETIMEDOUT` and triggers recovery;
 * - cancellation with an AbortSignal;
 * - recovery, like blk-mq's timeout handler: reset the device (off the event
 *   loop where the transport can), fail what was in flight (`ERR_RESET`, the
 *   culprit `ETIMEDOUT` or `ERR_QUEUE_CORRUPT`), negotiate the same features
 *   again, send the IOTLB mappings to the device again, re-attach the queues
 *   and go on serving the FIFO; a device that cannot be brought back leaves
 *   the driver failed (`ERR_DEVICE_FAILED` for everything);
 * - the config interrupt: NEEDS_RESET → recovery; otherwise the config space
 *   is read again and the protocol driver told (`'config-change'`);
 * - close semantics (drain or not, bounded by a timeout, reset before memory
 *   is freed) and counters.
 *
 * The hot path (enqueue → #schedule → #pump → #dispatch → publish; collect →
 * #onUsed → #finish) allocates nothing but the caller's promise: requests and
 * ops are pooled, and deadlines cost one integer store per dispatch (a coarse
 * clock ticked by one timer per device, not a timer per request).
 */
import { BouncePool } from '../bounce';
import { abortError, ErrorCodes, VdpaError } from '../errors';
import { EventFd } from '../eventfd';
import {
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FAILED,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_CONFIG_S_NEEDS_RESET,
} from '../uapi';
import { CompletionDriver, type CompletionMode } from '../virtqueue/completions';
import type {
  CloseOptions,
  DriverCoreOptions,
  DriverCoreStats,
  DriverProtocol,
  DriverState,
  DriverTransport,
  ResetEvent,
} from './types';
import type { Virtqueue } from '../virtqueue/types';
import { DmaSpace } from './dma-space';
import { attachQueues, closeQueues, createQueues, DriverQueue } from './queues';
import {
  BOUNCE_FROM_DEVICE,
  BOUNCE_NONE,
  BOUNCE_TO_DEVICE,
  DeviceOp,
  DriverRequest,
  OpFifo,
  promiseOf,
  settle,
  CallbackQueue,
  type RequestCallback,
} from './request';
import { readConfigStable } from './config';

/** Recoveries in a row without a single completion in between before the driver gives up. */
const MAX_RESETS_WITHOUT_PROGRESS = 3;

/** A settled promise: `RESOLVED.then(f)` queues a microtask without the AsyncResource `queueMicrotask` creates. */
const RESOLVED = Promise.resolve();

/** The driver core of one device; see the module comment. */
export class VirtioDriver<O extends DeviceOp> {
  readonly path: string;
  /** Negotiated features. */
  readonly features: bigint;
  readonly queues: readonly DriverQueue[];
  readonly bounce: BouncePool | undefined;
  readonly dma: DmaSpace;

  readonly #transport: DriverTransport;
  readonly #protocol: DriverProtocol<O>;
  readonly #options: DriverCoreOptions;
  readonly #completions: CompletionDriver;
  readonly #configCall: EventFd;
  readonly #fifo = new OpFifo<O>();
  /** FIFOs of targeted ops ({@link DeviceOp.queueIndex}), by queue index, made on first use. */
  readonly #queueFifos: (OpFifo<O> | undefined)[] = [];
  /** Ops waiting in {@link #queueFifos}. */
  #targetedWaiting = 0;
  readonly #opPool: O[] = [];
  readonly #requestPool: DriverRequest[] = [];
  readonly #counters = {
    requests: 0,
    deviceRequests: 0,
    bounced: 0,
    syncPolls: 0,
    timeouts: 0,
    aborted: 0,
    resets: 0,
    configInterrupts: 0,
  };
  #outstanding = 0;
  #nextQueue = 0;
  #scheduled = false;
  #batching = 0;
  /**
   * Set when the last service found exactly one completion and left nothing
   * queued or in flight (queue depth 1): the next request, if it is then the
   * only one, is published at once instead of at the end of the checkpoint.
   */
  #solo = false;
  #state: DriverState = 'open';
  /** Why the driver is unusable (failed), or undefined. */
  #failure: VdpaError | undefined;
  #closing: Promise<void> | undefined;
  #recovering: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;
  #resetsWithoutProgress = 0;
  /** The config space as last read. */
  #configBytes: Buffer;
  /** Deadline clock: one tick per #tickMs while ops are in flight. */
  #epoch = 0;
  #tickMs = 0;
  #timeoutTicks = 0;
  #deadlineTimer: NodeJS.Timeout | undefined;
  #idleTicks = 0;
  /** Callback-form requests settled and waiting for their callback (see {@link CallbackQueue}). */
  readonly #callbacks = new CallbackQueue(() => this.#callbacksWaiting());
  /** Inside #service, which drains the callbacks itself when it is done. */
  #inService = false;
  #callbackDrainQueued = false;

  /**
   * Sets the device up: maps memory, attaches the queues and the config
   * interrupt, sets DRIVER_OK. The device must be negotiated already
   * (FEATURES_OK). On failure the device is reset and everything freed.
   */
  constructor(transport: DriverTransport, protocol: DriverProtocol<O>, options: DriverCoreOptions) {
    this.#transport = transport;
    this.#protocol = protocol;
    this.#options = options;
    this.path = transport.path;
    this.features = options.features;
    this.#configBytes = options.config;
    this.dma = new DmaSpace(transport);
    const timeout = options.requestTimeoutMs;
    if (timeout > 0) {
      // Ticks of at most 500 ms: a late op is caught between its deadline and deadline + 2 ticks.
      this.#tickMs = Math.min(500, Math.max(5, Math.floor(timeout / 8)));
      this.#timeoutTicks = Math.ceil(timeout / this.#tickMs) + 1;
    }
    this.#configCall = new EventFd();
    let queues: DriverQueue[] = [];
    try {
      queues = createQueues(transport, this.dma, options.queues);
      this.queues = queues;
      if (options.bounceBytes > 0) {
        const [pool] = this.dma.allocateFixed([
          { bytes: options.bounceBytes, name: `${options.queues.name}-bounce` },
        ]);
        this.bounce = new BouncePool(pool.region.bytes, pool.iova, options.bounceChunkSize);
      }
      this.#start();
      if (options.completion === 'poll') for (const q of this.queues) q.vq.setInterrupts(false);
      this.#completions = new CompletionDriver(
        queues.map((q) => q.call),
        this.#service,
        this.#busy,
        {
          mode: options.completion,
          spinMicros: options.pollSpinMicros,
          sliceMicros: options.pollSliceMicros,
          ready: this.#ready,
          setInterrupts: (enabled) => {
            for (const q of queues) q.vq.setInterrupts(enabled);
          },
        },
      );
      this.#configCall.watch(this.#onConfigInterrupt);
    } catch (error) {
      // Stop the device before freeing memory it might have been told about.
      try {
        transport.reset();
      } catch {
        // open() reports the original error; it closes an owned device anyway.
      }
      closeQueues(queues);
      this.#configCall.close();
      this.dma.release();
      throw error;
    }
  }

  /** Attaches the queues and the config interrupt and sets DRIVER_OK (after negotiation). */
  #start(): void {
    const transport = this.#transport;
    attachQueues(transport, this.queues);
    transport.setConfigCall(this.#configCall.fd);
    this.#options.beforeDriverOk?.();
    transport.setStatus(
      VIRTIO_CONFIG_S_ACKNOWLEDGE |
        VIRTIO_CONFIG_S_DRIVER |
        VIRTIO_CONFIG_S_FEATURES_OK |
        VIRTIO_CONFIG_S_DRIVER_OK,
    );
    const status = transport.getStatus();
    if (
      (status & VIRTIO_CONFIG_S_DRIVER_OK) === 0 ||
      (status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET)) !== 0
    ) {
      throw new VdpaError(`${this.path} did not start: status 0x${status.toString(16)} after DRIVER_OK`, {
        code: ErrorCodes.NEGOTIATION,
        path: this.path,
      });
    }
  }

  // ---- state ----------------------------------------------------------------------------------

  /** `'open'`, `'recovering'` (requests wait), `'failed'`, `'closing'` or `'closed'`. */
  get state(): DriverState {
    return this.#state;
  }

  /** Ops queued or in flight. */
  get pending(): number {
    return this.#outstanding;
  }

  /** The completion mode. */
  get completionMode(): CompletionMode {
    return this.#completions.mode;
  }

  /** Counters since open. */
  get stats(): DriverCoreStats {
    const s = {
      ...this.#counters,
      indirect: 0,
      kicks: 0,
      kicksSuppressed: 0,
      completions: 0,
      interrupts: this.#completions.interrupts,
      polls: this.#completions.polls,
      pollYields: this.#completions.pollYields,
      pollParks: this.#completions.parks,
    };
    for (const q of this.queues) {
      s.indirect += q.vq.stats.indirectChains;
      s.kicks += q.vq.stats.kicks;
      s.kicksSuppressed += q.vq.stats.kicksSuppressed;
      s.completions += q.vq.stats.completions;
    }
    return s;
  }

  /**
   * The error a new request fails with now (closed, failed), or undefined.
   * While recovering, requests are accepted and wait.
   */
  usableError(what: string): VdpaError | undefined {
    if (this.#state === 'closing' || this.#state === 'closed') {
      return new VdpaError(`${this.path}: the ${what} is ${this.#state}`, {
        code: ErrorCodes.CLOSED,
        path: this.path,
      });
    }
    return this.#failure;
  }

  // ---- building requests ----------------------------------------------------------------------

  /** A pooled request. */
  newRequest(kind: string, offset: number, length: number, data: Uint8Array | undefined): DriverRequest {
    const request = this.#requestPool.pop() ?? new DriverRequest();
    request.kind = kind;
    request.offset = offset;
    request.length = length;
    request.data = data;
    request.result = undefined;
    request.remaining = 0;
    request.settled = false;
    request.error = undefined;
    this.#counters.requests++;
    return request;
  }

  /** A pooled op of `request` with `segments` ring buffers; the protocol fills in its own fields. */
  newOp(request: DriverRequest, segments: number): O {
    const op = this.#opPool.pop() ?? this.#protocol.newOp();
    op.length = 0;
    op.offsetInRequest = 0;
    op.dataIova = -1;
    op.dmaBuffer = undefined;
    op.bounce = BOUNCE_NONE;
    op.segments = segments;
    op.chunkCount = 0;
    op.request = request;
    op.queue = undefined;
    op.head = -1;
    op.queueIndex = -1;
    op.standing = false;
    request.remaining++;
    return op;
  }

  /**
   * Queues an op (it holds its zero-copy buffer from now until it finishes).
   * An op with a `queueIndex` waits in that queue's own FIFO.
   */
  enqueue(op: O): void {
    if (op.dmaBuffer !== undefined) op.dmaBuffer.uses++;
    if (op.queueIndex < 0) this.#fifo.push(op);
    else this.#enqueueTargeted(op);
    if (!op.standing) this.#outstanding++;
  }

  #enqueueTargeted(op: O): void {
    const index = op.queueIndex;
    if (!Number.isInteger(index) || index >= this.queues.length || op.bounce !== BOUNCE_NONE) {
      throw new VdpaError(
        `${this.path}: internal error: op for queue ${index} (the driver has ${this.queues.length}); ` +
          'targeted ops cannot use the bounce pool',
        { code: ErrorCodes.INVALID_ARG, path: this.path },
      );
    }
    (this.#queueFifos[index] ??= new OpFifo<O>()).push(op);
    this.#targetedWaiting++;
  }

  /** Ops of queue `index` waiting for ring space (targeted ops only). */
  waiting(index: number): number {
    return this.#queueFifos[index]?.size ?? 0;
  }

  /** Publishes now (one kick per queue with new chains) what was queued, without waiting for the microtask. */
  flush(): void {
    if (this.#state !== 'open' && this.#state !== 'closing') return;
    this.#pump();
    this.#publish();
  }

  /**
   * The promise of a request whose ops were enqueued; schedules their
   * dispatch. With a `signal`, aborting rejects it at once: before dispatch the
   * op is dropped; in flight the device keeps it until it completes or is reset.
   */
  promise<T>(request: DriverRequest, signal: AbortSignal | undefined): Promise<T> {
    const promise = promiseOf<T>(request);
    if (signal !== undefined) {
      request.signal = signal;
      request.onAbort = () => this.#abort(request);
      signal.addEventListener('abort', request.onAbort, { once: true });
    }
    this.#schedule();
    return promise;
  }

  /**
   * The callback form of {@link promise}: `callback(error, result)` is called
   * once the request settles — never synchronously, and never from inside
   * the driver's own bookkeeping (see {@link CallbackQueue}). Callbacks that
   * a service round settles run at the end of that round, and what they
   * submit is published with that round's kick: no promise, no microtask.
   */
  submitWithCallback(request: DriverRequest, callback: RequestCallback): void {
    request.callback = callback;
    request.callbacks = this.#callbacks;
    this.#schedule();
  }

  /** The first callback is waiting: drain in a microtask unless a service round will. */
  #callbacksWaiting(): void {
    if (this.#inService || this.#callbackDrainQueued) return;
    this.#callbackDrainQueued = true;
    void RESOLVED.then(this.#drainCallbacksLater);
  }

  readonly #drainCallbacksLater = (): void => {
    this.#callbackDrainQueued = false;
    this.#drainCallbacks();
    // What the callbacks submitted: published now, as a batch.
    if (this.#fifo.size > 0 || this.#targetedWaiting > 0) this.#kick();
  };

  /** Calls the waiting callbacks; their submissions are queued, not published (the caller publishes). */
  #drainCallbacks(): void {
    this.#batching++;
    try {
      this.#callbacks.drain(this.#recycleRequest);
    } finally {
      this.#batching--;
    }
  }

  readonly #recycleRequest = (request: DriverRequest): void => {
    request.recycle();
    this.#requestPool.push(request);
  };

  /** Pushes the data buffers of `op` into the open chain: bounce chunks, or its zero-copy range in pieces of `maxSegment`. */
  pushData(op: O, vq: Virtqueue<DeviceOp>, writable: boolean, maxSegment: number): void {
    if (op.chunkCount > 0) {
      const bounce = this.bounce as BouncePool;
      const size = bounce.chunkSize;
      for (let i = 0, done = 0; i < op.chunkCount; i++, done += size) {
        vq.push(bounce.iovaOf(op.chunks[i]), Math.min(size, op.length - done), writable);
      }
    } else {
      for (let done = 0; done < op.length; done += maxSegment) {
        vq.push(op.dataIova + done, Math.min(maxSegment, op.length - done), writable);
      }
    }
  }

  /** Runs `fn` (which makes requests) and publishes them with one kick per queue. */
  batch<T>(fn: () => T): T {
    this.#batching++;
    try {
      return fn();
    } finally {
      this.#batching--;
      this.#kick();
    }
  }

  // ---- submission (the hot path) --------------------------------------------------------------

  /**
   * Drains the FIFO and publishes on the next microtask: calls made in one tick
   * share a kick. In poll mode, when a poll round is already queued after this
   * microtask checkpoint, that round publishes instead (it calls #service first
   * thing), so calls made anywhere in the checkpoint — typically `await`
   * continuations of the completions the last round found — share one kick and
   * cost no microtask of their own.
   */
  #schedule(): void {
    if (this.#scheduled || this.#batching > 0) return;
    if (this.#solo) {
      this.#solo = false;
      // Queue depth 1: a completion just came back alone and this request is alone too — most likely its
      // resubmission. Publishing it now lets the device start while the rest of the checkpoint (and the
      // poll round) runs; waiting would only delay it. A burst still shares kicks: the requests after this
      // one take the usual path (one more kick at most).
      if (this.#outstanding === 1 && this.#state === 'open') {
        this.#pump();
        this.#publish();
        this.#completions.submittedAlone();
        return;
      }
    }
    if (this.#completions.roundQueued) return;
    this.#scheduled = true;
    void RESOLVED.then(this.#kick);
  }

  readonly #kick = (): void => {
    this.#scheduled = false;
    if (this.#state !== 'open' && this.#state !== 'closing') return;
    this.#pump();
    this.#publish();
    this.#completions.submitted();
  };

  /** Moves ops from the FIFO into rings, in order, until something is full. */
  #pump(): void {
    if (this.#targetedWaiting > 0) this.#pumpTargeted();
    const fifo = this.#fifo;
    while (fifo.size > 0) {
      const op = fifo.peek();
      if (op.request.settled) {
        // Aborted, timed out or failed while waiting: the device never sees it.
        fifo.shift();
        this.#finish(op);
        continue;
      }
      const queue = this.#pickQueue(op.segments);
      if (queue === undefined) return;
      if (op.bounce !== BOUNCE_NONE && op.chunkCount === 0) {
        const bounce = this.bounce as BouncePool;
        const count = Math.ceil(op.length / bounce.chunkSize);
        if (!bounce.take(count, op.chunks)) return;
        op.chunkCount = count;
        this.#counters.bounced++;
        if (op.bounce === BOUNCE_TO_DEVICE) {
          try {
            bounce.copyIn(op.chunks, op.request.data as Uint8Array, op.offsetInRequest, op.length);
          } catch (error) {
            // A detached or shrunk ArrayBuffer: only this request fails.
            fifo.shift();
            op.request.error ??= this.#dataError(op.request, error);
            this.#release(op);
            this.#finish(op);
            continue;
          }
        }
      }
      fifo.shift();
      this.#dispatch(op, queue);
    }
  }

  /** Moves targeted ops into their queues, each queue's in order, until its ring is full. */
  #pumpTargeted(): void {
    const fifos = this.#queueFifos;
    for (let i = 0; i < fifos.length; i++) {
      const fifo = fifos[i];
      if (fifo === undefined) continue;
      const vq = this.queues[i].vq;
      while (fifo.size > 0) {
        const op = fifo.peek();
        if (!op.request.settled && !vq.canAdd(op.segments)) break;
        fifo.shift();
        this.#targetedWaiting--;
        if (op.request.settled) this.#finish(op);
        else this.#dispatch(op, this.queues[i]);
      }
    }
  }

  #pickQueue(segments: number): DriverQueue | undefined {
    const queues = this.queues;
    const n = queues.length;
    for (let i = 0; i < n; i++) {
      const q = queues[(this.#nextQueue + i) % n];
      if (q.vq.canAdd(segments)) {
        this.#nextQueue = (this.#nextQueue + i + 1) % n;
        return q;
      }
    }
    return undefined;
  }

  #dispatch(op: O, q: DriverQueue): void {
    const vq = q.vq;
    const head = vq.begin(op.segments);
    this.#protocol.encode(op, q, head);
    op.queue = q;
    op.head = head;
    op.epoch = this.#epoch;
    vq.end(op);
    this.#counters.deviceRequests++;
    if (this.#deadlineTimer === undefined && this.#tickMs > 0 && !op.standing) this.#startDeadlines();
  }

  #publish(): void {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].vq.unpublished > 0) queues[i].vq.publish();
  }

  // ---- completion -----------------------------------------------------------------------------

  readonly #busy = (): boolean => this.#outstanding > 0 && this.#state !== 'recovering';

  /** Some queue has completions to collect (one atomic load per queue). */
  readonly #ready = (): boolean => {
    const queues = this.queues;
    for (let i = 0; i < queues.length; i++) if (queues[i].vq.hasCompletions()) return true;
    return false;
  };

  /** Services the queues once, synchronously (`BlockDevice.poll()`). */
  poll(): number {
    this.#counters.syncPolls++;
    return this.#service();
  }

  /**
   * Publishes what is waiting, collects every queue's completions, then
   * refills the rings from the FIFO and publishes again. Returns the
   * completions found. Never throws: it runs from native callbacks.
   */
  readonly #service = (): number => {
    if (this.#state !== 'open' && this.#state !== 'closing') return 0;
    this.#solo = false;
    let found = 0;
    const nested = this.#inService;
    this.#inService = true;
    try {
      if (this.#fifo.size > 0 || this.#targetedWaiting > 0) this.#pump();
      this.#publish();
      const queues = this.queues;
      for (let i = 0; i < queues.length; i++) {
        const q = queues[i];
        try {
          found += q.vq.collect(this.#onUsed);
        } catch (error) {
          if ((error as VdpaError).code !== ErrorCodes.QUEUE_CORRUPT) throw error;
          void this.#recover(error as VdpaError, { corrupt: q });
          return found;
        }
      }
      if (found > 0) {
        this.#resetsWithoutProgress = 0;
        // Callback-form completions: called now, so what they submit goes out with the refill below.
        if (this.#callbacks.size > 0) {
          this.#drainCallbacks();
          this.#completions.submittedAlone();
        }
        if (this.#fifo.size > 0 || this.#targetedWaiting > 0) {
          this.#pump();
          this.#publish();
        }
        if (this.#outstanding === 0) {
          this.#solo = found === 1;
          this.#onIdle?.();
        }
      }
    } catch (error) {
      // A defect of ours (a protocol callback threw): recover rather than take the process down.
      void this.#recover(
        new VdpaError(
          `${this.path}: internal error while servicing the queues: ${(error as Error).message}`,
          {
            code: ErrorCodes.DEVICE_FAILED,
            path: this.path,
            cause: error,
          },
        ),
      );
    } finally {
      this.#inService = nested;
      // Settled on a path that did not drain (a recovery started): their callbacks run in a microtask.
      if (!nested && this.#callbacks.size > 0) this.#callbacksWaiting();
    }
    return found;
  };

  readonly #onUsed = (token: DeviceOp, length: number): void => {
    const op = token as O;
    const request = op.request;
    if (!request.settled) {
      let error: Error | undefined;
      try {
        error = this.#protocol.complete(op, op.queue as DriverQueue, length);
        if (error === undefined && op.bounce === BOUNCE_FROM_DEVICE) {
          (this.bounce as BouncePool).copyOut(
            op.chunks,
            request.data as Uint8Array,
            op.offsetInRequest,
            op.length,
          );
        }
      } catch (thrown) {
        error = this.#dataError(request, thrown);
      }
      if (error !== undefined) request.error ??= error;
    }
    this.#release(op);
    this.#finish(op);
  };

  /** Returns an op's bounce chunks and zero-copy buffer use. */
  #release(op: O): void {
    if (op.chunkCount > 0) {
      (this.bounce as BouncePool).release(op.chunks, op.chunkCount);
      op.chunkCount = 0;
    }
  }

  /** An op is done (completed, failed or dropped): settle its request when it was the last. */
  #finish(op: O): void {
    const request = op.request;
    if (!op.standing) this.#outstanding--;
    if (op.dmaBuffer !== undefined) op.dmaBuffer.uses--;
    op.request = undefined as unknown as DriverRequest;
    op.dmaBuffer = undefined;
    op.queue = undefined;
    this.#opPool.push(op);
    if (--request.remaining === 0) {
      settle(request);
      // No op refers to it any more and its promise is settled: reuse it. A callback still waiting
      // in #callbacks holds it: the drain recycles it after the call.
      if (request.callback === undefined) this.#recycleRequest(request);
    }
  }

  #dataError(request: DriverRequest, cause: unknown): VdpaError {
    return new VdpaError(
      `${this.#protocol.describe(request)} on ${this.path}: the caller's buffer could not be accessed ` +
        `(${(cause as Error).message}); was its ArrayBuffer transferred or detached?`,
      { code: ErrorCodes.INVALID_ARG, path: this.path, cause },
    );
  }

  // ---- cancellation ---------------------------------------------------------------------------

  /**
   * The request's AbortSignal fired: reject it now. Ops still queued are
   * dropped before the device sees them; ops in flight stay with the device
   * (with their buffers reserved) until it completes them or is reset.
   */
  #abort(request: DriverRequest): void {
    if (request.settled) return;
    request.onAbort = undefined; // `once`: already removed
    request.error = abortError(
      (request.signal as AbortSignal).reason,
      `${this.#protocol.describe(request)} on ${this.path}`,
    );
    this.#counters.aborted++;
    settle(request);
  }

  // ---- deadlines ------------------------------------------------------------------------------

  #startDeadlines(): void {
    this.#idleTicks = 0;
    this.#deadlineTimer = setInterval(this.#onTick, this.#tickMs);
    // In-flight requests keep the process alive through their eventfd watch or poll loop, not this timer.
    this.#deadlineTimer.unref();
  }

  #stopDeadlines(): void {
    if (this.#deadlineTimer !== undefined) clearInterval(this.#deadlineTimer);
    this.#deadlineTimer = undefined;
  }

  readonly #onTick = (): void => {
    this.#epoch++;
    if (this.#state !== 'open' && this.#state !== 'closing') return;
    let inFlight = 0;
    let late: O[] | undefined;
    for (const q of this.queues) {
      if (q.vq.inFlight === 0) continue;
      for (const token of q.vq.inFlightTokens()) {
        const op = token as O;
        if (op.standing) continue; // posted buffers wait for the device indefinitely
        inFlight++;
        if (this.#epoch - op.epoch >= this.#timeoutTicks) (late ??= []).push(op);
      }
    }
    if (inFlight === 0) {
      if (++this.#idleTicks >= 2) this.#stopDeadlines();
      return;
    }
    this.#idleTicks = 0;
    if (late === undefined) return;
    const ms = this.#options.requestTimeoutMs;
    for (const op of late) {
      if (op.request.settled) continue;
      this.#counters.timeouts++;
      op.request.error ??= new VdpaError(
        `${this.#protocol.describe(op.request)} on ${this.path} timed out: the device did not complete it ` +
          `within ${ms} ms (requestTimeoutMs). The driver resets the device and goes on`,
        { code: ErrorCodes.TIMEOUT, errno: 110, path: this.path },
      );
      settle(op.request);
    }
    void this.#recover(
      new VdpaError(`${this.path}: ${late.length} request(s) not completed within ${ms} ms`, {
        code: ErrorCodes.TIMEOUT,
        errno: 110,
        path: this.path,
      }),
    );
  };

  // ---- config interrupt -----------------------------------------------------------------------

  readonly #onConfigInterrupt = (): void => {
    this.#counters.configInterrupts++;
    if (this.#state !== 'open') return;
    try {
      const status = this.#transport.getStatus();
      if ((status & VIRTIO_CONFIG_S_NEEDS_RESET) !== 0) {
        void this.#recover(
          new VdpaError(`${this.path} set DEVICE_NEEDS_RESET (status 0x${status.toString(16)})`, {
            code: ErrorCodes.RESET,
            path: this.path,
          }),
        );
        return;
      }
      this.#refreshConfig();
    } catch (error) {
      // An ioctl failed (the device is going away) or a listener threw: report it as an uncaught exception,
      // like any event listener's, without leaving the native callback by a throw.
      process.nextTick(() => {
        throw error;
      });
    }
  };

  /** Reads the config space; when it changed, tells the protocol driver and emits `'config-change'`. */
  #refreshConfig(): void {
    const bytes = readConfigStable(this.#transport);
    if (bytes.equals(this.#configBytes)) return;
    this.#configBytes = bytes;
    this.#options.emit('config-change', this.#protocol.configChanged(bytes));
  }

  // ---- recovery -------------------------------------------------------------------------------

  /**
   * Resets the device and brings it back (see the module comment). Requests
   * made meanwhile wait in the FIFO. `corrupt`: the queue whose used ring was
   * corrupt — its requests fail with `ERR_QUEUE_CORRUPT`, the others' with `ERR_RESET`.
   */
  #recover(reason: VdpaError, how: { corrupt?: DriverQueue } = {}): Promise<void> {
    if (this.#state !== 'open') return this.#recovering ?? Promise.resolve();
    this.#state = 'recovering';
    this.#counters.resets++;
    this.#stopDeadlines();
    this.#recovering = this.#doRecover(reason, how.corrupt).finally(() => (this.#recovering = undefined));
    return this.#recovering;
  }

  async #doRecover(reason: VdpaError, corrupt: DriverQueue | undefined): Promise<void> {
    const transport = this.#transport;
    let failed = 0;
    try {
      // 1. Stop the device: after the reset it no longer touches ring or request memory.
      if (transport.resetAsync !== undefined) await transport.resetAsync();
      else transport.reset();
    } catch (error) {
      this.#enterFailed(reason, error, 'the reset failed');
      return;
    }
    // 2. Fail what was in flight.
    for (const q of this.queues) {
      const culprit = q === corrupt;
      for (const token of q.vq.reset()) {
        const op = token as O;
        if (op.standing) op.request.settled = true; // a posted buffer: nobody waits for it
        if (!op.request.settled) {
          failed++;
          op.request.error ??= culprit
            ? new VdpaError(`${this.#protocol.describe(op.request)}: ${reason.message}`, {
                code: ErrorCodes.QUEUE_CORRUPT,
                path: this.path,
                cause: reason,
              })
            : new VdpaError(
                `${this.#protocol.describe(op.request)} on ${this.path} was in flight when the driver reset the ` +
                  `device (${reason.message}); it did not complete: retry it`,
                { code: ErrorCodes.RESET, path: this.path, cause: reason },
              );
        }
        this.#release(op);
        this.#finish(op);
      }
    }
    if (++this.#resetsWithoutProgress > MAX_RESETS_WITHOUT_PROGRESS) {
      this.#enterFailed(reason, undefined, `${MAX_RESETS_WITHOUT_PROGRESS} resets in a row without progress`);
      return;
    }
    // 3. Bring it back: same features, mappings sent again (the parent may have cleaned its own), queues from 0.
    try {
      transport.negotiate(this.features);
      this.dma.resendAfterReset();
      this.#start();
    } catch (error) {
      try {
        transport.reset();
      } catch {
        // Already failing; the first error says why.
      }
      this.#enterFailed(reason, error, 'it could not be set up again');
      return;
    }
    if (this.#state !== 'recovering') return;
    this.#state = 'open';
    try {
      this.#protocol.restarted?.();
    } catch (error) {
      this.#enterFailed(reason, error, 'its buffers could not be posted again');
      return;
    }
    this.#options.emit('reset', { reason, failed } satisfies ResetEvent);
    // A config interrupt during the recovery was ignored: look now.
    try {
      this.#refreshConfig();
    } catch (error) {
      process.nextTick(() => {
        throw error;
      });
    }
    if (this.#outstanding === 0) this.#onIdle?.();
    this.#kick();
  }

  #enterFailed(reason: VdpaError, cause: unknown, why: string): void {
    this.#failure = new VdpaError(
      `${this.path} failed and was given up: ${why}${cause instanceof Error ? ` (${cause.message})` : ''}, ` +
        `after ${reason.message}. Every request is refused: close the device, then recreate or reopen it`,
      { code: ErrorCodes.DEVICE_FAILED, path: this.path, cause: cause ?? reason },
    );
    this.#state = 'failed';
    this.#stopDeadlines();
    const failure = this.#failure;
    this.#rejectPending(() => failure);
    // The device may still hold chains: settle them, keep their memory until close.
    this.#options.emit('failed', failure);
  }

  // ---- shutdown -------------------------------------------------------------------------------

  /** Stops the device; see {@link CloseOptions}. Idempotent. */
  close(options: CloseOptions = {}): Promise<void> {
    this.#closing ??= this.#close(options.drain ?? true, options.timeoutMs ?? 30000);
    return this.#closing;
  }

  async #close(drain: boolean, timeoutMs: number): Promise<void> {
    if (this.#recovering !== undefined) await this.#recovering;
    const wasFailed = this.#state === 'failed';
    this.#state = 'closing';
    let timedOut = false;
    if (drain && this.#outstanding > 0 && !wasFailed) timedOut = !(await this.#idle(timeoutMs));
    const why = !drain
      ? 'close({ drain: false }) was called'
      : timedOut
        ? `close() waited ${timeoutMs} ms for it`
        : 'the device was closed';
    const closedError = (request: DriverRequest): VdpaError =>
      new VdpaError(
        `${this.#protocol.describe(request)} on ${this.path} was aborted: ${why}. Its outcome on the device is ` +
          'unknown (a written range may hold old or new data)',
        { code: ErrorCodes.CLOSED, path: this.path },
      );
    // Settle every pending promise now; nothing is left pending forever.
    this.#rejectPending(closedError);
    // Ops already in rings stay owned by the device. Give it a bounded chance to finish them before the
    // reset: resetting with requests in flight is the path devices handle worst (qemu-storage-daemon's
    // VDUSE export can fail the device), and until the device is reset or idle, the ring, slot and
    // bounce memory it may still write cannot be freed.
    if (!drain && this.#outstanding > 0 && !wasFailed) await this.#idle(timeoutMs);
    this.#completions.close();
    this.#configCall.unwatch();
    this.#stopDeadlines();
    // Reset before forgetting the rest: after it the device no longer touches request memory.
    const transport = this.#transport;
    try {
      if (this.#options.ownsTransport) {
        if (transport.closeAsync !== undefined) await transport.closeAsync();
        else transport.close();
      } else if (!transport.closed) {
        if (transport.resetAsync !== undefined) await transport.resetAsync();
        else transport.reset();
      }
    } catch {
      // A broken device (a VDUSE daemon gone) refuses the reset; close(2) released it all the same.
    }
    for (const q of this.queues) {
      for (const token of q.vq.reset()) {
        const op = token as O;
        if (!op.standing) op.request.error ??= closedError(op.request);
        this.#release(op);
        this.#finish(op);
      }
    }
    this.#state = 'closed';
    closeQueues(this.queues);
    this.#configCall.close();
    this.dma.release();
  }

  /** Resolves true once nothing is queued or in flight, false after `timeoutMs`. */
  #idle(timeoutMs: number): Promise<boolean> {
    if (this.#outstanding === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.#onIdle = undefined;
        resolve(false);
      }, timeoutMs);
      this.#onIdle = () => {
        clearTimeout(timer);
        this.#onIdle = undefined;
        resolve(true);
      };
    });
  }

  /** Fails queued ops and settles (rejects) the requests of those in flight. */
  #rejectPending(errorFor: (request: DriverRequest) => VdpaError): void {
    while (this.#fifo.size > 0) {
      const op = this.#fifo.shift();
      op.request.error ??= errorFor(op.request);
      this.#release(op);
      this.#finish(op);
    }
    for (const fifo of this.#queueFifos) {
      while (fifo !== undefined && fifo.size > 0) {
        const op = fifo.shift();
        this.#targetedWaiting--;
        if (!op.standing) op.request.error ??= errorFor(op.request);
        this.#finish(op);
      }
    }
    for (const q of this.queues) {
      for (const token of q.vq.inFlightTokens()) {
        const op = token as O;
        if (op.standing) continue; // a posted buffer: nobody waits for it; finished at the reset
        op.request.error ??= errorFor(op.request);
        settle(op.request);
      }
    }
    if (this.#outstanding === 0) this.#onIdle?.();
  }

  /** Lets the process exit while the device is open and idle (like `socket.unref()`). */
  setRef(referenced: boolean): void {
    this.#completions.setRef(referenced);
    if (!this.#configCall.closed) this.#configCall.setRef(referenced);
  }
}
