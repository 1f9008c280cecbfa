/**
 * The DMA memory of one driver: its own regions (rings, per-request slots,
 * the bounce pool) and the caller's zero-copy buffers from `allocBuffer()`.
 * Everything is mapped into the device's IOTLB here, sent to the device
 * again after a reset (a parent may clean its maps on reset, while
 * vhost-vdpa keeps them: chains and buffers keep their IOVAs), and unmapped
 * and freed here.
 */
import type { IotlbMapping, VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { DmaRegion } from '../memory';

/** The device operations DMA memory needs. */
export type DmaTransport = Pick<
  VhostVdpaDevice,
  'path' | 'closed' | 'mapBatch' | 'unmapBatch' | 'resendMappings' | 'mappings'
>;

/** One mapped region. */
export interface DmaBufferEntry {
  readonly region: DmaRegion;
  mapping: IotlbMapping;
  /** The IOVA of the region's first byte (as a number: ring code addresses below 2^53). */
  readonly iova: number;
  /** Ops queued or in flight that use it (zero-copy buffers): counted from enqueue to finish. */
  uses: number;
  /** The view `allocBuffer()` returned (tagged with the entry: see {@link DmaSpace.lookup}); undefined once freed. */
  view?: Buffer;
}

/**
 * The own, non-enumerable property by which a view from `allocBuffer()` leads
 * to its entry. Module-private: only this file can read or set it.
 */
const DMA_ENTRY = Symbol('vhost-vdpa.dmaEntry');

/** A Uint8Array that may carry {@link DMA_ENTRY}. */
type MaybeTagged = Uint8Array & { [DMA_ENTRY]?: DmaBufferEntry };

/** Converts an IOVA to the number the ring code uses, refusing those beyond 2^53. */
export function iovaNumber(iova: bigint): number {
  if (iova > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VdpaError(
      `IOVA 0x${iova.toString(16)} is beyond 2^53, which the ring code addresses as a number`,
      {
        code: ErrorCodes.OUT_OF_RANGE,
      },
    );
  }
  return Number(iova);
}

/** All DMA memory of one driver. */
export class DmaSpace {
  readonly #transport: DmaTransport;
  readonly #fixed: DmaBufferEntry[] = [];
  readonly #buffers = new Map<ArrayBuffer, DmaBufferEntry>();
  /** The last zero-copy buffer looked up, so a caller reusing a buffer skips the Map. */
  #lastKey: ArrayBuffer | undefined;
  #lastEntry: DmaBufferEntry | undefined;

  constructor(transport: DmaTransport) {
    this.#transport = transport;
  }

  /**
   * Allocates the driver's own regions and maps them in one IOTLB batch.
   * On failure nothing stays allocated.
   */
  allocateFixed(regions: readonly { bytes: number; name: string; asid?: number }[]): DmaBufferEntry[] {
    const allocated: DmaRegion[] = [];
    try {
      for (const r of regions) allocated.push(DmaRegion.allocate(r.bytes, { name: r.name }));
      const mappings = this.#transport.mapBatch(
        allocated.map((memory, i) => ({ memory, asid: regions[i].asid ?? 0 })),
      );
      const entries = allocated.map((region, i) => ({
        region,
        mapping: mappings[i],
        iova: iovaNumber(mappings[i].iova),
        uses: 0,
      }));
      this.#fixed.push(...entries);
      return entries;
    } catch (error) {
      for (const region of allocated) if (!region.freed) region.free();
      throw error;
    }
  }

  /** Allocates and maps a zero-copy buffer; see `BlockDevice.allocBuffer`. */
  allocBuffer(size: number, name: string): Buffer {
    const region = DmaRegion.allocate(size, { name });
    let mapping: IotlbMapping;
    try {
      [mapping] = this.#transport.mapBatch([{ memory: region }]);
    } catch (error) {
      region.free();
      throw error;
    }
    const view = region.view(0, size);
    const entry: DmaBufferEntry = { region, mapping, iova: iovaNumber(mapping.iova), uses: 0, view };
    this.#buffers.set(region.buffer, entry);
    // The returned view leads to its entry in one property load: a Map probe keyed by `view.buffer` costs a
    // C++ call (the `buffer` getter) and a hash lookup per request (3.7 % of the process's host CPU at QD32).
    Object.defineProperty(view, DMA_ENTRY, {
      value: entry,
      writable: true,
      enumerable: false,
      configurable: false,
    });
    // Not a thenable, said in one own-property load. A read's Promise resolves to this view, and resolving
    // with an object looks up `then` on it; without an own `then` that lookup walks Buffer's prototype chain
    // (five objects): about 540 instructions per read, 12 % of a QD32 read's host instructions
    // (bench/host-icount.mjs; under the lab's TCG the walk is cheap and nothing changed measurably there).
    // The property is non-enumerable and undefined, as `view.then` was before.
    Object.defineProperty(view, 'then', {
      value: undefined,
      writable: false,
      enumerable: false,
      configurable: false,
    });
    return view;
  }

  /**
   * Unmaps and frees a buffer from {@link allocBuffer}.
   * @throws VdpaError `ERR_INVALID_ARG` for a buffer that is not one, `ERR_BUSY` while a request queued or in
   *   flight uses it.
   */
  freeBuffer(buffer: Uint8Array): void {
    const entry = this.#buffers.get(buffer.buffer as ArrayBuffer);
    const path = this.#transport.path;
    if (entry === undefined) {
      throw new VdpaError('freeBuffer(): not a buffer from allocBuffer() of this device (or already freed)', {
        code: ErrorCodes.INVALID_ARG,
        path,
      });
    }
    if (entry.uses > 0) {
      throw new VdpaError(
        `freeBuffer(): ${entry.uses} request(s) queued or in flight still use this buffer; ` +
          'wait for them to settle (an aborted request keeps its buffer until the device returns it or is reset)',
        { code: ErrorCodes.BUSY, path },
      );
    }
    this.#buffers.delete(buffer.buffer as ArrayBuffer);
    this.#forgetCache();
    untag(entry);
    if (!this.#transport.closed && this.#transport.mappings.includes(entry.mapping)) {
      this.#transport.unmapBatch([entry.mapping]);
    }
    entry.region.free();
  }

  /**
   * The zero-copy buffer `data` lives in, or undefined for ordinary memory.
   * The view `allocBuffer()` returned is recognised by its tag; other views
   * (subarrays) by their ArrayBuffer, with the last hit cached.
   */
  lookup(data: Uint8Array): DmaBufferEntry | undefined {
    const tagged = (data as MaybeTagged)[DMA_ENTRY];
    // The identity check: a tag copied onto another object by hand leads nowhere.
    if (tagged !== undefined && tagged.view === data) return tagged;
    const key = data.buffer as ArrayBuffer;
    if (key === this.#lastKey) return this.#lastEntry;
    const entry = this.#buffers.get(key);
    // Entries leave the map (freeBuffer(), release()) before their regions are freed, so a hit is live: no
    // native `freed` accessor on the hot path (a crossing per request once several buffers alternate).
    if (entry === undefined) return undefined;
    // Only hits are cached; freeBuffer() and release() forget the entry before freeing its region.
    this.#lastKey = key;
    this.#lastEntry = entry;
    return entry;
  }

  /**
   * After a reset: sends every mapping of ours to the device again, in one
   * batch. vhost-vdpa keeps its IOTLB across a reset, but without
   * IOTLB_PERSIST the parent is told to clean its own maps (vdpa_sim, mlx5),
   * and would then not see rings, slots or buffers. Returns how many.
   */
  resendAfterReset(): number {
    const live = new Set(this.#transport.mappings);
    const ours = [...this.#fixed, ...this.#buffers.values()].map((e) => e.mapping).filter((m) => live.has(m));
    if (ours.length > 0) this.#transport.resendMappings(ours);
    return ours.length;
  }

  /** Unmaps what the device still maps (if it is open) and frees every region. Idempotent. */
  release(): void {
    const entries = [...this.#fixed, ...this.#buffers.values()];
    this.#fixed.length = 0;
    this.#buffers.clear();
    this.#forgetCache();
    for (const e of entries) untag(e);
    const transport = this.#transport;
    if (!transport.closed) {
      const live = new Set(transport.mappings);
      const ours = entries.map((e) => e.mapping).filter((m) => live.has(m));
      if (ours.length > 0) {
        try {
          transport.unmapBatch(ours);
        } catch {
          // The device is being given up; the kernel drops its mappings on reset/close anyway.
        }
      }
    }
    // A region the device still maps (the unmap failed on a device that stays open) is not freed: the device
    // could still write into it. It stays allocated, held by its mapping, until the device is closed.
    for (const e of entries) if (!e.region.freed && !e.region.mapped) e.region.free();
  }

  #forgetCache(): void {
    this.#lastKey = undefined;
    this.#lastEntry = undefined;
  }
}

/** A freed buffer's view no longer leads to its entry (the property stays, undefined: its shape is kept). */
function untag(entry: DmaBufferEntry): void {
  const view = entry.view as MaybeTagged | undefined;
  if (view === undefined) return;
  view[DMA_ENTRY] = undefined;
  entry.view = undefined;
}
