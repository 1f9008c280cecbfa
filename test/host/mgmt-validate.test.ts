import { strict as assert } from 'node:assert';

import {
  formatMac,
  parseFeatures,
  parseInteger,
  parseMac,
  parseMgmtdevHandle,
  validateDeviceName,
} from '../../lib/mgmt/validate';

describe('mgmt: argument validation', () => {
  it('accepts device names that can be sysfs directories and rejects the rest', () => {
    assert.equal(validateDeviceName('blk0'), 'blk0');
    for (const bad of ['', '.', '..', 'a/b', 'a b', 'x\u0000', 'x'.repeat(65), 42]) {
      assert.throws(() => validateDeviceName(bad), /device name/);
    }
  });

  it('parses management device handles', () => {
    assert.deepEqual(parseMgmtdevHandle('vdpasim_blk'), { name: 'vdpasim_blk' });
    assert.deepEqual(parseMgmtdevHandle('pci/0000:01:00.2'), { bus: 'pci', name: '0000:01:00.2' });
    for (const bad of ['', '/x', 'x/', 'a/b/c', 7]) assert.throws(() => parseMgmtdevHandle(bad), /mgmtdev/);
  });

  it('parses and formats MAC addresses', () => {
    assert.equal(formatMac(parseMac('52:54:00:AB:cd:01')), '52:54:00:ab:cd:01');
    assert.throws(() => parseMac('00:00:00:00:00:00'), /not a valid address/);
    assert.throws(() => parseMac('52:54:00:00:00'), /must look like/);
  });

  it('parses integers and 64-bit feature masks', () => {
    assert.equal(parseInteger('0x10', 'n', 0, 100), 16);
    assert.throws(() => parseInteger('1.5', 'n', 0, 100), /n must be an integer/);
    assert.throws(() => parseInteger(101, 'n', 0, 100), /between 0 and 100/);
    assert.equal(parseFeatures('0x300000000'), 0x300000000n);
    assert.equal(parseFeatures(5), 5n);
    assert.throws(() => parseFeatures('-1'), /64-bit mask/);
  });
});
