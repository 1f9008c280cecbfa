import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';

import { VhostVdpaDevice } from '../../lib/device';
import { VdpaError } from '../../lib/errors';
import { bit, VirtioF } from '../../lib/features';
import {
  bindDriver,
  describeBinding,
  findHolders,
  getBoundDriver,
  resolveCharDev,
} from '../../lib/mgmt/sysfs';
import { VdpaManager } from '../../lib/mgmt/vdpa';
import { decodeBlkConfig } from '../../lib/virtio-config';
import { rejects } from '../assertions';
import { testDevices } from './helpers';
import { entries, iproute2, openFds, removeIfPresent, requireLab } from './mgmt-helpers';

interface Ip2Mgmt {
  mgmtdev: Record<string, { supported_classes: string[]; max_supported_vqs: number; dev_features: string[] }>;
}
interface Ip2Dev {
  dev: Record<
    string,
    { type: string; mgmtdev: string; vendor_id: number; max_vqs: number; max_vq_size: number }
  >;
}
interface Ip2Config {
  config: Record<string, Record<string, unknown>>;
}

const IP2_CLASS: Record<string, string> = { network: 'net', block: 'block' };

describe('mgmt (lab): VdpaManager against iproute2 and sysfs', function () {
  let manager: VdpaManager;
  before(async () => {
    requireLab();
    manager = await VdpaManager.open();
  });
  after(() => manager?.close());

  it('lists the same management devices as `vdpa mgmtdev show`', async () => {
    const ours = await manager.listMgmtDevices();
    const theirs = iproute2<Ip2Mgmt>('mgmtdev', 'show').mgmtdev;
    assert.deepEqual(ours.map((m) => m.handle).sort(), Object.keys(theirs).sort());
    for (const m of ours) {
      const t = theirs[m.handle];
      assert.ok(t);
      assert.deepEqual(
        [...m.supportedClasses].sort(),
        [...t.supported_classes].map((c) => IP2_CLASS[c] ?? c).sort(),
      );
      assert.equal(m.maxSupportedVqs, t.max_supported_vqs);
      assert.equal(
        m.supportedFeatures === 0n || m.supportedFeatures === undefined,
        t.dev_features.length === 0,
      );
    }
    const single = await manager.getMgmtDevice('vdpasim_net');
    assert.deepEqual(
      single,
      ours.find((m) => m.handle === 'vdpasim_net'),
    );
  });

  it('shows the same devices as `vdpa dev show`, and sysfs agrees on the char devices', async () => {
    const ours = await manager.listDevices();
    const theirs = iproute2<Ip2Dev>('dev', 'show').dev;
    assert.deepEqual(ours.map((d) => d.name).sort(), Object.keys(theirs).sort());
    for (const d of ours) {
      const t = theirs[d.name];
      assert.ok(t);
      assert.deepEqual(
        [d.deviceClass, d.mgmtdev, d.vendorId, d.maxVqs, d.maxVqSize],
        [IP2_CLASS[t.type] ?? t.type, t.mgmtdev, t.vendor_id, t.max_vqs, t.max_vq_size],
      );
      assert.deepEqual(await manager.getDevice(d.name), d);
    }
    for (const lab of testDevices()) {
      assert.equal(getBoundDriver(lab.name), 'vhost_vdpa');
      assert.equal(await resolveCharDev(lab.name), lab.chardev);
    }
  });

  it('reads net config as `vdpa dev config show` does', async () => {
    const theirs = iproute2<Ip2Config>('dev', 'config', 'show', 'net0').config.net0;
    const ours = await manager.getConfig('net0');
    assert.ok(theirs && ours.net);
    assert.equal(ours.net.mac, theirs.mac);
    assert.equal(ours.net.mtu, theirs.mtu);
    assert.equal(ours.net.linkUp, theirs['link '] === 'up');
    assert.deepEqual(
      (await manager.listConfigs()).map((c) => c.name).sort(),
      (await manager.listDevices()).map((d) => d.name).sort(),
    );
  });

  for (const name of ['blk0', 'vduse0']) {
    it(`reads ${name}'s block config as the device's config space says (iproute2 6.1 prints it empty)`, async () => {
      const lab = testDevices().find((d) => d.name === name);
      assert.ok(lab, `${name} is in the lab`);
      const ours = await manager.getConfig(name);
      const device = VhostVdpaDevice.open(lab.chardev);
      try {
        const offered = device.getFeatures();
        const space = decodeBlkConfig(device.getConfig(0, device.getConfigSize()), offered);
        assert.equal(ours.deviceFeatures, offered);
        assert.equal(ours.blk?.capacity, space.capacity);
        assert.equal(ours.blk?.blockSize, space.blkSize);
        assert.equal(ours.blk?.segMax, space.segMax);
        assert.equal(ours.blk?.sizeMax, space.sizeMax);
        assert.equal(ours.blk?.numQueues, space.numQueues);
        assert.equal(ours.blk?.maxDiscardSectors, space.discard?.maxSectors);
        assert.equal(ours.blk?.maxWriteZeroesSectors, space.writeZeroes?.maxSectors);
        assert.equal(ours.blk?.readOnly, space.readOnly);
        assert.equal(ours.blk?.flush, space.flush);
        assert.equal(ours.negotiatedFeatures, undefined, 'no FEATURES_OK yet');
        // Once a driver negotiated, the kernel reports the negotiated set.
        const want = offered & (bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM));
        const { negotiated } = device.negotiate(want, want);
        assert.equal((await manager.getConfig(name)).negotiatedFeatures, negotiated);
      } finally {
        device.close();
      }
    });
  }

  it("reads a block device's config as the kernel's virtio-blk sees it in sysfs", async () => {
    await removeIfPresent(manager, 'kblk');
    await manager.addDevice({ name: 'kblk', mgmtdev: 'vdpasim_blk' });
    try {
      const binding = await bindDriver('kblk', 'virtio_vdpa');
      assert.equal(binding.driver, 'virtio_vdpa');
      const disk = binding.kernelDevices?.[0];
      assert.ok(disk !== undefined && /^vd[a-z]+$/.test(disk), JSON.stringify(binding));
      const sys = (f: string): number => Number(fs.readFileSync(`/sys/block/${disk}/${f}`, 'utf8'));
      const c = await manager.getConfig('kblk');
      assert.equal(Number(c.blk?.capacity), sys('size'));
      assert.equal(c.blk?.blockSize, sys('queue/logical_block_size'));
      assert.equal(c.blk?.segMax, sys('queue/max_segments'));
      assert.equal(c.blk?.sizeMax, sys('queue/max_segment_size'));
      assert.equal(c.blk?.readOnly, sys('ro') === 1);
      assert.ok(c.negotiatedFeatures !== undefined, 'virtio-blk negotiated features');
      // Back to vhost_vdpa: the char device reappears.
      const back = await bindDriver('kblk', 'vhost_vdpa');
      assert.match(back.charDev ?? '', /^\/dev\/vhost-vdpa-\d+$/);
    } finally {
      await manager.deleteDevice('kblk');
    }
  });

  it('reads vendor stats of a net queue as `vdpa dev vstats show` does', async () => {
    const lab = testDevices().find((d) => d.name === 'net0');
    assert.ok(lab);
    await rejects(
      manager.getVendorStats('net0', 0),
      'EAGAIN',
      /FEATURES_OK.*\[kernel: "vdpa: feature negotiation not complete"\]/,
    );
    const device = VhostVdpaDevice.open(lab.chardev);
    try {
      const want = device.getFeatures() & (bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM));
      const { negotiated } = device.negotiate(want, want);
      const ours = await manager.getVendorStats('net0', 0);
      assert.equal(ours.queueIndex, 0);
      assert.equal(ours.negotiatedFeatures, negotiated);
      // iproute2 prints each counter as a "name": value member next to queue_type.
      const vstats = iproute2<{ vstats: Record<string, Record<string, unknown>> }>(
        'dev',
        'vstats',
        'show',
        'net0',
        'qidx',
        '0',
      );
      const theirs = Object.entries(vstats.vstats.net0 ?? {})
        .filter(([key]) => key !== 'queue_type' && key !== 'queue_index')
        .map(([name, value]) => ({ name, value: BigInt(value as number) }));
      assert.ok(ours.counters.length > 0, 'vdpa_sim_net reports counters');
      assert.deepEqual(ours.counters, theirs);
      await rejects(manager.getVendorStats('blk0', 0), 'EOPNOTSUPP', /no vendor statistics/);
    } finally {
      device.close();
    }
  });

  it('creates a net device with MAC and MTU, changes the MAC, and deletes it', async () => {
    await removeIfPresent(manager, 'tnet');
    const info = await manager.addDevice({
      name: 'tnet',
      mgmtdev: 'vdpasim_net',
      mac: '52:54:00:12:34:56',
      mtu: 1400,
    });
    try {
      assert.equal(info.deviceClass, 'net');
      const theirs = iproute2<Ip2Config>('dev', 'config', 'show', 'tnet').config.tnet;
      assert.equal(theirs?.mac, '52:54:00:12:34:56');
      assert.equal(theirs?.mtu, 1400);
      await manager.setMac('tnet', '52:54:00:ab:cd:ef');
      assert.equal((await manager.getConfig('tnet')).net?.mac, '52:54:00:ab:cd:ef');
      assert.match(await resolveCharDev('tnet'), /^\/dev\/vhost-vdpa-\d+$/);
    } finally {
      await manager.deleteDevice('tnet');
    }
    assert.equal(fs.existsSync('/sys/bus/vdpa/devices/tnet'), false);
  });

  it('explains each error case', async () => {
    await rejects(
      manager.addDevice({ name: 'x1', mgmtdev: 'nosuch' }),
      'ENODEV',
      /no management device "nosuch".*\[kernel: "vdpa: Fail to find the specified management device"\]/,
    );
    await rejects(
      manager.addDevice({ name: 'blk0', mgmtdev: 'vdpasim_blk' }),
      'EEXIST',
      /named "blk0" already exists/,
    );
    await rejects(
      manager.addDevice({ name: 'x2', mgmtdev: 'vdpasim_net', maxVqPairs: 2 }),
      'EOPNOTSUPP',
      /does not accept maxVqPairs/,
    );
    await rejects(
      manager.addDevice({ name: 'x3', mgmtdev: 'vdpasim_blk', mac: '52:54:00:00:00:01' }),
      'EOPNOTSUPP',
      /does not accept mac/,
    );
    await rejects(
      manager.deleteDevice('ghost'),
      'ENODEV',
      /no vdpa device named "ghost".*\[kernel: "vdpa: device not found"\]/,
    );
    await rejects(manager.getDevice('ghost'), 'ENODEV', /no vdpa device named "ghost"/);
    await rejects(manager.getConfig('ghost'), 'ENODEV', /no vdpa device named "ghost"/);
    assert.deepEqual(entries('/sys/bus/vdpa/devices', /^x\d$/), [], 'nothing was created');
  });

  it('refuses to delete a device whose char device is open, naming the process, instead of hanging', async () => {
    await removeIfPresent(manager, 'tbusy');
    await manager.addDevice({ name: 'tbusy', mgmtdev: 'vdpasim_blk' });
    const chardev = await resolveCharDev('tbusy');
    const device = VhostVdpaDevice.open(chardev);
    try {
      assert.deepEqual(
        findHolders(chardev).map((h) => h.pid),
        [process.pid],
      );
      await rejects(
        manager.deleteDevice('tbusy'),
        'EBUSY',
        new RegExp(`${chardev} is open in pid ${process.pid} \\(node\\)`),
      );
      await assert.rejects(bindDriver('tbusy', 'virtio_vdpa'), (e: VdpaError) => e.code === 'EBUSY');
      assert.equal(describeBinding('tbusy').driver, 'vhost_vdpa', 'still bound');
    } finally {
      device.close();
    }
    await manager.deleteDevice('tbusy');
    assert.equal(fs.existsSync('/sys/bus/vdpa/devices/tbusy'), false);
  });

  it('adds and deletes 100 devices with no leaked kernel objects or fds', async function () {
    this.timeout(600000);
    const devicesBefore = entries('/sys/bus/vdpa/devices', /./);
    const nodesBefore = entries('/dev', /^vhost-vdpa-\d+$/);
    const classBefore = fs.existsSync('/sys/class/vhost-vdpa') ? entries('/sys/class/vhost-vdpa', /./) : [];
    const fdsBefore = openFds();
    for (let i = 0; i < 100; i++) {
      const name = `loop${i}`;
      await manager.addDevice({ name, mgmtdev: i % 2 === 0 ? 'vdpasim_blk' : 'vdpasim_net' });
      await resolveCharDev(name);
      await manager.deleteDevice(name);
    }
    assert.deepEqual(entries('/sys/bus/vdpa/devices', /./), devicesBefore);
    assert.deepEqual(entries('/dev', /^vhost-vdpa-\d+$/), nodesBefore);
    if (classBefore.length > 0) assert.deepEqual(entries('/sys/class/vhost-vdpa', /./), classBefore);
    assert.equal(openFds(), fdsBefore, 'no file descriptors leaked');
    assert.deepEqual((await manager.listDevices()).map((d) => d.name).sort(), devicesBefore);
  });

  it('opens and closes 50 managers without leaking netlink sockets', async () => {
    const before = openFds();
    for (let i = 0; i < 50; i++) {
      const m = await VdpaManager.open();
      await m.listDevices();
      m.close();
    }
    assert.equal(openFds(), before);
  });
});
