import { strict as assert } from 'node:assert';
import { constants } from 'node:os';

import { VdpaError } from '../../lib';
import { native } from '../../lib/native';
import { ioctls } from '../../lib/uapi';

describe('native ioctl argument size', () => {
  // /dev/null answers every ioctl with ENOTTY, so reaching the kernel shows
  // as ENOTTY and a refusal before the call as EINVAL.
  let handle: ReturnType<typeof openNull>;
  function openNull() {
    return new native.DeviceHandle('/dev/null');
  }
  beforeEach(() => {
    handle = openNull();
  });
  afterEach(() => handle.close());

  it('refuses a buffer shorter than _IOC_SIZE with EINVAL, naming both sizes, before calling the kernel', () => {
    assert.throws(
      () => handle.ioctl(ioctls.VHOST_GET_FEATURES, 'VHOST_GET_FEATURES', new Uint8Array(4)),
      (error: unknown) => {
        assert.ok(error instanceof VdpaError);
        assert.equal(error.code, 'EINVAL');
        assert.equal(error.errno, 22);
        assert.equal(error.syscall, 'ioctl(VHOST_GET_FEATURES)');
        assert.equal(error.path, '/dev/null');
        assert.match(error.message, /has 4 bytes, the request needs 8/);
        return true;
      },
    );
  });

  it('refuses a missing argument for a request that carries a struct', () => {
    assert.throws(() => handle.ioctl(ioctls.VHOST_GET_FEATURES, 'VHOST_GET_FEATURES'), {
      code: 'EINVAL',
      message: /has 0 bytes, the request needs 8/,
    });
  });

  it('passes buffers of at least _IOC_SIZE, and requests without a size, to the kernel', () => {
    assert.throws(() => handle.ioctl(ioctls.VHOST_GET_FEATURES, 'VHOST_GET_FEATURES', new Uint8Array(8)), {
      code: 'ENOTTY',
    });
    assert.throws(() => handle.ioctl(ioctls.VHOST_GET_FEATURES, 'VHOST_GET_FEATURES', new Uint8Array(16)), {
      code: 'ENOTTY',
    });
    assert.throws(() => handle.ioctl(ioctls.VHOST_SET_OWNER, 'VHOST_SET_OWNER'), { code: 'ENOTTY' });
  });
});

describe('native errno names', () => {
  it('names the errnos the library reports, and the kernel-internal ENOTSUPP (524)', () => {
    assert.equal(native.errnoName(9), 'EBADF');
    assert.equal(native.errnoName(25), 'ENOTTY');
    assert.equal(native.errnoName(524), 'ENOTSUPP');
    assert.equal(native.errnoName(11), 'EAGAIN');
    assert.equal(native.errnoName(95), 'EOPNOTSUPP');
    assert.equal(native.errnoName(35), 'EDEADLK');
    assert.equal(native.errnoName(133), 'EHWPOISON');
    assert.equal(native.errnoName(9999), 'E9999');
  });

  it('agrees with Node for every errno Node knows (aliases aside)', () => {
    const aliases: Record<string, string> = {
      EWOULDBLOCK: 'EAGAIN',
      EDEADLOCK: 'EDEADLK',
      ENOTSUP: 'EOPNOTSUPP',
    };
    for (const [name, value] of Object.entries(constants.errno)) {
      assert.equal(native.errnoName(value), aliases[name] ?? name, `errno ${value}`);
    }
  });

  it('puts the name into errors from system calls', () => {
    const handle = new native.DeviceHandle('/dev/null');
    handle.close();
    assert.throws(() => handle.ioctl(ioctls.VHOST_SET_OWNER, 'VHOST_SET_OWNER'), { code: 'EBADF', errno: 9 });
  });
});
