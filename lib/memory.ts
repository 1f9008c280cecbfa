/**
 * DMA memory and IOVA space.
 *
 * Every byte a vDPA device reads or writes must live in memory that is
 * fd-backed and mapped MAP_SHARED: parents in VA mode (VDUSE, vdpa_sim) accept
 * an IOTLB update of anonymous memory and then never perform the I/O.
 * `DmaRegion` is such memory (a memfd, optionally on hugetlbfs), visible from
 * JavaScript through an ArrayBuffer without copies.
 */
import { ErrorCodes, VdpaError } from './errors';
import { native, NativeDmaMemory, PAGE_SIZE } from './native';

/** Size of an x86-64 / arm64 default huge page; MFD_HUGETLB regions must be a multiple of it. */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

/** Options for {@link DmaRegion.allocate}. */
export interface DmaRegionOptions {
  /** Back the region with huge pages (MFD_HUGETLB); needs free huge pages (`/proc/sys/vm/nr_hugepages`). */
  hugetlb?: boolean;
  /** memfd name, shown in /proc/PID/maps; default `vhost-vdpa-dma`. */
  name?: string;
}

/** Where a region is IOTLB-mapped (for {@link DmaRegion.free}'s refusal). @internal */
export interface RegionMappingSite {
  /** The device the mapping belongs to. */
  readonly path: string;
  readonly iova: bigint;
  readonly size: bigint;
  readonly asid: number;
}

/**
 * The live IOTLB mappings of each region, kept by the IOTLB mapper (lib/iotlb.ts)
 * through {@link noteRegionMapped} / {@link noteRegionUnmapped}.
 */
const liveMappings = new WeakMap<DmaRegion, Set<RegionMappingSite>>();

/** Records that `region` is now mapped at `site`; {@link DmaRegion.free} refuses until it is unmapped. @internal */
export function noteRegionMapped(region: DmaRegion, site: RegionMappingSite): void {
  let sites = liveMappings.get(region);
  if (sites === undefined) {
    sites = new Set();
    liveMappings.set(region, sites);
  }
  sites.add(site);
}

/** Records that the mapping at `site` is gone (unmapped, or dropped by a reset or close). @internal */
export function noteRegionUnmapped(region: DmaRegion, site: RegionMappingSite): void {
  liveMappings.get(region)?.delete(site);
}

function roundUp(value: number, to: number): number {
  return Math.ceil(value / to) * to;
}

/** A block of fd-backed, shared, device-mappable memory. */
export class DmaRegion {
  readonly #memory: NativeDmaMemory;
  #bytes: Uint8Array;

  private constructor(memory: NativeDmaMemory) {
    this.#memory = memory;
    this.#bytes = new Uint8Array(memory.buffer);
  }

  /**
   * Allocates `size` bytes (rounded up to the page or huge-page size), zeroed.
   * @throws VdpaError `ERR_INVALID_ARG` for a bad size; `ENOMEM`, `EMFILE`… from memfd_create/mmap.
   */
  static allocate(size: number, options: DmaRegionOptions = {}): DmaRegion {
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new VdpaError(`DMA region size must be a positive integer number of bytes, got ${String(size)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const hugetlb = options.hugetlb ?? false;
    const rounded = roundUp(size, hugetlb ? HUGE_PAGE_SIZE : PAGE_SIZE);
    const name = options.name ?? 'vhost-vdpa-dma';
    return new DmaRegion(new native.DmaMemory(rounded, hugetlb, name));
  }

  /**
   * Maps memory another process created (its memfd or hugetlbfs file), by path: `/proc/<pid>/fd/<n>`
   * of the creating process (same user; reopening a memfd through /proc works), or `/proc/self/fd/<n>` of
   * an inherited descriptor. The whole file is mapped MAP_SHARED, so both processes see the same bytes.
   * @throws VdpaError `ENOENT`, `EACCES`… from open(2); `EINVAL` for an empty file.
   */
  static attach(path: string): DmaRegion {
    if (typeof path !== 'string' || path.length === 0) {
      throw new VdpaError('shared memory path must be a non-empty string such as /proc/1234/fd/21', {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    return new DmaRegion(new native.DmaMemory(path));
  }

  /** The whole region as bytes. Empty (length 0) once freed. */
  get bytes(): Uint8Array {
    return this.#bytes;
  }

  /** The region's ArrayBuffer (detached once freed). */
  get buffer(): ArrayBuffer {
    this.#checkLive();
    return this.#memory.buffer;
  }

  /** User-space address of the first byte (what IOTLB updates carry as `uaddr`). */
  get address(): bigint {
    this.#checkLive();
    return this.#memory.address;
  }

  /** Size in bytes (a multiple of the page size). */
  get size(): number {
    return this.#memory.size;
  }

  /** The memfd; valid until {@link free}. */
  get fd(): number {
    return this.#memory.fd;
  }

  /** True once {@link free} was called. */
  get freed(): boolean {
    return this.#memory.freed;
  }

  /** A Buffer view of `length` bytes at `offset` (no copy). */
  view(offset: number, length: number): Buffer {
    this.#checkLive();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new VdpaError('view offset and length must be non-negative integers', {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (offset + length > this.size) {
      throw new VdpaError(`view [${offset}, ${offset + length}) exceeds the region size ${this.size}`, {
        code: ErrorCodes.OUT_OF_RANGE,
      });
    }
    return Buffer.from(this.#memory.buffer, offset, length);
  }

  /** True while an IOTLB mapping of a device (made with `map()`/`mapBatch()`) covers this region. */
  get mapped(): boolean {
    return (liveMappings.get(this)?.size ?? 0) > 0;
  }

  /**
   * Unmaps the memory. Every view of it becomes empty (its ArrayBuffer is
   * detached), so no code can reach unmapped memory. Idempotent.
   * @throws VdpaError `ERR_BUSY` while a device still has it IOTLB-mapped: the device could DMA into
   *   memory that is gone (or reused). Unmap it first (`device.unmap(mapping)`), or close or reset the device.
   */
  free(): void {
    const sites = liveMappings.get(this);
    if (sites !== undefined && sites.size > 0 && !this.#memory.freed) {
      const list = [...sites].map((s) => `${s.path} at IOVA [${hex(s.iova)}, +${s.size}) in ASID ${s.asid}`);
      throw new VdpaError(
        `cannot free a DMA region that is still IOTLB-mapped (${list.join('; ')}): the device could still ` +
          'access it. Unmap it first (device.unmap(mapping)), or close or reset the device',
        { code: ErrorCodes.BUSY, path: [...sites][0].path },
      );
    }
    this.#memory.free();
    this.#bytes = new Uint8Array(0);
  }

  #checkLive(): void {
    if (this.#memory.freed) {
      throw new VdpaError('DMA region has been freed', { code: ErrorCodes.CLOSED });
    }
  }
}

/** An inclusive IOVA range, as VHOST_VDPA_GET_IOVA_RANGE reports it. */
export interface IovaRange {
  first: bigint;
  last: bigint;
}

/**
 * First-fit allocator of IOVA ranges inside the device's usable range.
 * Ranges are aligned (default: the page size) and never overlap.
 */
export class IovaAllocator {
  readonly range: IovaRange;
  readonly alignment: bigint;
  /** Allocated [start, end) intervals, sorted by start. */
  readonly #used: { start: bigint; end: bigint }[] = [];

  /**
   * @param range the device's usable IOVA range (inclusive).
   * @param alignment power-of-two alignment of every allocation; default PAGE_SIZE.
   */
  constructor(range: IovaRange, alignment: number = PAGE_SIZE) {
    if (range.last < range.first) {
      throw new VdpaError(`empty IOVA range [${hex(range.first)}, ${hex(range.last)}]`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (!Number.isSafeInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0) {
      throw new VdpaError(`IOVA alignment must be a power of two, got ${alignment}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    this.range = range;
    this.alignment = BigInt(alignment);
  }

  /**
   * Finds and reserves `size` bytes. IOVA 0 is avoided so a zero address
   * always means "unset".
   * @throws VdpaError `ENOSPC` when no gap is large enough.
   */
  allocate(size: bigint): bigint {
    if (size <= 0n)
      throw new VdpaError('IOVA allocation size must be positive', { code: ErrorCodes.INVALID_ARG });
    let candidate = this.#alignUp(this.range.first === 0n ? this.alignment : this.range.first);
    for (const interval of this.#used) {
      if (candidate + size <= interval.start) break;
      if (interval.end > candidate) candidate = this.#alignUp(interval.end);
    }
    if (candidate + size - 1n > this.range.last) {
      throw new VdpaError(
        `no free IOVA range of ${size} bytes in [${hex(this.range.first)}, ${hex(this.range.last)}]`,
        { code: 'ENOSPC' },
      );
    }
    this.#insert(candidate, candidate + size);
    return candidate;
  }

  /**
   * Reserves a caller-chosen range.
   * @throws VdpaError `ERR_MISALIGNED`, `ERR_OUT_OF_RANGE` or `ERR_IOVA_OVERLAP`.
   */
  reserve(iova: bigint, size: bigint): void {
    if (size <= 0n) throw new VdpaError('IOVA range size must be positive', { code: ErrorCodes.INVALID_ARG });
    if (iova % this.alignment !== 0n) {
      throw new VdpaError(`IOVA ${hex(iova)} is not aligned to ${this.alignment} bytes`, {
        code: ErrorCodes.MISALIGNED,
      });
    }
    if (iova < this.range.first || iova + size - 1n > this.range.last) {
      throw new VdpaError(
        `IOVA range [${hex(iova)}, ${hex(iova + size - 1n)}] is outside the device's usable range ` +
          `[${hex(this.range.first)}, ${hex(this.range.last)}] (VHOST_VDPA_GET_IOVA_RANGE)`,
        { code: ErrorCodes.OUT_OF_RANGE },
      );
    }
    const clash = this.#used.find((u) => iova < u.end && u.start < iova + size);
    if (clash !== undefined) {
      throw new VdpaError(
        `IOVA range [${hex(iova)}, ${hex(iova + size - 1n)}] overlaps the mapping ` +
          `[${hex(clash.start)}, ${hex(clash.end - 1n)}]; unmap it first`,
        { code: ErrorCodes.IOVA_OVERLAP },
      );
    }
    this.#insert(iova, iova + size);
  }

  /** Releases the range that starts at `iova`. Returns false if none does. */
  release(iova: bigint): boolean {
    const index = this.#used.findIndex((u) => u.start === iova);
    if (index < 0) return false;
    this.#used.splice(index, 1);
    return true;
  }

  /** Releases everything (after a device reset dropped the mappings). */
  clear(): void {
    this.#used.length = 0;
  }

  /** Bytes currently reserved. */
  get reservedBytes(): bigint {
    return this.#used.reduce((sum, u) => sum + (u.end - u.start), 0n);
  }

  #alignUp(value: bigint): bigint {
    return ((value + this.alignment - 1n) / this.alignment) * this.alignment;
  }

  #insert(start: bigint, end: bigint): void {
    let index = this.#used.findIndex((u) => u.start > start);
    if (index < 0) index = this.#used.length;
    this.#used.splice(index, 0, { start, end });
  }
}

/** Formats an address as 0x… for messages. */
export function hex(value: bigint | number): string {
  return '0x' + value.toString(16);
}
