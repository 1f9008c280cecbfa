/**
 * A bounce pool: fixed-size chunks of mapped DMA memory through which data
 * that does not live in DMA memory (an ordinary Buffer) is copied on its way
 * to or from a device. Chunks are handed out from a stack, so allocating and
 * releasing are O(chunks) with no allocation; a request takes one chunk per
 * segment, so chunks never need to be contiguous.
 */
import { ErrorCodes, VdpaError } from './errors';

/** Chunks of one mapped region, addressed by index. */
export class BouncePool {
  /** Bytes per chunk. */
  readonly chunkSize: number;
  /** Number of chunks. */
  readonly chunks: number;
  readonly #bytes: Uint8Array;
  readonly #iova: number;
  readonly #stack: Int32Array;
  #top: number;

  /**
   * @param bytes the pool's memory (a view of a mapped DmaRegion).
   * @param iova the IOVA at which the device sees `bytes[0]`.
   * @param chunkSize bytes per chunk; `bytes.length` is divided into whole chunks.
   */
  constructor(bytes: Uint8Array, iova: number, chunkSize: number) {
    if (!Number.isInteger(chunkSize) || chunkSize <= 0 || chunkSize > bytes.length) {
      throw new VdpaError(`bounce chunk size must be an integer in [1, ${bytes.length}]`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    this.chunkSize = chunkSize;
    this.chunks = Math.floor(bytes.length / chunkSize);
    this.#bytes = bytes;
    this.#iova = iova;
    this.#stack = new Int32Array(this.chunks);
    for (let i = 0; i < this.chunks; i++) this.#stack[i] = this.chunks - 1 - i;
    this.#top = this.chunks;
  }

  /** Chunks available. */
  get available(): number {
    return this.#top;
  }

  /**
   * Takes `count` chunks into `out[0..count)`. All or nothing: returns false
   * (taking none) when fewer are free — the caller waits for releases.
   */
  take(count: number, out: Int32Array): boolean {
    if (count > this.#top) return false;
    for (let i = 0; i < count; i++) out[i] = this.#stack[--this.#top];
    return true;
  }

  /** Returns `list[0..count)` to the pool. */
  release(list: Int32Array, count: number): void {
    for (let i = 0; i < count; i++) this.#stack[this.#top++] = list[i];
  }

  /** The IOVA of a chunk. */
  iovaOf(chunk: number): number {
    return this.#iova + chunk * this.chunkSize;
  }

  /** Copies `length` bytes of `source` from `sourceOffset` into the chunks, in order. */
  copyIn(list: Int32Array, source: Uint8Array, sourceOffset: number, length: number): void {
    for (let i = 0, done = 0; done < length; i++) {
      const n = Math.min(this.chunkSize, length - done);
      const at = list[i] * this.chunkSize;
      this.#bytes.set(source.subarray(sourceOffset + done, sourceOffset + done + n), at);
      done += n;
    }
  }

  /** Copies `length` bytes out of the chunks, in order, into `target` at `targetOffset`. */
  copyOut(list: Int32Array, target: Uint8Array, targetOffset: number, length: number): void {
    for (let i = 0, done = 0; done < length; i++) {
      const n = Math.min(this.chunkSize, length - done);
      const at = list[i] * this.chunkSize;
      target.set(this.#bytes.subarray(at, at + n), targetOffset + done);
      done += n;
    }
  }
}
