import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { VdpaError } from '../../lib/errors';
import {
  assertNotHeld,
  bindDriver,
  describeBinding,
  findHolders,
  getBoundDriver,
  listBusDevices,
  resolveCharDev,
  SYSTEM_PATHS,
} from '../../lib/mgmt/sysfs';
import { FakeSysfs } from './mgmt-fakes';

function code(c: string, message?: RegExp) {
  return (e: VdpaError): boolean => {
    assert.ok(e instanceof VdpaError, String(e));
    assert.equal(e.code, c, e.message);
    if (message !== undefined) assert.match(e.message, message);
    return true;
  };
}

describe('mgmt: sysfs binding and char devices', () => {
  let fake: FakeSysfs;
  beforeEach(() => {
    fake = new FakeSysfs();
  });
  afterEach(() => fake.cleanup());

  it('reports the bound driver and the char device', () => {
    fake.addDevice('blk0', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-0' });
    fake.addDevice('net1');
    assert.deepEqual(listBusDevices(fake.paths), ['blk0', 'net1']);
    assert.equal(getBoundDriver('blk0', fake.paths), 'vhost_vdpa');
    assert.equal(getBoundDriver('net1', fake.paths), null);
    assert.deepEqual(describeBinding('blk0', fake.paths), {
      driver: 'vhost_vdpa',
      driverOverride: null,
      charDev: path.join(fake.paths.dev, 'vhost-vdpa-0'),
    });
  });

  it('resolves /dev/vhost-vdpa-N', async () => {
    fake.addDevice('blk0', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-3' });
    assert.equal(
      await resolveCharDev('blk0', { paths: fake.paths }),
      path.join(fake.paths.dev, 'vhost-vdpa-3'),
    );
  });

  it('waits for the /dev node to appear', async () => {
    fake.addDevice('blk0', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-1', devNode: false });
    setTimeout(() => fs.writeFileSync(path.join(fake.paths.dev, 'vhost-vdpa-1'), ''), 60);
    assert.equal(
      await resolveCharDev('blk0', { paths: fake.paths, timeoutMs: 2000 }),
      path.join(fake.paths.dev, 'vhost-vdpa-1'),
    );
  });

  it('times out with ETIMEDOUT and says what is missing', async () => {
    fake.addDevice('blk0', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-1', devNode: false });
    await assert.rejects(
      resolveCharDev('blk0', { paths: fake.paths, timeoutMs: 80 }),
      code('ETIMEDOUT', /after 80 ms.*does not exist/),
    );
    fake.addDevice('lonely');
    await assert.rejects(
      resolveCharDev('lonely', { paths: fake.paths, timeoutMs: 50 }),
      code('ETIMEDOUT', /not bound to any driver.*modprobe vhost_vdpa/),
    );
  });

  it('refuses a device bound to virtio_vdpa, naming the fix', async () => {
    fake.addDevice('blk0', { driver: 'virtio_vdpa' });
    await assert.rejects(
      resolveCharDev('blk0', { paths: fake.paths }),
      code('ERR_WRONG_DRIVER', /dev bind blk0 vhost/),
    );
  });

  it('fails with ENODEV for an unknown device and ERR_INVALID_ARG for a path-like name', async () => {
    await assert.rejects(
      resolveCharDev('ghost', { paths: fake.paths }),
      code('ENODEV', /no vdpa device named "ghost"/),
    );
    await assert.rejects(resolveCharDev('../etc', { paths: fake.paths }), code('ERR_INVALID_ARG'));
  });

  it('binds: sets driver_override, unbinds the old driver, binds the new one', async () => {
    const dir = fake.addDevice('blk0', { driver: 'vhost_vdpa' });
    fake.addDriver('virtio_vdpa');
    await bindDriver('blk0', 'virtio_vdpa', { paths: fake.paths });
    const drivers = path.join(fake.paths.sys, 'bus/vdpa/drivers');
    assert.equal(fs.readFileSync(path.join(dir, 'driver_override'), 'utf8'), 'virtio_vdpa');
    assert.equal(fs.readFileSync(path.join(drivers, 'vhost_vdpa/unbind'), 'utf8'), 'blk0');
    assert.equal(fs.readFileSync(path.join(drivers, 'virtio_vdpa/bind'), 'utf8'), 'blk0');
  });

  it('refuses to bind to a driver that is not loaded', async () => {
    fake.addDevice('blk0');
    await assert.rejects(
      bindDriver('blk0', 'virtio_vdpa', { paths: fake.paths }),
      code('ENOENT', /modprobe virtio_vdpa/),
    );
  });

  it('finds this process holding a char device open, and refuses to delete/unbind it (EBUSY)', () => {
    const fd = fs.openSync('/dev/null', 'r');
    try {
      const holders = findHolders('/dev/null', SYSTEM_PATHS);
      assert.ok(
        holders.some((h) => h.pid === process.pid && h.how === 'fd' && h.fd === fd),
        JSON.stringify(holders),
      );
      // A fake device whose char device node is a symlink to /dev/null (held by us).
      fake.addDevice('busy', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-9', devNode: false });
      fs.symlinkSync('/dev/null', path.join(fake.paths.dev, 'vhost-vdpa-9'));
      const paths = { ...fake.paths, proc: '/proc' };
      assert.throws(
        () => assertNotHeld('busy', 'delete', paths),
        code('EBUSY', new RegExp(`pid ${process.pid} \\(node\\) via fd ${fd}.*Close it`)),
      );
    } finally {
      fs.closeSync(fd);
    }
  });

  it('finds no holders for a device nobody opened', () => {
    assert.deepEqual(findHolders(path.join(fake.paths.dev, 'nothing'), SYSTEM_PATHS), []);
  });
});
