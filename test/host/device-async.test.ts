import { strict as assert } from 'node:assert';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';

import { VdpaError, VhostVdpaDevice } from '../../lib';
import {
  CTRL_ATTR_FAMILY_ID,
  CTRL_ATTR_FAMILY_NAME,
  CTRL_CMD_GETFAMILY,
  GENL_ID_CTRL,
  GenericNetlink,
} from '../../lib/mgmt/genl';
import { openNativeTransport } from '../../lib/mgmt/native-netlink';
import { AttributeWriter, NETLINK_GENERIC } from '../../lib/mgmt/netlink';
import { VdpaManager } from '../../lib/mgmt/vdpa';
import { VDPA_CMD_DEV_DEL } from '../../lib/mgmt/vdpa-uapi';
import { native, NativeDeviceHandle } from '../../lib/native';
import { ioctls } from '../../lib/uapi';
import { rejects } from '../assertions';
import { FakeKernel, FakeSysfs } from './mgmt-fakes';

// No vhost-vdpa device on the host: /dev/null answers every ioctl with
// ENOTTY, which is enough to see where a call ran and how it fails.
function deviceOverDevNull(): { device: VhostVdpaDevice; handle: NativeDeviceHandle } {
  const handle = new native.DeviceHandle('/dev/null');
  const Device = VhostVdpaDevice as unknown as new (
    h: NativeDeviceHandle,
    memlock: string,
  ) => VhostVdpaDevice;
  return { device: new Device(handle, 'ignore'), handle };
}

describe('VhostVdpaDevice async calls (thread pool)', () => {
  it('offers setStatusAsync, resetAsync and closeAsync, each returning a promise', () => {
    for (const name of ['setStatusAsync', 'resetAsync', 'closeAsync'] as const) {
      assert.equal(typeof VhostVdpaDevice.prototype[name], 'function', name);
    }
  });

  it('rejects with the ioctl errno, syscall and path when the kernel refuses', async () => {
    const { device } = deviceOverDevNull();
    const error = await rejects(device.setStatusAsync(0x1), 'ENOTTY');
    assert.equal(error.errno, 25);
    assert.equal(error.syscall, 'ioctl(VHOST_VDPA_SET_STATUS)');
    assert.equal(error.path, '/dev/null');
    await rejects(device.resetAsync(), 'ENOTTY');
    device.close();
  });

  it('rejects (never throws) ERR_CLOSED on a closed device, and ERR_INVALID_ARG for a bad status', async () => {
    const { device } = deviceOverDevNull();
    await rejects(device.setStatusAsync(256), 'ERR_INVALID_ARG');
    device.close();
    const pending = device.setStatusAsync(0);
    assert.ok(pending instanceof Promise);
    await rejects(pending, 'ERR_CLOSED', /closed/);
    await rejects(device.resetAsync(), 'ERR_CLOSED');
    await device.closeAsync(); // closing a closed device is a no-op
  });

  it('closeAsync closes the descriptor off the loop; sync calls racing with it get ERR_CLOSED; idempotent', async () => {
    const { device, handle } = deviceOverDevNull();
    const fd = device.fd;
    assert.ok(fd >= 0);
    const closing = device.closeAsync();
    assert.equal(device.closed, true);
    assert.equal(device.fd, -1);
    assert.throws(() => device.getStatus(), { code: 'ERR_CLOSED' });
    assert.equal(device.closeAsync(), closing, 'a second closeAsync returns the same promise');
    device.close(); // no double close
    await closing;
    assert.equal(handle.pending, 0);
    await rejects(device.setStatusAsync(0), 'ERR_CLOSED');
  });

  it('refuses synchronous calls with ERR_BUSY while an async call runs (the kernel would block them)', async () => {
    const { device } = deviceOverDevNull();
    const running = device.setStatusAsync(0x1);
    assert.throws(
      () => device.getStatus(),
      (error: unknown) => {
        assert.ok(error instanceof VdpaError);
        assert.equal(error.code, 'ERR_BUSY');
        assert.match(error.message, /async call .* still running/);
        return true;
      },
    );
    await rejects(running, 'ENOTTY');
    assert.throws(() => device.getStatus(), { code: 'ENOTTY' }, 'usable again once it settled');
    await device.closeAsync();
  });

  it('a close while an async ioctl runs waits for it: the ioctl never sees a closed or reused fd', async () => {
    const { device, handle } = deviceOverDevNull();
    const running = device.setStatusAsync(0x1);
    const closing = device.closeAsync();
    assert.equal(handle.pending, 1, 'the close waits for the ioctl');
    await rejects(running, 'ENOTTY');
    await closing;
    assert.equal(handle.pending, 0);
  });
});

describe('native async primitives', () => {
  it('ioctlAsync copies the struct back on success and checks its size like ioctl', async () => {
    // FIONREAD (no size in its number) works on a plain file: the bytes left to read.
    const file = join(mkdtempSync(join(tmpdir(), 'vdpa-ioctl-')), 'five');
    writeFileSync(file, '12345');
    const plain = new native.DeviceHandle(file);
    const count = new Uint8Array(4);
    assert.equal(await plain.ioctlAsync(0x541b, 'FIONREAD', count), 0);
    assert.equal(new DataView(count.buffer).getInt32(0, true), 5);
    await plain.closeAsync();

    const handle = new native.DeviceHandle('/dev/null');
    await rejects(
      (async () => handle.ioctlAsync(ioctls.VHOST_GET_FEATURES, 'VHOST_GET_FEATURES', new Uint8Array(2)))(),
      'EINVAL',
      /has 2 bytes, the request needs 8/,
    );
    handle.close();
    await rejects((async () => handle.ioctlAsync(ioctls.VHOST_SET_OWNER, 'VHOST_SET_OWNER'))(), 'EBADF');
    await handle.closeAsync();
  });

  it('a netlink request sent from the thread pool (offLoop) is answered through the watch', async () => {
    const genl = new GenericNetlink(openNativeTransport(NETLINK_GENERIC), 2000);
    try {
      const attrs = new AttributeWriter().string(CTRL_ATTR_FAMILY_NAME, 'nlctrl').toBuffer();
      const [reply] = await genl.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, attrs, {
        what: 'nlctrl GETFAMILY nlctrl',
        offLoop: true,
      });
      assert.equal(reply?.attrs.u16(CTRL_ATTR_FAMILY_ID), GENL_ID_CTRL);
    } finally {
      genl.close();
    }
  });
});

/** A fake kernel whose DEV_DEL handler sleeps inside sendmsg for `sleepMs`, as the real one does for a held device. */
class SleepingKernel extends FakeKernel {
  sentOffLoop: number[] = [];
  sentOnLoop: number[] = [];
  constructor(private readonly sleepMs: number) {
    super(() => ({ replies: [] }));
  }
  override send(datagram: Buffer): void {
    this.sentOnLoop.push(datagram.readUInt8(16));
    super.send(datagram);
  }
  async sendAsync(datagram: Buffer): Promise<void> {
    this.sentOffLoop.push(datagram.readUInt8(16));
    await delay(this.sleepMs);
    super.send(datagram);
  }
}

describe('VdpaManager.deleteDevice off the event loop', () => {
  it('sends DEV_DEL with sendAsync and starts the answer timeout only once the send returned', async () => {
    const kernel = new SleepingKernel(300);
    const sysfs = new FakeSysfs();
    const manager = await VdpaManager.open({ transport: kernel, paths: sysfs.paths, timeoutMs: 100 });
    try {
      // 300 ms in the "kernel" with a 100 ms answer timeout: the wait in sendmsg is not a timeout.
      await manager.deleteDevice('blk9', { checkHolders: false });
      assert.deepEqual(kernel.sentOffLoop, [VDPA_CMD_DEV_DEL]);
      assert.ok(!kernel.sentOnLoop.includes(VDPA_CMD_DEV_DEL), 'DEV_DEL went through send() on the loop');
    } finally {
      manager.close();
      sysfs.cleanup();
    }
  });
});
