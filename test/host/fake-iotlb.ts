/**
 * The IOTLB side of the host fakes (blk and net): mappings as vhost-vdpa
 * keeps them, and the device's view (`space`) that a reset cleans — as a
 * parent without IOTLB_PERSIST does — until the driver sends them again.
 */
import { DmaRegion, IotlbMapping, VdpaError } from '../../lib';
import { IovaSpace } from './virtqueue-fake-device';

/** The base of the host fake devices: their IOTLB. */
export class FakeIotlb {
  /** What the device can reach. */
  readonly space = new IovaSpace();
  readonly #mappings: IotlbMapping[] = [];
  readonly #regions = new Map<IotlbMapping, DmaRegion>();
  #nextIova = 0x100000;

  get mappings(): readonly IotlbMapping[] {
    return [...this.#mappings];
  }

  mapBatch(entries: readonly { memory: unknown; iova?: bigint; asid?: number }[]): IotlbMapping[] {
    return entries.map(({ memory, iova, asid }) => {
      if (!(memory instanceof DmaRegion)) throw new Error('fake device maps only DmaRegions');
      const at = iova === undefined ? this.#nextIova : Number(iova);
      for (const m of this.#mappings) {
        // vhost-vdpa refuses an UPDATE over a live range (EEXIST), also after a reset.
        if (at < Number(m.iova) + Number(m.size) && Number(m.iova) < at + memory.size) {
          throw new VdpaError(`IOVA 0x${at.toString(16)} overlaps a live mapping`, {
            code: 'EEXIST',
            errno: 17,
          });
        }
      }
      if (iova === undefined) this.#nextIova += memory.size + 0x10000;
      const mapping: IotlbMapping = {
        iova: BigInt(at),
        size: BigInt(memory.size),
        uaddr: memory.address,
        asid: asid ?? 0,
        access: 'rw',
      };
      this.space.add(at, memory.bytes);
      this.#mappings.push(mapping);
      this.#regions.set(mapping, memory);
      return mapping;
    });
  }

  /** Like VhostVdpaDevice.resendMappings: the device sees them again. */
  resendMappings(mappings: readonly IotlbMapping[]): void {
    for (const m of mappings) {
      const region = this.#regions.get(m);
      if (region === undefined) throw new VdpaError('not a live mapping', { code: 'ERR_INVALID_ARG' });
      this.space.remove(Number(m.iova));
      this.space.add(Number(m.iova), region.bytes);
    }
  }

  unmapBatch(mappings: readonly IotlbMapping[]): void {
    for (const m of mappings) {
      const i = this.#mappings.indexOf(m);
      if (i < 0) throw new VdpaError('not a live mapping', { code: 'ERR_INVALID_ARG' });
      this.#mappings.splice(i, 1);
      this.#regions.delete(m);
      this.space.remove(Number(m.iova));
    }
  }

  /** A device reset without IOTLB_PERSIST: vhost keeps the mappings, the parent cleans its own maps. */
  cleanDeviceMaps(): void {
    this.space.clear();
  }
}
