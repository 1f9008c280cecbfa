/**
 * IOTLB mapping for vhost-vdpa: which memory is visible to the device at
 * which IOVA, per address space (ASID).
 *
 * The kernel answers every failed IOTLB write with EFAULT (overlap, bad ASID,
 * memlock, out of memory) and silently ignores anonymous memory on VA-mode
 * parents, so everything is validated here first and each refusal says why.
 * The bookkeeping (live mappings, one IOVA allocator per ASID) is what makes
 * overlap and memlock checks possible.
 */
import { ErrorCodes, VdpaError } from './errors';
import { hasBit, VhostBackendF } from './features';
import {
  DmaRegion,
  hex,
  IovaAllocator,
  IovaRange,
  noteRegionMapped,
  noteRegionUnmapped,
  RegionMappingSite,
} from './memory';
import { native, PAGE_SIZE } from './native';
import { memlockLimit, whyNotDmaCapable } from './procfs';
import {
  encodeIotlbMessages,
  IotlbMessage,
  VHOST_ACCESS_RO,
  VHOST_ACCESS_RW,
  VHOST_ACCESS_WO,
  VHOST_IOTLB_BATCH_BEGIN,
  VHOST_IOTLB_BATCH_END,
  VHOST_IOTLB_INVALIDATE,
  VHOST_IOTLB_UPDATE,
} from './uapi';

/** Who may access a mapping, from the device's point of view. */
export type DmaAccess = 'ro' | 'wo' | 'rw';

/** Memory that is not a {@link DmaRegion}: a raw user-space range. Must be shared and file-backed. */
export interface RawMemory {
  uaddr: bigint;
  size: bigint;
}

/** Options for {@link VhostVdpaDevice.map}. */
export interface MapOptions {
  /** IOVA to map at; by default one is allocated from the device's IOVA range. */
  iova?: bigint;
  /** Device access; default `'rw'`. */
  access?: DmaAccess;
  /** Address space id; default 0. Non-zero needs VHOST_BACKEND_F_IOTLB_ASID. */
  asid?: number;
  /** Byte offset into a DmaRegion (page-aligned); default 0. */
  offset?: number;
  /** Bytes to map (page multiple); default the rest of the region. */
  size?: number;
}

/** One entry of {@link VhostVdpaDevice.mapBatch}. */
export type MapRequest = MapOptions & { memory: DmaRegion | RawMemory };

/** A live IOTLB mapping. */
export interface IotlbMapping {
  readonly iova: bigint;
  readonly size: bigint;
  readonly uaddr: bigint;
  readonly asid: number;
  readonly access: DmaAccess;
  /**
   * The region mapped (absent for raw `{ uaddr, size }` memory). The mapping
   * holds it, and the device holds its live mappings, so a region passed
   * straight to `map()` is not garbage-collected (and unmapped under the
   * device) while mapped; `region.free()` refuses with `ERR_BUSY` until it is unmapped.
   */
  readonly region?: DmaRegion;
}

/** How {@link VhostVdpaDevice.map} checks RLIMIT_MEMLOCK. */
export type MemlockPolicy = 'enforce' | 'ignore';

/** What the mapper needs from its device (a VhostVdpaDevice). @internal */
export interface IotlbDevice {
  readonly path: string;
  getIovaRange(): IovaRange;
  getAsNum(): number;
  /** Backend features acknowledged (IOTLB_BATCH, IOTLB_ASID matter here). */
  readonly ackedBackendFeatures: bigint;
}

const ACCESS_PERM: Record<DmaAccess, number> = {
  ro: VHOST_ACCESS_RO,
  wo: VHOST_ACCESS_WO,
  rw: VHOST_ACCESS_RW,
};

/** The VHOST_IOTLB_UPDATE message that maps `m`. */
function updateMessage(m: IotlbMapping): IotlbMessage {
  return {
    type: VHOST_IOTLB_UPDATE,
    asid: m.asid,
    iova: m.iova,
    size: m.size,
    uaddr: m.uaddr,
    perm: ACCESS_PERM[m.access],
  };
}

/** The VHOST_IOTLB_INVALIDATE message that unmaps `m`. */
function invalidateMessage(m: IotlbMapping): IotlbMessage {
  return { type: VHOST_IOTLB_INVALIDATE, asid: m.asid, iova: m.iova, size: m.size, uaddr: 0n, perm: 0 };
}

/** Validated IOTLB mapping and its bookkeeping for one device. @internal */
export class IotlbMapper {
  readonly #device: IotlbDevice;
  readonly #writeMessages: (bytes: Uint8Array) => void;
  readonly #memlock: MemlockPolicy;
  readonly #allocators = new Map<number, IovaAllocator>();
  readonly #mappings = new Set<IotlbMapping>();
  #asNum: number | undefined;

  /**
   * @param writeMessages writes encoded `struct vhost_msg_v2` messages in one crossing; a failure
   *   carries `index`, the number of messages the kernel accepted.
   */
  constructor(device: IotlbDevice, writeMessages: (bytes: Uint8Array) => void, memlock: MemlockPolicy) {
    this.#device = device;
    this.#writeMessages = writeMessages;
    this.#memlock = memlock;
  }

  /** Live mappings. */
  get mappings(): readonly IotlbMapping[] {
    return [...this.#mappings];
  }

  /** Validates, reserves IOVAs, and sends the updates in one crossing (one batch when offered). */
  mapBatch(entries: readonly MapRequest[]): IotlbMapping[] {
    const prepared: IotlbMapping[] = [];
    try {
      let pending = 0n;
      for (const entry of entries) {
        const mapping = this.#prepare(entry, pending);
        pending += mapping.size;
        prepared.push(mapping);
      }
      this.#write(prepared.map(updateMessage));
    } catch (error) {
      for (const mapping of prepared) this.#allocator(mapping.asid).release(mapping.iova);
      throw error;
    }
    for (const mapping of prepared) {
      this.#mappings.add(mapping);
      if (mapping.region !== undefined) noteRegionMapped(mapping.region, this.#site(mapping));
    }
    return prepared;
  }

  /** Invalidates live mappings and frees their IOVA ranges. */
  unmapBatch(mappings: readonly IotlbMapping[]): void {
    this.#checkLive(mappings);
    this.#write(mappings.map(invalidateMessage));
    for (const mapping of mappings) {
      this.#mappings.delete(mapping);
      this.#allocator(mapping.asid).release(mapping.iova);
      this.#releaseRegion(mapping);
    }
  }

  /**
   * Sends `mappings` (live ones) to the kernel again — an INVALIDATE and an
   * UPDATE each, in one batch — leaving the bookkeeping as it is. A device
   * reset keeps vhost-vdpa's own IOTLB, but a parent that cleans its maps on
   * reset (vdpa_sim, mlx5 without IOTLB_PERSIST) no longer sees them until
   * they are sent again.
   */
  resend(mappings: readonly IotlbMapping[]): void {
    this.#checkLive(mappings);
    this.#write(mappings.flatMap((m) => [invalidateMessage(m), updateMessage(m)]));
  }

  /** Forgets every mapping: the kernel dropped them (the device was closed). */
  forget(): void {
    for (const mapping of this.#mappings) this.#releaseRegion(mapping);
    this.#mappings.clear();
    for (const allocator of this.#allocators.values()) allocator.clear();
  }

  #checkLive(mappings: readonly IotlbMapping[]): void {
    for (const mapping of mappings) {
      if (!this.#mappings.has(mapping)) {
        throw new VdpaError(`IOVA ${hex(mapping.iova)} is not a live mapping of ${this.#device.path}`, {
          code: ErrorCodes.INVALID_ARG,
          path: this.#device.path,
        });
      }
    }
  }

  /** One site object per mapping, so unmapping finds what mapping recorded. */
  readonly #sites = new WeakMap<IotlbMapping, RegionMappingSite>();

  #site(mapping: IotlbMapping): RegionMappingSite {
    let site = this.#sites.get(mapping);
    if (site === undefined) {
      site = { path: this.#device.path, iova: mapping.iova, size: mapping.size, asid: mapping.asid };
      this.#sites.set(mapping, site);
    }
    return site;
  }

  #releaseRegion(mapping: IotlbMapping): void {
    if (mapping.region !== undefined) noteRegionUnmapped(mapping.region, this.#site(mapping));
  }

  #allocator(asid: number): IovaAllocator {
    let allocator = this.#allocators.get(asid);
    if (allocator === undefined) {
      allocator = new IovaAllocator(this.#device.getIovaRange(), PAGE_SIZE);
      this.#allocators.set(asid, allocator);
    }
    return allocator;
  }

  /** Validates one map request and reserves its IOVA range. */
  #prepare(entry: MapRequest, pendingBytes: bigint): IotlbMapping {
    const path = this.#device.path;
    const access = entry.access ?? 'rw';
    if (!(access in ACCESS_PERM)) {
      throw new VdpaError(`access must be 'ro', 'wo' or 'rw', got ${String(access)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    const asid = entry.asid ?? 0;
    if (!Number.isInteger(asid) || asid < 0 || asid > 0xffffffff) {
      throw new VdpaError(`asid must be an integer in [0, 2^32), got ${String(asid)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (asid !== 0 && !hasBit(this.#device.ackedBackendFeatures, VhostBackendF.IOTLB_ASID)) {
      throw new VdpaError(
        `ASID ${asid} needs VHOST_BACKEND_F_IOTLB_ASID, which ${path} did not acknowledge`,
        {
          code: ErrorCodes.UNSUPPORTED,
          path,
        },
      );
    }
    this.#asNum ??= this.#device.getAsNum();
    if (asid >= this.#asNum) {
      throw new VdpaError(`ASID ${asid} does not exist: ${path} has ${this.#asNum} address space(s)`, {
        code: ErrorCodes.OUT_OF_RANGE,
        path,
      });
    }
    const { uaddr, size } = resolveMemory(entry);
    const region = entry.memory instanceof DmaRegion ? { region: entry.memory } : {};
    const page = BigInt(PAGE_SIZE);
    if (uaddr % page !== 0n || size % page !== 0n || size === 0n) {
      throw new VdpaError(
        `memory to map must be page-aligned and a non-zero multiple of ${PAGE_SIZE} bytes ` +
          `(address ${hex(uaddr)}, size ${size})`,
        { code: ErrorCodes.MISALIGNED },
      );
    }
    if (this.#memlock === 'enforce') this.#checkMemlock(size + pendingBytes);
    const allocator = this.#allocator(asid);
    if (entry.iova === undefined)
      return { iova: allocator.allocate(size), size, uaddr, asid, access, ...region };
    if (typeof entry.iova !== 'bigint' || entry.iova < 0n || entry.iova >= 2n ** 64n) {
      throw new VdpaError('iova must be a bigint in [0, 2^64)', { code: ErrorCodes.INVALID_ARG, path });
    }
    allocator.reserve(entry.iova, size);
    return { iova: entry.iova, size, uaddr, asid, access, ...region };
  }

  #checkMemlock(extra: bigint): void {
    const limit = memlockLimit();
    if (limit === undefined) return;
    let mapped = 0n;
    for (const m of this.#mappings) mapped += m.size;
    if (mapped + extra > limit) {
      throw new VdpaError(
        `mapping ${extra} more bytes (${mapped} already mapped) exceeds RLIMIT_MEMLOCK of ${limit} bytes: ` +
          `hardware vDPA devices pin mapped memory. Raise the limit (ulimit -l, LimitMEMLOCK=) or, ` +
          `for VA-mode devices (VDUSE, vdpa_sim) that do not pin, open with { memlock: 'ignore' }`,
        { code: ErrorCodes.MEMLOCK, path: this.#device.path },
      );
    }
  }

  /**
   * Writes IOTLB messages, inside a batch when the device offers batching. If
   * the kernel refuses one, the updates it had applied are invalidated, so a
   * batch is all or nothing.
   */
  #write(messages: IotlbMessage[]): void {
    const asid = messages[0]?.asid ?? 0;
    // BATCH_END commits the batch to the ASID it names, so only same-ASID messages share a batch.
    const batch =
      messages.length > 1 &&
      hasBit(this.#device.ackedBackendFeatures, VhostBackendF.IOTLB_BATCH) &&
      messages.every((m) => m.asid === asid);
    const marker = (type: number): IotlbMessage => ({ type, asid, iova: 0n, size: 0n, uaddr: 0n, perm: 0 });
    const all = batch
      ? [marker(VHOST_IOTLB_BATCH_BEGIN), ...messages, marker(VHOST_IOTLB_BATCH_END)]
      : messages;
    try {
      this.#writeMessages(encodeIotlbMessages(all));
    } catch (error) {
      const failedAt = (error as { index?: number }).index ?? 0;
      const rollback: IotlbMessage[] = all
        .slice(0, failedAt)
        .filter((m) => m.type === VHOST_IOTLB_UPDATE)
        .map((m) => ({ ...m, type: VHOST_IOTLB_INVALIDATE, uaddr: 0n, perm: 0 }));
      if (batch && failedAt > 0) rollback.push(marker(VHOST_IOTLB_BATCH_END));
      if (rollback.length > 0) {
        try {
          this.#writeMessages(encodeIotlbMessages(rollback));
        } catch {
          // The original error is the one to report; a failed rollback leaves
          // nothing worse than the failed batch did.
        }
      }
      throw describeFailure(this.#device.path, all[failedAt], error as VdpaError);
    }
  }
}

function describeFailure(path: string, failed: IotlbMessage | undefined, error: VdpaError): VdpaError {
  const kind = (type: number): string =>
    type === VHOST_IOTLB_UPDATE ? 'UPDATE' : type === VHOST_IOTLB_INVALIDATE ? 'INVALIDATE' : 'BATCH';
  const what =
    failed === undefined
      ? 'IOTLB message'
      : `IOTLB ${kind(failed.type)} of IOVA [${hex(failed.iova)}, +${failed.size}) in ASID ${failed.asid}`;
  return new VdpaError(
    `${path} rejected the ${what}: ${error.code}` +
      (error.code === 'EFAULT'
        ? ' (the kernel reports every IOTLB failure as EFAULT: overlap, bad ASID, out of memory or memlock;' +
          ' see dmesg for details)'
        : ''),
    { code: error.code, errno: error.errno, syscall: 'write(IOTLB)', path, cause: error },
  );
}

/** The user-space range a map request covers, or a VdpaError saying why it cannot be mapped. */
function resolveMemory(entry: MapRequest): { uaddr: bigint; size: bigint } {
  const memory = entry.memory;
  if (memory instanceof DmaRegion) {
    if (memory.freed) throw new VdpaError('cannot map a freed DMA region', { code: ErrorCodes.CLOSED });
    const offset = entry.offset ?? 0;
    const size = entry.size ?? memory.size - offset;
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(size) ||
      offset < 0 ||
      size <= 0 ||
      offset + size > memory.size
    ) {
      throw new VdpaError(
        `range [${offset}, ${offset + size}) is not inside the ${memory.size}-byte region`,
        {
          code: ErrorCodes.OUT_OF_RANGE,
        },
      );
    }
    return { uaddr: memory.address + BigInt(offset), size: BigInt(size) };
  }
  if (ArrayBuffer.isView(memory) || memory instanceof ArrayBuffer) {
    const address = ArrayBuffer.isView(memory) ? native.addressOf(memory) : undefined;
    throw new VdpaError(
      'a Buffer, TypedArray or ArrayBuffer cannot be mapped for DMA' +
        (address === undefined ? '' : ` (it lives at ${hex(address)} in the JavaScript heap)`) +
        ': it is anonymous memory, which VA-mode devices (VDUSE, vdpa_sim) silently ignore. ' +
        'Allocate with DmaRegion.allocate() and copy the data in',
      { code: ErrorCodes.NOT_DMA_MEMORY },
    );
  }
  if (
    typeof memory !== 'object' ||
    memory === null ||
    typeof memory.uaddr !== 'bigint' ||
    typeof memory.size !== 'bigint'
  ) {
    throw new VdpaError('memory must be a DmaRegion or { uaddr: bigint, size: bigint }', {
      code: ErrorCodes.INVALID_ARG,
    });
  }
  const reason = whyNotDmaCapable(memory.uaddr, memory.size);
  if (reason !== undefined) {
    throw new VdpaError(
      `cannot map [${hex(memory.uaddr)}, +${memory.size}) for DMA: ${reason}. VA-mode devices (VDUSE, vdpa_sim) ` +
        'only see shared, file-backed memory (memfd, hugetlbfs); use DmaRegion.allocate()',
      { code: ErrorCodes.NOT_DMA_MEMORY },
    );
  }
  return { uaddr: memory.uaddr, size: memory.size };
}
