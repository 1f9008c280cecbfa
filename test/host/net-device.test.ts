/**
 * NetDevice over a fake vdpa_sim_net-like device (test/host/net-fake-device.ts):
 * header encoding, loopback, back-pressure on a full TX ring without blocking
 * the control queue, config/link events, and RX buffers posted again after a
 * recovery (the driver core's standing buffers and restarted() hook).
 */
import { strict as assert } from 'node:assert';
import { bit, hasBit, NetDevice, ResetEvent, VirtioNetF } from '../../lib';
import { rejects } from '../assertions';
import { FakeNetDevice } from './net-fake-device';

const OURS = [0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x01];

function frame(seq: number, size = 64, dst = OURS): Buffer {
  const f = Buffer.alloc(size, seq & 0xff);
  f.set(dst, 0);
  f.set([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99], 6);
  f.writeUInt16BE(0x88b5, 12);
  f.writeUInt32BE(seq, 14);
  return f;
}

async function until(condition: () => boolean, what: string, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

describe('NetDevice (host, fake device)', () => {
  let dev: NetDevice | undefined;
  let fake: FakeNetDevice;
  beforeEach(() => {
    fake = new FakeNetDevice();
  });
  afterEach(async () => {
    await dev?.close({ drain: false });
    dev = undefined;
  });

  it('fills the RX ring at open and sends frames behind a zero virtio_net_hdr', async () => {
    dev = NetDevice.open(fake);
    assert.equal(dev.mac, '52:54:aa:bb:cc:01');
    assert.equal(dev.controlQueueIsolated, false, 'the fake has no address-space ioctls');
    await until(() => fake.rxAvailable === 256, 'the RX ring to be published');
    const got: Buffer[] = [];
    dev.on('frame', (f: Buffer) => got.push(f));
    await dev.send(frame(1, 100));
    await until(() => got.length === 1, 'the frame back');
    assert.deepEqual(got[0], frame(1, 100));
    const zero = dev.allocBuffer(4096);
    frame(2, 1514).copy(zero, 100);
    await dev.sendBatch([zero.subarray(100, 100 + 1514), frame(3)]);
    await until(() => got.length === 3, 'the batch back');
    assert.deepEqual(got[1], frame(2, 1514), 'zero-copy frame');
    assert.deepEqual(
      fake.transmitted.map((f) => f.length),
      [100, 1514, 64],
    );
    assert.equal(dev.rxPosted, 256, 'buffers posted again as frames came back');
    const stats = await dev.stats();
    assert.equal(stats.tx.frames, 3);
    assert.equal(stats.rx.frames, 3);
    assert.equal(stats.rx.bytes, 100 + 1514 + 64);
  });

  it('queues frames behind a full TX ring (never an error) while the control queue goes on', async () => {
    dev = NetDevice.open(fake, { queueSize: 16 });
    fake.holdTx = true;
    const sends = Array.from({ length: 40 }, (_, i) => dev?.send(frame(i)) as Promise<void>);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(dev.pending, 40);
    await dev.setMac('52:54:aa:bb:cc:07'); // not stuck behind the 24 frames waiting for TX ring space
    assert.equal(dev.mac, '52:54:aa:bb:cc:07');
    fake.holdTx = false;
    fake.mac = Buffer.from(OURS);
    fake.kick();
    await Promise.all(sends);
    const stats = await dev.stats();
    assert.equal(stats.tx.frames, 40);
    assert.ok(stats.tx.ringFullWaits >= 24, `ring-full waits ${stats.tx.ringFullWaits}`);
  });

  it('delivers frames to frames() iterators and stops refilling at their high-water mark', async () => {
    dev = NetDevice.open(fake, { queueSize: 16 });
    const it = dev.frames({ highWaterMark: 4 });
    for (let i = 0; i < 6; i++) await dev.send(frame(i));
    await until(() => dev?.paused === true, 'flow control');
    const posted = dev.rxPosted;
    assert.ok(posted < 16, `refilling stopped (${posted} posted)`);
    for (let i = 0; i < 6; i++) assert.equal((await it.next()).value?.readUInt32BE(14), i);
    assert.equal(dev.paused, false);
    assert.equal(dev.rxPosted, 16, 'refilled once drained');
    await it.return?.();
  });

  it('loses frames when paused with an empty ring (rx overruns), and resume() kicks the device on', async () => {
    dev = NetDevice.open(fake, { queueSize: 4 });
    let received = 0;
    dev.on('frame', () => received++);
    dev.pause();
    for (let i = 0; i < 4; i++) await dev.send(frame(i));
    await until(() => received === 4, '4 frames');
    assert.equal(dev.rxPosted, 0);
    await dev.send(frame(10));
    assert.equal(fake.rxOverruns, 1);
    dev.resume();
    assert.equal(dev.rxPosted, 4);
    await dev.send(frame(11));
    await until(() => received === 5, 'a frame after resume()');
  });

  it("emits 'config-change' and 'link-change' on a config interrupt; refreshConfig() for devices without one", async () => {
    dev = NetDevice.open(fake);
    const events: unknown[] = [];
    dev.on('config-change', (c: { status?: number }) => events.push(`config status ${c.status}`));
    dev.on('link-change', (up: boolean) => events.push(`link ${up}`));
    fake.setLink(false);
    await until(() => events.length === 2, 'events');
    assert.deepEqual(events, ['config status 0', 'link false']);
    assert.equal(dev.linkUp, false);
    fake.linkStatus = 1; // no interrupt, as vdpa_sim_net
    dev.refreshConfig();
    await new Promise((r) => process.nextTick(r));
    assert.deepEqual(events.slice(2), ['config status 1', 'link true']);
    assert.equal(dev.linkUp, true);
  });

  it('posts the RX ring again after a recovery, without counting the buffers as failed requests', async () => {
    dev = NetDevice.open(fake);
    const resets: ResetEvent[] = [];
    dev.on('reset', (e: ResetEvent) => resets.push(e));
    fake.needsReset();
    await until(() => resets.length === 1, 'the recovery');
    assert.equal(resets[0].failed, 0);
    assert.equal(dev.rxPosted, 256);
    await until(() => fake.rxAvailable === 256, 'the RX ring published after the reset');
    const got: Buffer[] = [];
    dev.on('frame', (f: Buffer) => got.push(f));
    await dev.send(frame(5));
    await until(() => got.length === 1, 'a frame after the reset');
  });

  it("ends frames() iterators when the device fails ('failed'), and refuses sends with ERR_DEVICE_FAILED", async () => {
    dev = NetDevice.open(fake);
    const it = dev.frames();
    const next = it.next();
    const failed: Error[] = [];
    dev.on('failed', (e: Error) => failed.push(e));
    fake.negotiateError = new Error('EIO');
    fake.needsReset();
    assert.equal((await next).done, true);
    assert.equal(failed.length, 1);
    await rejects(dev.send(frame(1)), 'ERR_DEVICE_FAILED', /could not be set up again/);
  });

  it('does not wait for the RX buffers at close({ drain: true }) and ends iterators', async () => {
    dev = NetDevice.open(fake);
    const it = dev.frames();
    const next = it.next();
    const started = Date.now();
    await dev.close();
    assert.ok(Date.now() - started < 1000);
    assert.equal((await next).done, true);
    await rejects(dev.send(frame(1)), 'ERR_CLOSED');
  });

  it('refuses every bad input with a typed error before the device sees it', async () => {
    dev = NetDevice.open(fake);
    const kicksBefore = (await dev.stats()).tx.kicks;
    // Frames: too short, larger than MTU + 14, not bytes; a batch with one bad frame sends nothing.
    await rejects(dev.send(Buffer.alloc(13)), 'ERR_OUT_OF_RANGE', /13 bytes does not fit: 14 .* 1514 bytes/);
    await rejects(dev.send(Buffer.alloc(1515)), 'ERR_OUT_OF_RANGE', /1515 bytes .*MTU 1500 \+ 14/);
    await rejects(dev.send([1, 2] as unknown as Uint8Array), 'ERR_INVALID_ARG', /must be a Uint8Array/);
    await rejects(
      dev.sendBatch([frame(1), Buffer.alloc(9000)]),
      'ERR_OUT_OF_RANGE',
      /frame 1: a frame of 9000/,
    );
    await rejects(
      dev.sendBatch(frame(1) as unknown as Uint8Array[]),
      'ERR_INVALID_ARG',
      /array of Uint8Array/,
    );
    assert.equal(fake.transmitted.length, 0, 'nothing reached the device');
    assert.equal((await dev.stats()).tx.kicks, kicksBefore, 'no kick for refused frames');
    // MACs: malformed strings, wrong lengths, multicast.
    for (const bad of ['52:54:aa:bb:cc', '52:54:aa:bb:cc:0g', '52-54:aa:bb:cc:01', '', 42]) {
      await rejects(dev.setMac(bad as string), 'ERR_INVALID_ARG', /not a MAC address|6 bytes/);
    }
    await rejects(dev.setMac(new Uint8Array(7)), 'ERR_INVALID_ARG', /6 bytes, got 7/);
    await rejects(dev.setMac('33:33:00:00:00:01'), 'ERR_INVALID_ARG', /multicast/);
    // Control commands: a feature the device did not offer, out-of-range bytes, too much data, a NAK.
    await rejects(
      dev.setPromiscuous(true),
      'ERR_UNSUPPORTED',
      /VIRTIO_NET_CTRL_RX_PROMISC.*VIRTIO_NET_F_CTRL_RX/,
    );
    await rejects(dev.setAllMulticast(false), 'ERR_UNSUPPORTED', /ALLMULTI.*VIRTIO_NET_F_CTRL_RX/);
    await rejects(dev.setPromiscuous(1 as unknown as boolean), 'ERR_INVALID_ARG', /true or false/);
    await rejects(dev.controlCommand(-1, 0), 'ERR_INVALID_ARG', /bytes/);
    await rejects(dev.controlCommand(1, 1, new Uint8Array(65)), 'ERR_INVALID_ARG', /at most 64 bytes/);
    await rejects(
      dev.controlCommand(2, 0, Uint8Array.of(1, 0)),
      'ERR_DEVICE_UNSUPP',
      /VIRTIO_NET_CTRL_VLAN_ADD .* refused/,
    );
    // Queue pairs: only 1; more says MQ is not there.
    await rejects(dev.setQueuePairs(0), 'ERR_INVALID_ARG', /positive integer/);
    await rejects(dev.setQueuePairs(1.5), 'ERR_INVALID_ARG', /positive integer/);
    await rejects(
      dev.setQueuePairs(2),
      'ERR_UNSUPPORTED',
      /runs 1 queue pair: \/dev\/fake-vhost-vdpa-net does not offer VIRTIO_NET_F_MQ/,
    );
    await dev.setQueuePairs(1);
    assert.equal(fake.mac.toString('hex'), '5254aabbcc01', 'no refused MAC reached the device');
    // After close: every call says closed.
    const closed = dev;
    await dev.close();
    await rejects(closed.send(frame(1)), 'ERR_CLOSED', /closed/);
    await rejects(closed.sendBatch([frame(1)]), 'ERR_CLOSED', /closed/);
    await rejects(closed.setMac('52:54:aa:bb:cc:02'), 'ERR_CLOSED', /closed/);
    await rejects(closed.controlCommand(1, 1, new Uint8Array(6)), 'ERR_CLOSED', /closed/);
    assert.throws(() => closed.allocBuffer(64), { code: 'ERR_CLOSED' });
  });

  it('leaves MQ and MRG_RXBUF alone when offered: one queue pair, whole-frame RX buffers, frames still loop', async () => {
    fake.offered |= bit(VirtioNetF.MQ) | bit(VirtioNetF.MRG_RXBUF);
    fake.maxVirtqueuePairs = 4;
    dev = NetDevice.open(fake);
    assert.ok(
      hasBit(dev.offeredFeatures, VirtioNetF.MQ) && hasBit(dev.offeredFeatures, VirtioNetF.MRG_RXBUF),
    );
    assert.equal(hasBit(dev.features, VirtioNetF.MQ), false, 'MQ not negotiated');
    assert.equal(hasBit(dev.features, VirtioNetF.MRG_RXBUF), false, 'MRG_RXBUF not negotiated');
    assert.equal(hasBit(fake.negotiated, VirtioNetF.MRG_RXBUF), false, 'the device was told so');
    assert.equal(dev.queuePairs, 1);
    await rejects(
      dev.setQueuePairs(2),
      'ERR_UNSUPPORTED',
      /offers VIRTIO_NET_F_MQ \(max_virtqueue_pairs 4\), but this driver does not negotiate it/,
    );
    const got: Buffer[] = [];
    dev.on('frame', (f: Buffer) => got.push(f));
    const big = frame(7, 1514);
    await dev.send(big);
    await until(() => got.length === 1, 'the looped-back frame');
    assert.ok(got[0].equals(big), 'a full-size frame fits one receive buffer');
  });

  it('rejects a NAKed command with the command named', async () => {
    dev = NetDevice.open(fake);
    await rejects(
      dev.controlCommand(3, 0),
      'ERR_DEVICE_UNSUPP',
      /VIRTIO_NET_CTRL_ANNOUNCE_ACK .*VIRTIO_NET_ERR/,
    );
    await rejects(dev.controlCommand(9, 9), 'ERR_DEVICE_UNSUPP', /control class 9 command 9/);
  });
});
