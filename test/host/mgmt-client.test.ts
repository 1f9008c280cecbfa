import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { VdpaError } from '../../lib/errors';
import { GenericNetlink, NetlinkClient, NetlinkRequestError } from '../../lib/mgmt/genl';
import { openNativeTransport } from '../../lib/mgmt/native-netlink';
import { AttributeWriter, encodeMessage, NETLINK_GENERIC } from '../../lib/mgmt/netlink';
import { explainMissingFamily, VdpaManager } from '../../lib/mgmt/vdpa';
import * as uapi from '../../lib/mgmt/vdpa-uapi';
import { FAKE_VDPA_FAMILY, FakeKernel, FakeSysfs, type FakeRequest } from './mgmt-fakes';

function rejectsWith(promise: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  return assert.rejects(promise, (e: VdpaError) => {
    assert.ok(e instanceof VdpaError, `expected a VdpaError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (message !== undefined) assert.match(e.message, message);
    return true;
  });
}

describe('mgmt: netlink client', () => {
  it('matches answers to concurrent requests by sequence number', async () => {
    const kernel = new FakeKernel((r) => ({
      replies: [{ cmd: r.cmd, attrs: new AttributeWriter().u32(1, r.cmd) }],
    }));
    const genl = new GenericNetlink(kernel);
    const [a, b] = await Promise.all([
      genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'a' }),
      genl.request(FAKE_VDPA_FAMILY, 6, 1, Buffer.alloc(0), { what: 'b' }),
    ]);
    assert.equal(a[0]?.attrs.u32(1), 5);
    assert.equal(b[0]?.attrs.u32(1), 6);
    assert.notEqual(kernel.requests[0]?.message.seq, kernel.requests[1]?.message.seq);
    genl.close();
  });

  it('collects every reply of a dump until NLMSG_DONE', async () => {
    const kernel = new FakeKernel(() => ({
      replies: [1, 2, 3].map((n) => ({ cmd: 3, attrs: new AttributeWriter().u32(1, n) })),
    }));
    const genl = new GenericNetlink(kernel);
    const replies = await genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'dump', dump: true });
    assert.deepEqual(
      replies.map((r) => r.attrs.u32(1)),
      [1, 2, 3],
    );
    assert.equal(kernel.requests[0]?.message.flags & 0x300, 0x300, 'NLM_F_DUMP is set');
    genl.close();
  });

  it('rejects with the errno and the kernel message', async () => {
    const kernel = new FakeKernel(() => ({ errno: 19, extack: 'vdpa: device not found' }));
    const genl = new GenericNetlink(kernel);
    await assert.rejects(
      genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'vdpa DEV_GET' }),
      (e: NetlinkRequestError) => {
        assert.ok(e instanceof NetlinkRequestError);
        assert.equal(e.code, 'ENODEV');
        assert.equal(e.errno, 19);
        assert.equal(e.kernelMessage, 'vdpa: device not found');
        assert.equal(e.syscall, 'netlink(vdpa DEV_GET)');
        return true;
      },
    );
    genl.close();
  });

  it('times out with ETIMEDOUT when the kernel does not answer', async () => {
    const genl = new GenericNetlink(new FakeKernel(() => ({ silent: true })), 50);
    await rejectsWith(
      genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'vdpa DEV_GET' }),
      'ETIMEDOUT',
      /within 50 ms/,
    );
    genl.close();
  });

  it('rejects pending requests with ERR_CLOSED on close and closes the transport', async () => {
    const kernel = new FakeKernel(() => ({ silent: true }));
    const genl = new GenericNetlink(kernel);
    const pending = genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'x' });
    genl.close();
    await rejectsWith(pending, 'ERR_CLOSED');
    assert.equal(kernel.closed, true);
    await rejectsWith(genl.request(FAKE_VDPA_FAMILY, 5, 1, Buffer.alloc(0), { what: 'x' }), 'ERR_CLOSED');
  });

  it('ignores datagrams that do not come from the kernel', async () => {
    const kernel = new FakeKernel(() => ({ silent: true }));
    const client = new NetlinkClient(kernel, 100);
    const pending = client.request(FAKE_VDPA_FAMILY, Buffer.alloc(4), { what: 'x' });
    const seq = kernel.requests[0]?.message.seq ?? 0;
    // A forged ACK from another process (port 999) must not complete the request.
    kernel.inject([encodeMessage(2, 0, seq, kernel.portId, Buffer.alloc(20))], [999]);
    await rejectsWith(pending, 'ETIMEDOUT');
    client.close();
  });

  it('fails every pending request when the receive queue overflowed (ENOBUFS)', async () => {
    const kernel = new FakeKernel(() => ({ silent: true }));
    const client = new NetlinkClient(kernel, 1000);
    const pending = client.request(FAKE_VDPA_FAMILY, Buffer.alloc(4), { what: 'x' });
    kernel.inject([], [], new VdpaError('recvfrom(AF_NETLINK) failed: ENOBUFS', { code: 'ENOBUFS' }));
    await rejectsWith(pending, 'ENOBUFS');
    client.close();
  });

  it('does not keep the process alive while idle', () => {
    const kernel = new FakeKernel();
    const client = new NetlinkClient(kernel);
    assert.equal(kernel.referenced, false);
    client.close();
  });

  it('resolves a real family on this host through the addon (nlctrl)', async () => {
    const genl = new GenericNetlink(openNativeTransport(NETLINK_GENERIC));
    try {
      const family = await genl.resolveFamily('nlctrl');
      assert.equal(family.id, 0x10);
      assert.ok(family.commands.includes(3), 'GETFAMILY is among its commands');
      await rejectsWith(genl.resolveFamily('nofamily'), 'ENOENT');
    } finally {
      genl.close();
    }
  });
});

describe('mgmt: VdpaManager errors that teach', () => {
  let sysfs: FakeSysfs;
  beforeEach(() => {
    sysfs = new FakeSysfs();
  });
  afterEach(() => sysfs.cleanup());

  async function manager(
    handle: (r: FakeRequest) => ReturnType<FakeKernel['handle']>,
    commands: number[] = [],
  ): Promise<VdpaManager> {
    const kernel = new FakeKernel(handle);
    kernel.commands = commands;
    return VdpaManager.open({ transport: kernel, paths: sysfs.paths, timeoutMs: 500 });
  }

  it('says the module is not loaded when the family and /sys/bus/vdpa are missing', async () => {
    fs.rmSync(path.join(sysfs.paths.sys, 'bus'), { recursive: true });
    const kernel = new FakeKernel();
    kernel.vdpaMissing = true;
    await rejectsWith(
      VdpaManager.open({ transport: kernel, paths: sysfs.paths }),
      'ENOENT',
      /the vdpa module is not loaded \(modprobe vdpa/,
    );
    assert.equal(kernel.closed, true, 'the socket is closed on failure');
  });

  it('says "not in the initial network namespace" when the bus exists but the family does not', async () => {
    for (const p of ['self', '1']) fs.mkdirSync(path.join(sysfs.paths.proc, p, 'ns'), { recursive: true });
    fs.symlinkSync('net:[4026531840]', path.join(sysfs.paths.proc, '1/ns/net'));
    fs.symlinkSync('net:[4026532999]', path.join(sysfs.paths.proc, 'self/ns/net'));
    const kernel = new FakeKernel();
    kernel.vdpaMissing = true;
    await rejectsWith(
      VdpaManager.open({ transport: kernel, paths: sysfs.paths }),
      'ENOENT',
      /not in the initial network namespace/,
    );
    assert.match(explainMissingFamily(sysfs.paths), /--net=host/);
  });

  it('turns EPERM into "needs CAP_NET_ADMIN (run as root)"', async () => {
    const m = await manager(() => ({ errno: 1 }));
    await rejectsWith(
      m.addDevice({ name: 'x', mgmtdev: 'vdpasim_blk' }),
      'EPERM',
      /needs CAP_NET_ADMIN \(run as root\)/,
    );
    m.close();
  });

  it('explains an unknown management device, keeping the kernel message verbatim', async () => {
    const m = await manager(() => ({
      errno: 19,
      extack: 'vdpa: Fail to find the specified management device',
    }));
    await rejectsWith(
      m.addDevice({ name: 'x', mgmtdev: 'nosuch' }),
      'ENODEV',
      /no management device "nosuch".*mgmtdev list.*\[kernel: "vdpa: Fail to find the specified management device"\]/,
    );
    m.close();
  });

  it('explains a duplicate name (EEXIST)', async () => {
    const m = await manager(() => ({ errno: 17 }));
    await rejectsWith(
      m.addDevice({ name: 'blk0', mgmtdev: 'vdpasim_blk' }),
      'EEXIST',
      /named "blk0" already exists.*dev del blk0/,
    );
    m.close();
  });

  it('names the options a management device does not accept', async () => {
    const m = await manager(() => ({
      errno: 95,
      extack: 'vdpa: Some provided attributes are not supported: 0x1000',
    }));
    await rejectsWith(
      m.addDevice({ name: 'n', mgmtdev: 'vdpasim_net', maxVqPairs: 2 }),
      'EOPNOTSUPP',
      /does not accept maxVqPairs/,
    );
    m.close();
  });

  it('explains deleting a device that does not exist', async () => {
    const m = await manager(() => ({ errno: 19, extack: 'vdpa: device not found' }));
    await rejectsWith(m.deleteDevice('ghost'), 'ENODEV', /no vdpa device named "ghost"/);
    m.close();
  });

  it('explains deleting a device that was not user-created', async () => {
    const m = await manager(() => ({
      errno: 22,
      extack: 'vdpa: Only user created device can be deleted by user',
    }));
    await rejectsWith(m.deleteDevice('ifcvf-0'), 'EINVAL', /not created through the management interface/);
    m.close();
  });

  it('explains stats before feature negotiation (EAGAIN)', async () => {
    const m = await manager(() => ({ errno: 11, extack: 'vdpa: feature negotiation not complete' }));
    await rejectsWith(m.getVendorStats('net0', 0), 'EAGAIN', /FEATURES_OK/);
    m.close();
  });

  it('refuses a command the kernel does not implement, before sending it', async () => {
    const kernel = new FakeKernel(() => ({ replies: [] }));
    kernel.commands = [uapi.VDPA_CMD_MGMTDEV_GET, uapi.VDPA_CMD_DEV_GET];
    const m = await VdpaManager.open({ transport: kernel, paths: sysfs.paths });
    await rejectsWith(m.setMac('net0', '52:54:00:00:00:01'), 'EOPNOTSUPP', /does not implement DEV_ATTR_SET/);
    assert.equal(kernel.requests.filter((r) => r.message.type === FAKE_VDPA_FAMILY).length, 0);
    m.close();
  });

  it('retries a dump the kernel marked interrupted, then gives up with EAGAIN', async () => {
    let calls = 0;
    const m = await manager(() => {
      calls++;
      return { replies: [], dumpInterrupted: true };
    });
    // An interrupted dump with no messages carries the flag only on DONE in real kernels; the fake sets it on replies.
    const kernelWithReplies = await manager(() => {
      calls++;
      return { replies: [{ cmd: 3, attrs: new AttributeWriter().string(4, 'x') }], dumpInterrupted: true };
    });
    await rejectsWith(kernelWithReplies.listDevices(), 'EAGAIN', /changed while it was being read/);
    assert.ok(calls >= 3, 'retried');
    m.close();
    kernelWithReplies.close();
  });

  it('sends the attributes DEV_NEW needs, bus-less and with a bus', async () => {
    const seen: FakeRequest[] = [];
    const m = await manager((r) => {
      seen.push(r);
      if (r.cmd === uapi.VDPA_CMD_DEV_GET) {
        return {
          replies: [
            {
              cmd: uapi.VDPA_CMD_DEV_NEW,
              attrs: new AttributeWriter()
                .string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME, 'pci')
                .string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME, '0000:01:00.2')
                .string(uapi.VDPA_ATTR_DEV_NAME, 'n1')
                .u32(uapi.VDPA_ATTR_DEV_ID, 1)
                .u32(uapi.VDPA_ATTR_DEV_MAX_VQS, 3)
                .u16(uapi.VDPA_ATTR_DEV_MAX_VQ_SIZE, 256),
            },
          ],
        };
      }
      return { replies: [] };
    });
    const info = await m.addDevice({
      name: 'n1',
      mgmtdev: 'pci/0000:01:00.2',
      mac: '52:54:00:00:00:01',
      mtu: 1400,
      deviceFeatures: '0x300000000',
    });
    const add = seen[0];
    assert.ok(add);
    assert.equal(add.cmd, uapi.VDPA_CMD_DEV_NEW);
    assert.equal(add.attrs.string(uapi.VDPA_ATTR_MGMTDEV_BUS_NAME), 'pci');
    assert.equal(add.attrs.string(uapi.VDPA_ATTR_MGMTDEV_DEV_NAME), '0000:01:00.2');
    assert.equal(add.attrs.string(uapi.VDPA_ATTR_DEV_NAME), 'n1');
    assert.equal(add.attrs.u16(uapi.VDPA_ATTR_DEV_NET_CFG_MTU), 1400);
    assert.equal(add.attrs.u64(uapi.VDPA_ATTR_DEV_FEATURES), 0x300000000n);
    assert.deepEqual(
      [...(add.attrs.binary(uapi.VDPA_ATTR_DEV_NET_CFG_MACADDR) ?? [])],
      [0x52, 0x54, 0, 0, 0, 1],
    );
    assert.deepEqual(info, {
      name: 'n1',
      mgmtdev: 'pci/0000:01:00.2',
      deviceId: 1,
      deviceClass: 'net',
      vendorId: 0,
      maxVqs: 3,
      maxVqSize: 256,
    });
    m.close();
  });

  it('validates arguments before asking the kernel', async () => {
    const kernel = new FakeKernel(() => ({ replies: [] }));
    const m = await VdpaManager.open({ transport: kernel, paths: sysfs.paths });
    const cases: [Promise<unknown>, RegExp][] = [
      [m.addDevice({ name: '', mgmtdev: 'vdpasim_blk' }), /device name must be a non-empty string/],
      [m.addDevice({ name: 'a/b', mgmtdev: 'vdpasim_blk' }), /may not contain '\/'/],
      [m.addDevice({ name: 'ok', mgmtdev: 'a/b/c' }), /must be "name" or "bus\/name"/],
      [m.addDevice({ name: 'ok', mgmtdev: 'vdpasim_net', mac: '01:00:00:00:00:00' }), /multicast/],
      [m.addDevice({ name: 'ok', mgmtdev: 'vdpasim_net', mac: 'zz' }), /must look like/],
      [m.addDevice({ name: 'ok', mgmtdev: 'vdpasim_net', mtu: 67 }), /mtu must be an integer between 68/],
      [m.addDevice({ name: 'ok', mgmtdev: 'vdpasim_net', maxVqPairs: 0 }), /max VQ pairs/],
      [
        m.addDevice({ name: 'ok', mgmtdev: 'vdpasim_net', deviceFeatures: '0x1' + '0'.repeat(16) }),
        /does not fit in 64 bits/,
      ],
      [m.getVendorStats('net0', -1), /queue index/],
    ];
    for (const [promise, message] of cases) await rejectsWith(promise, 'ERR_INVALID_ARG', message);
    assert.equal(
      kernel.requests.filter((r) => r.message.type === FAKE_VDPA_FAMILY).length,
      0,
      'nothing was sent',
    );
    m.close();
  });
});
