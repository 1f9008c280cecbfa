/**
 * Guest RAM for a VMM: regions at guest-physical addresses (GPAs), each a
 * memfd (or hugetlbfs file) mapped MAP_SHARED, so that a vDPA device can be
 * pointed at them (IOTLB UPDATE at IOVA = GPA, or at the guest IOMMU's IOVAs)
 * and a second process can map the very same bytes (a VMM taking over).
 */
import { ErrorCodes, VdpaError } from '../errors';
import type { DmaAccess, IotlbMapping, MapRequest } from '../iotlb';
import { DmaRegion, HUGE_PAGE_SIZE, hex } from '../memory';
import { PAGE_SIZE } from '../native';

/** Options for {@link GuestMemory.addRegion}. */
export interface GuestRegionOptions {
  /** Guest-physical address of the first byte; page-aligned (huge-page-aligned with `hugepages`). */
  gpa: bigint | number;
  /** Bytes; a multiple of the page size (of the huge page size with `hugepages`). */
  size: number;
  /** Back the region with 2 MiB huge pages (MFD_HUGETLB); needs free huge pages. */
  hugepages?: boolean;
}

/** One region of guest RAM. */
export interface GuestRegion {
  /** Guest-physical address of the first byte. */
  readonly gpa: bigint;
  /** Bytes. */
  readonly size: number;
  /** Huge-page backed. */
  readonly hugepages: boolean;
  /** The shared memory behind it. */
  readonly memory: DmaRegion;
}

/**
 * What another process needs to map the same guest RAM: for each region its
 * GPA and a path that opens its memfd. JSON-serialisable (GPAs as hex strings).
 */
export interface SharedGuestMemory {
  regions: { gpa: string; size: number; hugepages: boolean; path: string }[];
}

/** One guest IOMMU mapping for {@link GuestMemory.mapInto} in `iommu` mode: IOVA → GPA. */
export interface GuestIommuMapping {
  /** The IOVA the device uses (what the guest programmed into its vIOMMU). */
  iova: bigint;
  /** The guest-physical address it translates to. */
  gpa: bigint;
  /** Bytes; a page multiple, inside one region. */
  size: number;
  /** Device access; default `'rw'`. */
  access?: DmaAccess;
}

/** Where a GPA range lives: its region and the byte offset inside it. */
export interface GuestTranslation {
  readonly region: GuestRegion;
  readonly offset: number;
}

/** The device side {@link GuestMemory.mapInto} needs (a VhostVdpaDevice has it). */
export interface GuestMemoryDevice {
  readonly path: string;
  mapBatch(entries: readonly MapRequest[]): IotlbMapping[];
}

function toGpa(value: bigint | number, what: string): bigint {
  if (typeof value === 'bigint' ? value < 0n : !Number.isSafeInteger(value) || value < 0) {
    throw new VdpaError(`${what} must be a non-negative integer, got ${String(value)}`, {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  return BigInt(value);
}

/** Guest RAM made of regions at guest-physical addresses. */
export class GuestMemory {
  readonly #regions: GuestRegion[] = [];

  /** The regions, sorted by GPA. */
  get regions(): readonly GuestRegion[] {
    return this.#regions;
  }

  /**
   * Adds a region of fresh zeroed memory at `gpa`.
   * @throws VdpaError `ERR_INVALID_ARG` (bad numbers), `ERR_MISALIGNED` (GPA or size not page-aligned),
   *   `ERR_IOVA_OVERLAP` (overlaps a region), `ENOMEM` (no free huge pages) from memfd/mmap.
   */
  addRegion(options: GuestRegionOptions): GuestRegion {
    const gpa = toGpa(options.gpa, 'region GPA');
    const hugepages = options.hugepages ?? false;
    const align = hugepages ? HUGE_PAGE_SIZE : PAGE_SIZE;
    if (!Number.isSafeInteger(options.size) || options.size <= 0) {
      throw new VdpaError(`region size must be a positive integer, got ${String(options.size)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (gpa % BigInt(align) !== 0n || options.size % align !== 0) {
      throw new VdpaError(
        `region [${hex(gpa)}, +${options.size}) must start and end on a ${align}-byte ` +
          `${hugepages ? 'huge ' : ''}page boundary`,
        { code: ErrorCodes.MISALIGNED },
      );
    }
    this.#checkFree(gpa, options.size);
    const memory = DmaRegion.allocate(options.size, { hugetlb: hugepages, name: `guest-ram@${hex(gpa)}` });
    return this.#insert({ gpa, size: options.size, hugepages, memory });
  }

  /**
   * Maps the guest RAM another process shares ({@link share}'s answer): same GPAs, same bytes.
   * @throws VdpaError from open/mmap of a path (`ENOENT` when the owner exited), `ERR_INVALID_ARG`.
   */
  static attach(shared: SharedGuestMemory): GuestMemory {
    const guest = new GuestMemory();
    for (const r of shared.regions) {
      const gpa = toGpa(BigInt(r.gpa), 'region GPA');
      guest.#checkFree(gpa, r.size);
      const memory = DmaRegion.attach(r.path);
      if (memory.size !== r.size) {
        memory.free();
        throw new VdpaError(
          `${r.path} holds ${memory.size} bytes, but the region at ${r.gpa} has ${r.size}`,
          {
            code: ErrorCodes.INVALID_ARG,
          },
        );
      }
      guest.#insert({ gpa, size: r.size, hugepages: r.hugepages, memory });
    }
    return guest;
  }

  /**
   * How another process maps this RAM: each region's memfd as `/proc/<pid>/fd/<n>` (default: this
   * process). Opening that path reopens the memfd, so the reader needs the same user (or
   * CAP_SYS_PTRACE) and this process alive. For a child started with the memfds in its `stdio`
   * array, pass `fdPath: (fd, i) => '/proc/self/fd/' + (3 + i)` instead.
   */
  share(
    fdPath: (fd: number, index: number) => string = (fd) => `/proc/${process.pid}/fd/${fd}`,
  ): SharedGuestMemory {
    return {
      regions: this.#regions.map((r, i) => ({
        gpa: hex(r.gpa),
        size: r.size,
        hugepages: r.hugepages,
        path: fdPath(r.memory.fd, i),
      })),
    };
  }

  /** The memfds of the regions, in GPA order (for a child's `stdio` array). */
  get fds(): number[] {
    return this.#regions.map((r) => r.memory.fd);
  }

  /**
   * The region and offset of `[gpa, gpa + length)`.
   * @throws VdpaError `ERR_OUT_OF_RANGE` when the range is not inside one region (a hole, or it spans two).
   */
  translate(gpa: bigint | number, length: number): GuestTranslation {
    const at = toGpa(gpa, 'GPA');
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new VdpaError(`length must be a non-negative integer, got ${String(length)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    for (const region of this.#regions) {
      if (at >= region.gpa && at + BigInt(length) <= region.gpa + BigInt(region.size)) {
        return { region, offset: Number(at - region.gpa) };
      }
    }
    throw new VdpaError(
      `guest-physical range [${hex(at)}, +${length}) is not inside one region of guest RAM ` +
        `(${this.#describe()})`,
      { code: ErrorCodes.OUT_OF_RANGE },
    );
  }

  /** A live view (no copy) of `length` bytes at `gpa`. @throws as {@link translate}. */
  view(gpa: bigint | number, length: number): Buffer {
    const { region, offset } = this.translate(gpa, length);
    return region.memory.view(offset, length);
  }

  /** Copies `data` into guest RAM at `gpa`. @throws as {@link translate}. */
  write(gpa: bigint | number, data: Uint8Array): void {
    this.view(gpa, data.length).set(data);
  }

  /** A copy of `length` bytes at `gpa`. @throws as {@link translate}. */
  read(gpa: bigint | number, length: number): Buffer {
    return Buffer.from(this.view(gpa, length));
  }

  /**
   * Maps guest RAM into a device's IOTLB in one batch: every region at IOVA = GPA, or, with
   * `iommu`, exactly the guest IOMMU's IOVA → GPA mappings given.
   * @throws VdpaError `ERR_OUT_OF_RANGE` (an IOMMU mapping outside guest RAM), or what `mapBatch` throws.
   */
  mapInto(device: GuestMemoryDevice, iommu?: readonly GuestIommuMapping[]): IotlbMapping[] {
    const requests: MapRequest[] =
      iommu === undefined
        ? this.#regions.map((r) => ({ memory: r.memory, iova: r.gpa, access: 'rw' as const }))
        : iommu.map((m) => {
            const { region, offset } = this.translate(m.gpa, m.size);
            return { memory: region.memory, iova: m.iova, offset, size: m.size, access: m.access ?? 'rw' };
          });
    return device.mapBatch(requests);
  }

  /** Frees every region (unmap it from devices first). Idempotent. */
  free(): void {
    for (const r of this.#regions) r.memory.free();
  }

  #checkFree(gpa: bigint, size: number): void {
    const clash = this.#regions.find((r) => gpa < r.gpa + BigInt(r.size) && r.gpa < gpa + BigInt(size));
    if (clash !== undefined) {
      throw new VdpaError(
        `region [${hex(gpa)}, +${size}) overlaps the region [${hex(clash.gpa)}, +${clash.size})`,
        { code: ErrorCodes.IOVA_OVERLAP },
      );
    }
  }

  #insert(region: GuestRegion): GuestRegion {
    this.#regions.push(region);
    this.#regions.sort((a, b) => (a.gpa < b.gpa ? -1 : 1));
    return region;
  }

  #describe(): string {
    if (this.#regions.length === 0) return 'no regions';
    return this.#regions.map((r) => `[${hex(r.gpa)}, +${r.size})`).join(', ');
  }
}
