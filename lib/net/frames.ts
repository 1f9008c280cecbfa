/**
 * The async iterator behind `NetDevice.frames()`: a queue of received frames
 * with a high-water mark that tells the device to stop refilling its RX ring
 * (flow control) and to start again once the consumer has caught up.
 */

interface FlowControl {
  /** The queue reached its high-water mark. */
  full(): void;
  /** A full queue drained to half. */
  drained(): void;
  /** The iterator ended (break, return(), or the device closed). */
  done(iterator: FrameIterator): void;
}

export class FrameIterator implements AsyncIterableIterator<Buffer> {
  readonly #highWaterMark: number;
  readonly #flow: FlowControl;
  #queue: Buffer[] = [];
  #head = 0;
  #full = false;
  #ended = false;
  #waiter: ((result: IteratorResult<Buffer>) => void) | undefined;

  constructor(highWaterMark: number, flow: FlowControl) {
    this.#highWaterMark = highWaterMark;
    this.#flow = flow;
  }

  /** Frames waiting to be taken. */
  get size(): number {
    return this.#queue.length - this.#head;
  }

  push(frame: Buffer): void {
    if (this.#ended) return;
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      waiter({ value: frame, done: false });
      return;
    }
    this.#queue.push(frame);
    if (!this.#full && this.size >= this.#highWaterMark) {
      this.#full = true;
      this.#flow.full();
    }
  }

  next(): Promise<IteratorResult<Buffer>> {
    if (this.size > 0) {
      const frame = this.#queue[this.#head++];
      if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head);
        this.#head = 0;
      }
      if (this.#full && this.size <= this.#highWaterMark >> 1) {
        this.#full = false;
        this.#flow.drained();
      }
      return Promise.resolve({ value: frame, done: false });
    }
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.#waiter = resolve));
  }

  /** `break` in a for-await loop: stop receiving into this iterator. */
  return(): Promise<IteratorResult<Buffer>> {
    this.end();
    this.#queue = [];
    this.#head = 0;
    return Promise.resolve({ value: undefined, done: true });
  }

  /** No more frames: what is queued is still delivered, then `done`. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#full) {
      this.#full = false;
      this.#flow.drained();
    }
    this.#flow.done(this);
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Buffer> {
    return this;
  }
}
