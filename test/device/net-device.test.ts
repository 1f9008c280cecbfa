/**
 * NetDevice against the lab's vdpa_sim_net (net0): bring-up, every validation
 * path, the control queue (MAC set, NAKs, missing features), loopback of
 * random frames with sequence numbers, RX starvation against the device's
 * "rx overruns", and the MAC filter after setMac.
 */
import { strict as assert } from 'node:assert';
import {
  hasBit,
  NetDevice,
  VdpaManager,
  VirtioF,
  VirtioNetF,
  VIRTIO_NET_CTRL_ANNOUNCE,
  VIRTIO_NET_CTRL_ANNOUNCE_ACK,
} from '../../lib';
import { forEachDevice } from './helpers';
import { iproute2 } from './mgmt-helpers';
import { rejects } from '../assertions';
import { frameOf, macBytes } from './net-frames';

/** MACs with no zero byte: vdpa_sim_net compares destinations with strncmp. */
const MAC_A = '52:54:aa:bb:cc:01';
const MAC_B = '52:54:aa:bb:cc:02';
const LOOPBACK_FRAMES = Number(process.env.NET_LOOPBACK_FRAMES ?? 100000);

async function vendor(manager: VdpaManager, queue: number): Promise<Record<string, bigint>> {
  const stats = await manager.getVendorStats('net0', queue);
  return Object.fromEntries(stats.counters.map((c) => [c.name, c.value]));
}

/** Waits until `done()` or until nothing changed in `idleMs`. */
async function settle(progress: () => number, done: () => boolean, idleMs = 1000): Promise<void> {
  let last = -1;
  let since = Date.now();
  while (!done()) {
    const now = progress();
    if (now !== last) {
      last = now;
      since = Date.now();
    } else if (Date.now() - since > idleMs) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}

forEachDevice('net', 'NetDevice', (device) => {
  let dev: NetDevice | undefined;
  let manager: VdpaManager;
  before(async () => {
    manager = await VdpaManager.open();
  });
  after(() => manager.close());
  afterEach(async () => {
    await dev?.close({ drain: false });
    dev = undefined;
  });

  it('negotiates the net features, reads MAC/MTU/link and moves the control queue to ASID 1', () => {
    dev = NetDevice.open(device.chardev);
    for (const f of [VirtioF.VERSION_1, VirtioF.ACCESS_PLATFORM]) assert.ok(hasBit(dev.features, f));
    for (const f of [
      VirtioNetF.MAC,
      VirtioNetF.MTU,
      VirtioNetF.STATUS,
      VirtioNetF.CTRL_VQ,
      VirtioNetF.CTRL_MAC_ADDR,
    ]) {
      assert.ok(hasBit(dev.features, f), `feature ${f}`);
    }
    assert.equal(dev.mtu, 1500);
    assert.equal(dev.maxFrameSize, 1514);
    assert.equal(dev.linkUp, true);
    assert.equal(dev.queuePairs, 1);
    assert.match(dev.mac ?? '', /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.equal(
      dev.controlQueueIsolated,
      true,
      'vdpa_sim_net: 2 groups, 2 address spaces, IOTLB_ASID acked',
    );
    assert.equal(dev.rxPosted, dev.queueSize);
  });

  it('refuses bad frames with typed errors before the device sees them', async () => {
    dev = NetDevice.open(device.chardev);
    await rejects(dev.send(Buffer.alloc(13)), 'ERR_OUT_OF_RANGE', /13 bytes does not fit: 14 .* 1514 bytes/);
    await rejects(dev.send(Buffer.alloc(1515)), 'ERR_OUT_OF_RANGE', /1515 bytes/);
    await rejects(dev.send('frame' as unknown as Uint8Array), 'ERR_INVALID_ARG', /must be a Uint8Array/);
    await rejects(
      dev.sendBatch([Buffer.alloc(60), Buffer.alloc(2000)]),
      'ERR_OUT_OF_RANGE',
      /frame 1: a frame of 2000 bytes/,
    );
    await rejects(dev.sendBatch('x' as unknown as Uint8Array[]), 'ERR_INVALID_ARG', /array/);
    const stats = await dev.stats();
    assert.equal(stats.tx.frames, 0, 'nothing of a refused batch was sent');
    assert.throws(() => dev?.frames({ highWaterMark: 0 }), { code: 'ERR_INVALID_ARG' });
    const closed = dev;
    await dev.close();
    await rejects(closed.send(Buffer.alloc(60)), 'ERR_CLOSED', /closed/);
    await rejects(closed.setMac(MAC_A), 'ERR_CLOSED');
  });

  it('sets the MAC through the control queue: config space and `vdpa dev config show` follow', async () => {
    dev = NetDevice.open(device.chardev);
    await dev.setMac(MAC_A);
    assert.equal(dev.mac, MAC_A);
    type Show = { config: Record<string, { mac?: string }> };
    assert.equal(iproute2<Show>('dev', 'config', 'show', 'net0').config.net0.mac, MAC_A);
    await dev.setMac(Uint8Array.from(macBytes(MAC_B)));
    assert.equal(dev.mac, MAC_B);
    assert.equal(iproute2<Show>('dev', 'config', 'show', 'net0').config.net0.mac, MAC_B);
    const cvq = await vendor(manager, 2);
    assert.ok(
      (cvq['cvq successes'] ?? 0n) >= 2n,
      JSON.stringify(cvq, (_k, v: unknown) => String(v)),
    );
  });

  it('gives typed errors for bad MACs, NAKs and commands the device did not negotiate', async () => {
    dev = NetDevice.open(device.chardev);
    await rejects(dev.setMac('52:54:aa:bb:cc'), 'ERR_INVALID_ARG', /not a MAC address/);
    await rejects(dev.setMac('zz:54:aa:bb:cc:01'), 'ERR_INVALID_ARG', /not a MAC address/);
    await rejects(dev.setMac(new Uint8Array(5)), 'ERR_INVALID_ARG', /6 bytes, got 5/);
    await rejects(dev.setMac('01:00:5e:00:00:01'), 'ERR_INVALID_ARG', /multicast/);
    await rejects(dev.setPromiscuous(true), 'ERR_UNSUPPORTED', /VIRTIO_NET_CTRL_RX_PROMISC.*CTRL_RX/);
    await rejects(dev.setAllMulticast(true), 'ERR_UNSUPPORTED', /ALLMULTI.*CTRL_RX/);
    await rejects(dev.setPromiscuous('yes' as unknown as boolean), 'ERR_INVALID_ARG');
    await rejects(
      dev.setQueuePairs(2),
      'ERR_UNSUPPORTED',
      /runs 1 queue pair: \/dev\/vhost-vdpa-\d+ does not offer VIRTIO_NET_F_MQ/,
    );
    await rejects(dev.setQueuePairs(0), 'ERR_INVALID_ARG', /positive integer/);
    await dev.setQueuePairs(1);
    // vdpa_sim_net handles only MAC_ADDR_SET: anything else is NAKed.
    await rejects(
      dev.controlCommand(VIRTIO_NET_CTRL_ANNOUNCE, VIRTIO_NET_CTRL_ANNOUNCE_ACK),
      'ERR_DEVICE_UNSUPP',
      /VIRTIO_NET_CTRL_ANNOUNCE_ACK .* refused by the device \(VIRTIO_NET_ERR\)/,
    );
    await rejects(dev.controlCommand(1, 256), 'ERR_INVALID_ARG');
    await rejects(dev.controlCommand(1, 1, new Uint8Array(65)), 'ERR_INVALID_ARG');
    // The control queue still works after a NAK.
    await dev.setMac(MAC_A);
    assert.equal(dev.mac, MAC_A);
  });

  it(`loops ${LOOPBACK_FRAMES} frames of random sizes and payloads back byte for byte, none lost`, async function () {
    this.timeout(1200000);
    dev = NetDevice.open(device.chardev);
    await dev.setMac(MAC_A);
    const dst = macBytes(MAC_A);
    const max = dev.maxFrameSize;
    const before = await vendor(manager, 0);
    let received = 0;
    let corrupt = 0;
    let outOfOrder = 0;
    const window = 128; // <= RX ring size: the device always finds a receive buffer
    const consumer = (async () => {
      for await (const frame of (dev as NetDevice).frames()) {
        const seq = frame.readUInt32BE(14);
        if (seq !== received) outOfOrder++;
        if (!frame.equals(frameOf(seq, dst, max))) corrupt++;
        if (++received === LOOPBACK_FRAMES) break;
      }
    })();
    const started = process.hrtime.bigint();
    let sent = 0;
    let bytes = 0;
    while (sent < LOOPBACK_FRAMES) {
      const batch: Buffer[] = [];
      while (batch.length < 32 && sent < LOOPBACK_FRAMES && sent - received < window) {
        const frame = frameOf(sent++, dst, max);
        bytes += frame.length;
        batch.push(frame);
      }
      if (batch.length > 0) await dev.sendBatch(batch);
      else await new Promise((r) => setImmediate(r));
    }
    await settle(
      () => received,
      () => received === LOOPBACK_FRAMES,
      3000,
    );
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (received < LOOPBACK_FRAMES) await dev.close({ drain: false }); // ends the iterator
    await consumer;
    const after = await vendor(manager, 0);
    const stats = await dev.stats();
    console.log(
      `      loopback: ${sent} sent, ${received} received, ${sent - received} lost, ${corrupt} corrupt, ` +
        `${outOfOrder} out of order in ${seconds.toFixed(1)} s (${Math.round(received / seconds)} frames/s, ` +
        `${((bytes * 8) / seconds / 1e6).toFixed(1)} Mbit/s); kicks tx ${stats.tx.kicks} rx ${stats.rx.kicks}, ` +
        `interrupts ${stats.interrupts}; device rx overruns +${after['rx overruns'] - before['rx overruns']}`,
    );
    assert.equal(received, LOOPBACK_FRAMES, 'lost frames');
    assert.equal(corrupt, 0, 'corrupt frames');
    assert.equal(outOfOrder, 0, 'frames out of order');
    assert.equal(after['rx overruns'] - before['rx overruns'], 0n);
    assert.equal(after['rx packets'] - before['rx packets'], BigInt(LOOPBACK_FRAMES));
    assert.equal(stats.rx.frames, LOOPBACK_FRAMES);
    assert.equal(stats.tx.frames, LOOPBACK_FRAMES);
  });

  it('RX starved on purpose: the frames we lose are the device’s "rx overruns"; resume() restarts', async () => {
    dev = NetDevice.open(device.chardev);
    await dev.setMac(MAC_A);
    const dst = macBytes(MAC_A);
    let received = 0;
    dev.on('frame', () => received++);
    dev.pause();
    // Use up the ring: these are delivered, their buffers are not posted again.
    const ring = dev.queueSize;
    for (let i = 0; i < ring; i += 32) {
      await dev.sendBatch(Array.from({ length: 32 }, (_, j) => frameOf(i + j, dst, 200)));
    }
    await settle(
      () => received,
      () => received === ring,
    );
    assert.equal(received, ring);
    assert.equal(dev.rxPosted, 0);
    const before = await vendor(manager, 0);
    // No receive buffer: each kick loses one frame and stops the device's TX loop, so send one per kick.
    const starved = 50;
    for (let i = 0; i < starved; i++) await dev.send(frameOf(1000 + i, dst, 200));
    await new Promise((r) => setTimeout(r, 200));
    const after = await vendor(manager, 0);
    const lost = starved - (received - ring);
    assert.equal(lost, starved);
    assert.equal(after['rx overruns'] - before['rx overruns'], BigInt(lost));
    dev.resume();
    assert.equal(dev.rxPosted, dev.queueSize);
    await dev.sendBatch(Array.from({ length: 10 }, (_, j) => frameOf(2000 + j, dst, 200)));
    await settle(
      () => received,
      () => received === ring + 10,
    );
    assert.equal(received, ring + 10);
  });

  it('filters: frames to another unicast MAC are dropped and counted; after setMac the filter follows', async () => {
    dev = NetDevice.open(device.chardev);
    await dev.setMac(MAC_A);
    const got: Buffer[] = [];
    dev.on('frame', (f: Buffer) => got.push(f));
    const before = await vendor(manager, 0);
    await dev.sendBatch(Array.from({ length: 20 }, (_, i) => frameOf(i, macBytes(MAC_B), 200)));
    await dev.sendBatch([frameOf(100, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 200)]);
    await dev.sendBatch([frameOf(101, macBytes(MAC_A), 200)]);
    await settle(
      () => got.length,
      () => got.length === 2,
    );
    await new Promise((r) => setTimeout(r, 100));
    const after = await vendor(manager, 0);
    assert.deepEqual(
      got.map((f) => f.readUInt32BE(14)),
      [100, 101],
      'only broadcast and our MAC pass',
    );
    assert.equal(after['rx drops'] - before['rx drops'], 20n);
    await dev.setMac(MAC_B);
    got.length = 0;
    await dev.sendBatch([frameOf(200, macBytes(MAC_A), 200), frameOf(201, macBytes(MAC_B), 200)]);
    await settle(
      () => got.length,
      () => got.length === 1,
    );
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(
      got.map((f) => f.readUInt32BE(14)),
      [201],
    );
    const last = await vendor(manager, 0);
    assert.equal(last['rx drops'] - after['rx drops'], 1n);
  });

  it('joins driver counters and vendor stats in stats()', async () => {
    dev = NetDevice.open(device.chardev);
    await dev.setMac(MAC_A);
    await dev.send(frameOf(1, macBytes(MAC_A), 100));
    const stats = await dev.stats((q) => manager.getVendorStats('net0', q));
    assert.equal(stats.tx.frames, 1);
    assert.ok(stats.tx.kicks >= 1);
    assert.ok(stats.vendor !== undefined);
    assert.equal(typeof stats.vendor.rx['rx overruns'], 'bigint');
    assert.equal(typeof stats.vendor.tx['tx packets'], 'bigint');
    assert.equal(typeof stats.vendor.control?.['cvq requests'], 'bigint');
  });
});
