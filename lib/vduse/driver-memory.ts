/**
 * The driver's memory as a VDUSE device sees it.
 *
 * A VDUSE daemon reaches the buffers the driver hands it only through the
 * IOTLB: ranges of IOVA [start, last] the kernel maps (VDUSE_IOTLB_GET_FD
 * returns an fd and an offset to mmap, with the permission the driver's DMA
 * direction allows) and invalidates (the UPDATE_IOTLB message). `DriverMemory`
 * keeps those ranges, each backed by the Buffer the daemon mmapped, and turns
 * an IOVA range of a descriptor into Buffer views of that memory — no copies.
 *
 * The driver is trusted for nothing: an address outside every range, a range
 * that runs off the end of one mapping into a hole, or a buffer the device would
 * write through a read-only mapping all yield "no views", never an exception
 * and never a view of memory outside the mapping.
 *
 * Lifetime: a view is a window onto the mmapped Buffer. Removing a range here
 * does not unmap it (the Buffer's owner does that); views handed out before
 * stay valid memory as long as their Buffer is alive, but they no longer
 * describe what the driver mapped at that IOVA.
 */
import { ErrorCodes, VdpaError } from '../errors';

/** One IOTLB mapping: IOVA [start, last] backed by `buffer`. */
export interface DriverMemoryRegion {
  /** First IOVA of the range (inclusive). */
  start: number;
  /** Last IOVA of the range (inclusive). */
  last: number;
  /** The device may write the range (VDUSE_ACCESS_WO or VDUSE_ACCESS_RW). */
  writable: boolean;
  /** The device may read the range (VDUSE_ACCESS_RO or VDUSE_ACCESS_RW). */
  readable: boolean;
  /** The bytes of [start, last]: exactly `last - start + 1` of them. */
  buffer: Buffer;
}

/**
 * The IOTLB ranges a VDUSE device can reach, by IOVA. Lookups are a binary
 * search over the ranges sorted by start, with the last range hit tried first
 * (consecutive descriptors usually fall in the same range).
 */
export class DriverMemory {
  /**
   * Called when an access touches an IOVA no range covers, with that IOVA and
   * the bytes still wanted from it. The VDUSE device sets it to fetch the
   * mapping (VDUSE_IOTLB_GET_FD, mmap, {@link add}) and returns true when it
   * added one; the lookup is then retried once. Not called for an access a
   * range covers without the needed permission.
   */
  onMiss?: (iova: number, length: number) => boolean;

  // Sorted by start, non-overlapping.
  #regions: DriverMemoryRegion[] = [];
  #hint = 0;
  #generation = 0;
  // Where the last failed lookup found a hole (-1: it failed on a permission).
  #missAt = -1;

  /**
   * Bumped by every {@link add}, {@link remove} and {@link clear}: a holder of
   * views (a device queue's rings) re-resolves them when it changed.
   */
  get generation(): number {
    return this.#generation;
  }

  /** The ranges, sorted by start (copies of the records; the buffers are shared). */
  regions(): DriverMemoryRegion[] {
    return this.#regions.map((r) => ({ ...r }));
  }

  /**
   * Adds a range; whatever part of older ranges it overlaps is dropped first
   * (the kernel's IOTLB has one mapping per IOVA).
   * @throws VdpaError `ERR_INVALID_ARG` when start/last are not safe integers
   *   with start ≤ last, or the buffer is not exactly `last - start + 1` bytes.
   */
  add(region: DriverMemoryRegion): void {
    const { start, last, buffer } = region;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(last) || start < 0 || last < start) {
      throw new VdpaError(
        `driver memory range [${String(start)}, ${String(last)}] must be safe integers with 0 ≤ start ≤ last`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    if (!Buffer.isBuffer(buffer) || buffer.length !== last - start + 1) {
      throw new VdpaError(
        `driver memory range [0x${start.toString(16)}, 0x${last.toString(16)}] needs a Buffer of ` +
          `${last - start + 1} bytes, got ${Buffer.isBuffer(buffer) ? buffer.length : typeof buffer}`,
        { code: ErrorCodes.INVALID_ARG },
      );
    }
    this.remove(start, last);
    const record: DriverMemoryRegion = {
      start,
      last,
      readable: region.readable,
      writable: region.writable,
      buffer,
    };
    const at = this.#insertionPoint(start);
    this.#regions.splice(at, 0, record);
    this.#generation++;
  }

  /**
   * Forgets IOVA [start, last] (what an UPDATE_IOTLB message invalidates):
   * ranges inside it go, ranges that straddle an end are trimmed to the part
   * outside it.
   */
  remove(start: number, last: number): void {
    const kept: DriverMemoryRegion[] = [];
    let changed = false;
    for (const r of this.#regions) {
      if (r.last < start || r.start > last) {
        kept.push(r);
        continue;
      }
      changed = true;
      if (r.start < start) {
        kept.push({ ...r, last: start - 1, buffer: r.buffer.subarray(0, start - r.start) });
      }
      if (r.last > last) {
        kept.push({ ...r, start: last + 1, buffer: r.buffer.subarray(last + 1 - r.start) });
      }
    }
    if (!changed) return;
    this.#regions = kept;
    this.#hint = 0;
    this.#generation++;
  }

  /** Forgets every range (device reset, or the daemon dropping all mappings). */
  clear(): void {
    this.#regions = [];
    this.#hint = 0;
    this.#generation++;
  }

  /**
   * Appends to `out` Buffer views covering IOVA [iova, iova + length), one per
   * range the bytes fall in, and returns true; or returns false and leaves
   * `out` as it was when any byte is unmapped, or mapped without the
   * permission (`deviceWrites`: the device will write the bytes, else read
   * them). A zero length succeeds with no views. Allocates nothing but the
   * views.
   */
  views(iova: number, length: number, deviceWrites: boolean, out: Buffer[]): boolean {
    if (length === 0) return true;
    if (!Number.isSafeInteger(iova) || iova < 0 || !Number.isSafeInteger(iova + length)) return false;
    const before = out.length;
    if (this.#collect(iova, length, deviceWrites, out)) return true;
    out.length = before;
    const missAt = this.#missAt;
    if (missAt < 0 || this.onMiss === undefined || !this.onMiss(missAt, iova + length - missAt)) return false;
    if (this.#collect(iova, length, deviceWrites, out)) return true;
    out.length = before;
    return false;
  }

  /**
   * One view of IOVA [iova, iova + length) when the bytes lie in a single
   * range with the permission (ring structures must), else undefined. Asks
   * {@link onMiss} once like {@link views}.
   */
  view(iova: number, length: number, deviceWrites: boolean): Buffer | undefined {
    if (!Number.isSafeInteger(iova) || iova < 0 || !Number.isSafeInteger(length) || length < 0)
      return undefined;
    let r = this.#find(iova);
    if (r === undefined && this.onMiss?.(iova, length) === true) r = this.#find(iova);
    if (r === undefined || iova + length - 1 > r.last || !(deviceWrites ? r.writable : r.readable)) {
      return undefined;
    }
    return r.buffer.subarray(iova - r.start, iova - r.start + length);
  }

  /** Pushes the views of [iova, iova + length); on failure records where (#missAt). */
  #collect(iova: number, length: number, deviceWrites: boolean, out: Buffer[]): boolean {
    const end = iova + length;
    let at = iova;
    while (at < end) {
      const r = this.#find(at);
      if (r === undefined) {
        this.#missAt = at;
        return false;
      }
      if (!(deviceWrites ? r.writable : r.readable)) {
        this.#missAt = -1;
        return false;
      }
      const stop = end - 1 < r.last ? end : r.last + 1;
      out.push(r.buffer.subarray(at - r.start, stop - r.start));
      at = stop;
    }
    return true;
  }

  /** The range holding `iova`, if any. */
  #find(iova: number): DriverMemoryRegion | undefined {
    const regions = this.#regions;
    const hinted = regions[this.#hint] as DriverMemoryRegion | undefined;
    if (hinted !== undefined && hinted.start <= iova && iova <= hinted.last) return hinted;
    let lo = 0;
    let hi = regions.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = regions[mid];
      if (iova < r.start) hi = mid - 1;
      else if (iova > r.last) lo = mid + 1;
      else {
        this.#hint = mid;
        return r;
      }
    }
    return undefined;
  }

  /** Index of the first range starting after `start`. */
  #insertionPoint(start: number): number {
    let lo = 0;
    let hi = this.#regions.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#regions[mid].start < start) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
