/**
 * The two objects every request is made of. A {@link DriverRequest} is what a
 * caller asked for (one promise); it may become several {@link DeviceOp}s —
 * descriptor chains — when it exceeds the device's limits. Both are pooled by
 * the driver core, so the hot path allocates nothing but the promise.
 */
import type { DmaBufferEntry } from './dma-space';
import type { DriverQueue } from './queues';

/** The data of an op lives in mapped DMA memory already: no copy. */
export const BOUNCE_NONE = 0;
/** The op's data is copied into the bounce pool before dispatch (device-readable). */
export const BOUNCE_TO_DEVICE = 1;
/** The op's data is copied out of the bounce pool after a successful completion (device-writable). */
export const BOUNCE_FROM_DEVICE = 2;
export type BounceDirection = typeof BOUNCE_NONE | typeof BOUNCE_TO_DEVICE | typeof BOUNCE_FROM_DEVICE;

function noop(): void {}

/** The callback of a request made with a callback-form method: Node's `(error, result)` convention. */
export type RequestCallback = (error: Error | null, result: unknown) => void;

/**
 * Requests settled with a callback, waiting for it to be called. Callbacks
 * never run inside the code that settles (the used-ring walk, a deadline
 * sweep, a reset): the driver drains this list once it is done — at the end
 * of a service round, or in a microtask — so a callback may submit, close or
 * poll without finding the driver half-way through something.
 */
export class CallbackQueue {
  #items: DriverRequest[] = [];
  #head = 0;
  /** Called when the first request arrives while nobody is going to drain (not during a service). */
  readonly #wake: () => void;

  constructor(wake: () => void) {
    this.#wake = wake;
  }

  get size(): number {
    return this.#items.length - this.#head;
  }

  push(request: DriverRequest): void {
    this.#items.push(request);
    if (this.#items.length - this.#head === 1) this.#wake();
  }

  /**
   * Calls every waiting callback, in settlement order. `recycle` gets each
   * request whose ops are all finished (nothing refers to it any more). A
   * throwing callback does not stop the others: its exception is rethrown
   * on the next tick, where it reaches 'uncaughtException' as one from any
   * Node callback would. Re-entrant: a callback that makes the driver drain
   * again (e.g. through `poll()`) continues this same list.
   */
  drain(recycle: (request: DriverRequest) => void): number {
    const items = this.#items;
    let called = 0;
    while (this.#head < items.length) {
      const request = items[this.#head];
      items[this.#head++] = undefined as unknown as DriverRequest;
      const callback = request.callback as RequestCallback;
      const error = request.error ?? null;
      const result = request.result;
      request.callback = undefined;
      if (request.remaining === 0) recycle(request);
      called++;
      try {
        callback(error, result);
      } catch (thrown) {
        process.nextTick(rethrow, thrown);
      }
    }
    if (this.#head === items.length) {
      items.length = 0;
      this.#head = 0;
    }
    return called;
  }
}

function rethrow(error: unknown): never {
  throw error;
}

/** A request made through a driver's public API; settled once, recycled when its last op is done. */
export class DriverRequest {
  /** What it is, for messages: `'read'`, `'flush'` … */
  kind = '';
  /** Byte offset (blk) or 0. */
  offset = 0;
  /** Bytes of the request. */
  length = 0;
  /** The caller's data: the source of a write, the target of a read. */
  data: Uint8Array | undefined = undefined;
  /** What the promise resolves to. */
  result: unknown = undefined;
  /** Ops not yet finished (completed, failed or dropped). */
  remaining = 0;
  /** The promise was settled (possibly before the device finished: deadline, abort, close). */
  settled = false;
  /** The first error of any of its ops; the promise rejects with it. */
  error: Error | undefined = undefined;
  resolve: (value: never) => void = noop;
  reject: (error: Error) => void = noop;
  /** The caller's AbortSignal and the listener registered on it, removed at settlement. */
  signal: AbortSignal | undefined = undefined;
  onAbort: (() => void) | undefined = undefined;
  /**
   * Callback form: called (through `callbacks`) instead of settling a
   * promise; cleared once called. While set, the request is not recycled.
   */
  callback: RequestCallback | undefined = undefined;
  /** Where a settled callback-form request waits for its callback. */
  callbacks: CallbackQueue | undefined = undefined;

  /** Clears everything that refers to caller objects, for the pool. */
  recycle(): void {
    this.data = undefined;
    this.result = undefined;
    this.error = undefined;
    this.resolve = noop;
    this.reject = noop;
    this.signal = undefined;
    this.onAbort = undefined;
    this.callback = undefined;
    this.callbacks = undefined;
  }
}

/**
 * One device request: a descriptor chain. Protocol drivers extend it with
 * their own fields (a virtio-blk op has a type and a sector).
 */
export class DeviceOp {
  /** Bytes of data this op moves (the piece of its request). */
  length = 0;
  /** Byte offset of this piece inside the request's data. */
  offsetInRequest = 0;
  /** IOVA of the data when it lives in mapped memory (zero-copy); -1 otherwise. */
  dataIova = -1;
  /** The {@link DmaBufferEntry} the data lives in (zero-copy), counted in its `uses` from enqueue to finish. */
  dmaBuffer: DmaBufferEntry | undefined = undefined;
  /** Whether and which way the data goes through the bounce pool. */
  bounce: BounceDirection = BOUNCE_NONE;
  /** Ring buffers the chain has. */
  segments = 0;
  /** Bounce chunks taken, `chunks[0..chunkCount)`. */
  readonly chunks: Int32Array;
  chunkCount = 0;
  request: DriverRequest = new DriverRequest();
  /** The queue and chain index while in a ring; undefined while queued. */
  queue: DriverQueue | undefined = undefined;
  head = -1;
  /** Deadline clock tick at dispatch. */
  epoch = 0;
  /**
   * The queue this op must go to (its index in the driver's queues), or -1
   * (default): any queue, round-robin. A targeted op waits in its queue's own
   * FIFO, so a full ring (a net TX queue) does not hold up another queue (the
   * control queue). Targeted ops do not use the bounce pool.
   */
  queueIndex = -1;
  /**
   * A buffer the driver keeps posted for the device to fill when it has
   * something (a net RX buffer), not a caller's request: it has no deadline,
   * is not counted in `pending` nor waited for by `close()`, and fails
   * silently on a reset or close (the protocol's `restarted()` posts it again).
   */
  standing = false;

  constructor(maxChunks: number) {
    this.chunks = new Int32Array(maxChunks);
  }
}

/**
 * The DriverRequest the next Promise executor binds. A module-level executor
 * reading it allocates no closure per request; it is set right before `new
 * Promise`, which calls the executor synchronously.
 */
let executorTarget: DriverRequest | undefined;
function bindRequest(resolve: (value: never) => void, reject: (error: Error) => void): void {
  const request = executorTarget as DriverRequest;
  request.resolve = resolve;
  request.reject = reject;
}

/** Creates the promise of `request` without a per-request closure. */
export function promiseOf<T>(request: DriverRequest): Promise<T> {
  executorTarget = request;
  const promise = new Promise<T>(bindRequest);
  executorTarget = undefined;
  return promise;
}

/** Settles a request's promise once (later calls do nothing) and detaches its abort listener. */
export function settle(request: DriverRequest): void {
  if (request.settled) return;
  request.settled = true;
  if (request.onAbort !== undefined) {
    (request.signal as AbortSignal).removeEventListener('abort', request.onAbort);
    request.onAbort = undefined;
  }
  if (request.callbacks !== undefined) request.callbacks.push(request);
  else if (request.error !== undefined) request.reject(request.error);
  else request.resolve(request.result as never);
}

/** A FIFO of ops waiting for ring or bounce space (a growable ring buffer). */
export class OpFifo<O> {
  #items: (O | undefined)[] = new Array<O | undefined>(64);
  #head = 0;
  size = 0;

  push(op: O): void {
    if (this.size === this.#items.length) {
      const grown = new Array<O | undefined>(this.#items.length * 2);
      for (let i = 0; i < this.size; i++) grown[i] = this.#items[(this.#head + i) % this.#items.length];
      this.#items = grown;
      this.#head = 0;
    }
    this.#items[(this.#head + this.size) % this.#items.length] = op;
    this.size++;
  }

  peek(): O {
    return this.#items[this.#head] as O;
  }

  shift(): O {
    const op = this.#items[this.#head] as O;
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#items.length;
    this.size--;
    return op;
  }
}
