/**
 * A fake virtio-net vDPA device for host tests, modelled on vdpa_sim_net
 * (docs: shared vdpa-facts-next.md A.3/A.4): RX 0, TX 1, control 2; each TX
 * chain is copied, header included, into one RX chain if its destination
 * passes the MAC filter (broadcast, multicast or config.mac); with no RX
 * buffer the frame is lost ("rx overruns") and the TX loop stops until the
 * next kick; the control queue handles only MAC_ADDR_SET. Unlike the
 * simulator it raises config interrupts (link changes), so the events can be
 * tested, and it can hold TX chains to fill the ring.
 */
import { writeSync } from 'node:fs';
import {
  bit,
  bits,
  Doorbell,
  NetTransport,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_NEEDS_RESET,
  VirtioF,
  VirtioNetF,
  VringAddresses,
} from '../../lib';
import { FakeIotlb } from './fake-iotlb';
import { DeviceRing } from './virtqueue-fake-device';

interface VringSetup {
  num: number;
  addr?: VringAddresses;
  call: number;
  enabled: boolean;
}

export class FakeNetDevice extends FakeIotlb implements NetTransport {
  readonly path = '/dev/fake-vhost-vdpa-net';
  readonly deviceId = 1;
  /** Feature bits offered (a test may add MQ or MRG_RXBUF to see that the driver leaves them alone). */
  offered = bits(
    VirtioF.VERSION_1,
    VirtioF.ACCESS_PLATFORM,
    VirtioF.ANY_LAYOUT,
    VirtioNetF.MTU,
    VirtioNetF.MAC,
    VirtioNetF.STATUS,
    VirtioNetF.CTRL_VQ,
    VirtioNetF.CTRL_MAC_ADDR,
  );
  closed = false;
  negotiated = 0n;
  status = 0;
  mac = Buffer.from([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x01]);
  linkStatus = 1;
  mtu = 1500;
  /** config.max_virtqueue_pairs (offset 8), for a fake that offers MQ. */
  maxVirtqueuePairs = 0;
  rings: (DeviceRing | undefined)[] = [];
  /** While true, TX chains stay in the ring (a stalled device). */
  holdTx = false;
  rxOverruns = 0;
  rxDrops = 0;
  resets = 0;
  configCall = -1;
  /** The frames the device saw on TX (header stripped). */
  readonly transmitted: Buffer[] = [];
  readonly #vrings: VringSetup[] = Array.from({ length: 3 }, () => ({ num: 0, call: -1, enabled: false }));
  #scheduled = false;

  /** When set, negotiate() fails with it (a device that cannot be set up again). */
  negotiateError: Error | undefined;

  negotiate(wanted: bigint): { offered: bigint; negotiated: bigint } {
    if (this.negotiateError !== undefined) throw this.negotiateError;
    this.negotiated = (wanted | bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM)) & this.offered;
    this.status = 1 | 2 | 8;
    return { offered: this.offered, negotiated: this.negotiated };
  }

  setConfigCall(fd: number): void {
    this.configCall = fd;
  }

  /** Changes the link status and raises a config interrupt. */
  setLink(up: boolean): void {
    this.linkStatus = up ? 1 : 0;
    this.#signal(this.configCall);
  }

  /** Sets DEVICE_NEEDS_RESET and raises a config interrupt. */
  needsReset(): void {
    this.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
    this.#signal(this.configCall);
  }

  getConfigSize(): number {
    return 24;
  }

  getConfig(offset: number, length: number): Buffer {
    const c = Buffer.alloc(24);
    this.mac.copy(c, 0);
    c.writeUInt16LE(this.linkStatus, 6);
    c.writeUInt16LE(this.maxVirtqueuePairs, 8);
    c.writeUInt16LE(this.mtu, 10);
    return c.subarray(offset, offset + length);
  }

  getVringNum(): number {
    return 256;
  }

  setVringNum(index: number, num: number): void {
    this.#vrings[index].num = num;
  }

  setVringBase(): void {}

  setVringAddr(index: number, addr: VringAddresses): void {
    this.#vrings[index].addr = addr;
  }

  setVringKick(): void {}

  setVringCall(index: number, fd: number): void {
    this.#vrings[index].call = fd;
  }

  setVringEnable(index: number, enable: boolean): void {
    this.#vrings[index].enabled = enable;
  }

  mapDoorbell(index: number): Doorbell {
    return new Doorbell(index, {
      mapped: true,
      notify16: () => this.kick(),
      notify32: () => undefined,
      unmap: () => undefined,
    });
  }

  getStatus(): number {
    return this.status;
  }

  setStatus(status: number): void {
    if (status === 0) {
      this.resets++;
      this.status = 0;
      this.rings = [];
      // vhost keeps its IOTLB across a reset; the parent cleans its own maps until they are sent again.
      this.cleanDeviceMaps();
      return;
    }
    if ((status & VIRTIO_CONFIG_S_DRIVER_OK) !== 0 && (this.status & VIRTIO_CONFIG_S_DRIVER_OK) === 0) {
      this.rings = this.#vrings.map((v) =>
        v.enabled && v.addr !== undefined
          ? new DeviceRing(this.space.translate, v.num, v.addr, { eventIdx: false, indirect: false })
          : undefined,
      );
    }
    this.status = status;
  }

  reset(): void {
    this.setStatus(0);
  }

  close(): void {
    this.reset();
    this.closed = true;
  }

  /** A notification on any queue schedules the device's work (as vdpa_sim_net's kthread). */
  kick(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#work();
    });
  }

  /** RX buffers the driver has made available and the device has not used. */
  get rxAvailable(): number {
    return this.rings[0]?.pending ?? 0;
  }

  #work(): void {
    if ((this.status & VIRTIO_CONFIG_S_DRIVER_OK) === 0) return;
    const [rx, tx, cvq] = this.rings;
    for (let chain = cvq?.pop(); chain !== undefined && cvq !== undefined; chain = cvq.pop()) {
      const command = Buffer.concat(chain.readable);
      let ack = 1;
      if (command[0] === 1 && command[1] === 1 && command.length === 8) {
        this.mac = Buffer.from(command.subarray(2, 8));
        ack = 0;
      }
      chain.writable[0][0] = ack;
      this.#complete(2, chain.head, 1);
    }
    if (rx === undefined || tx === undefined || this.holdTx) return;
    for (let chain = tx.pop(); chain !== undefined; chain = tx.pop()) {
      const packet = Buffer.concat(chain.readable);
      this.transmitted.push(packet.subarray(12));
      const dst = packet.subarray(12, 18);
      if ((dst[0] & 1) === 0 && !dst.equals(this.mac)) {
        this.rxDrops++;
        this.#complete(1, chain.head, 0);
        continue;
      }
      const buffer = rx.pop();
      if (buffer === undefined) {
        this.rxOverruns++;
        this.#complete(1, chain.head, 0);
        return; // vdpa_sim_net stops until the next kick
      }
      let written = 0;
      for (const w of buffer.writable) {
        const n = Math.min(w.length, packet.length - written);
        w.set(packet.subarray(written, written + n));
        written += n;
      }
      this.#complete(1, chain.head, 0);
      this.#complete(0, buffer.head, written);
    }
  }

  #complete(queue: number, head: number, length: number): void {
    const ring = this.rings[queue];
    if (ring !== undefined && ring.push(head, length)) this.#signal(this.#vrings[queue].call);
  }

  #signal(fd: number): void {
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(1n);
    writeSync(fd, one);
  }
}
