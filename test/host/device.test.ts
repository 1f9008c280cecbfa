import { strict as assert } from 'node:assert';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventFd, VdpaError, VhostVdpaDevice } from '../../lib';

// Host tests: no vhost-vdpa device here, so these check API shape, argument
// validation and how errors from non-devices are reported.
describe('VhostVdpaDevice on non-devices', () => {
  it('reports a missing device as ENOENT with path, syscall and a hint', () => {
    assert.throws(
      () => VhostVdpaDevice.open('/dev/vhost-vdpa-404'),
      (error: unknown) => {
        assert.ok(error instanceof VdpaError);
        assert.equal(error.code, 'ENOENT');
        assert.equal(error.errno, 2);
        assert.equal(error.syscall, 'open');
        assert.equal(error.path, '/dev/vhost-vdpa-404');
        assert.match(error.message, /vhost_vdpa/);
        return true;
      },
    );
  });

  it('reports a file that is not a vhost-vdpa device as ENOTTY from VHOST_VDPA_GET_DEVICE_ID', () => {
    assert.throws(() => VhostVdpaDevice.open('/dev/null'), {
      code: 'ENOTTY',
      errno: 25,
      syscall: 'ioctl(VHOST_VDPA_GET_DEVICE_ID)',
      path: '/dev/null',
    });
    const file = join(mkdtempSync(join(tmpdir(), 'vdpa-')), 'plain');
    writeFileSync(file, 'not a device');
    assert.throws(() => VhostVdpaDevice.open(file), { code: 'ENOTTY', path: file });
  });

  it('reports a directory as EISDIR', () => {
    assert.throws(() => VhostVdpaDevice.open(tmpdir()), { code: 'EISDIR', syscall: 'open' });
  });

  it('rejects an empty or non-string path before any system call', () => {
    assert.throws(() => VhostVdpaDevice.open(''), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => VhostVdpaDevice.open(42 as unknown as string), { code: 'ERR_INVALID_ARG' });
  });

  it('exposes every control operation of the issue as a method', () => {
    const methods = [
      'getFeatures',
      'setFeatures',
      'setOwner',
      'resetOwner',
      'getBackendFeatures',
      'setBackendFeatures',
      'getStatus',
      'setStatus',
      'reset',
      'negotiate',
      'getConfigSize',
      'getConfig',
      'setConfig',
      'setConfigCall',
      'getVringNum',
      'getVqsCount',
      'getVringSize',
      'setVringNum',
      'setVringAddr',
      'setVringBase',
      'getVringBase',
      'setVringKick',
      'setVringCall',
      'setVringErr',
      'setVringEnable',
      'mapDoorbell',
      'getGroupNum',
      'getAsNum',
      'getVringGroup',
      'getVringDescGroup',
      'setGroupAsid',
      'suspend',
      'resume',
      'getIovaRange',
      'map',
      'mapBatch',
      'unmap',
      'unmapBatch',
      'writeIotlbMessages',
      'capabilities',
      'close',
    ];
    for (const name of methods) {
      assert.equal(
        typeof (VhostVdpaDevice.prototype as unknown as Record<string, unknown>)[name],
        'function',
        name,
      );
    }
  });
});

describe('EventFd', () => {
  it('counts signals and reads them back once', () => {
    const efd = new EventFd();
    try {
      efd.signal();
      efd.signal(4);
      assert.equal(efd.read(), 5);
      assert.equal(efd.read(), 0);
    } finally {
      efd.close();
    }
  });

  it('delivers signals to a watcher on the event loop, coalesced per wake-up', async () => {
    const efd = new EventFd();
    try {
      const count = await new Promise<number>((resolve) => {
        efd.watch(resolve);
        efd.signal(2);
        efd.signal(3);
      });
      assert.equal(count, 5);
    } finally {
      efd.close();
    }
  });

  it('throws ERR_CLOSED after close and closes idempotently', () => {
    const efd = new EventFd();
    efd.close();
    efd.close();
    assert.equal(efd.closed, true);
    assert.equal(efd.fd, -1);
    assert.throws(() => efd.signal(), { code: 'ERR_CLOSED' });
    assert.throws(() => efd.watch(() => undefined), { code: 'ERR_CLOSED' });
  });

  it('lets the process exit while an unref’d watch is active', () => {
    const efd = new EventFd();
    efd.watch(() => undefined);
    efd.setRef(false);
    efd.close();
  });
});
