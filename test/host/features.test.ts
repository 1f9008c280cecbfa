import { strict as assert } from 'node:assert';
import {
  bit,
  bits,
  decodeBackendFeatures,
  decodeBlkConfig,
  decodeFeatures,
  decodeNetConfig,
  decodeStatus,
  VirtioBlkF,
  VirtioNetF,
} from '../../lib';

describe('feature decoding', () => {
  it('decodes vdpa_sim_blk’s measured feature mask 0x308007646', () => {
    assert.deepEqual(decodeFeatures(0x308007646n, 2), [
      'SIZE_MAX',
      'SEG_MAX',
      'BLK_SIZE',
      'FLUSH',
      'TOPOLOGY',
      'MQ',
      'DISCARD',
      'WRITE_ZEROES',
      'ANY_LAYOUT',
      'VERSION_1',
      'ACCESS_PLATFORM',
    ]);
  });

  it('decodes VDUSE’s mask with EVENT_IDX and INDIRECT_DESC', () => {
    const names = decodeFeatures(0x331006644n, 2);
    assert.ok(names.includes('RING_EVENT_IDX') && names.includes('RING_INDIRECT_DESC'));
  });

  it('names device-class bits per class and unknown bits as bit<N>', () => {
    assert.deepEqual(decodeFeatures(bit(5), 1), ['MAC']);
    assert.deepEqual(decodeFeatures(bit(5), 2), ['RO']);
    assert.deepEqual(decodeFeatures(bit(5)), ['bit5']);
  });

  it('decodes backend features 0x17e and status bits', () => {
    assert.deepEqual(decodeBackendFeatures(0x17en), [
      'IOTLB_MSG_V2',
      'IOTLB_BATCH',
      'IOTLB_ASID',
      'SUSPEND',
      'RESUME',
      'ENABLE_AFTER_DRIVER_OK',
      'IOTLB_PERSIST',
    ]);
    assert.deepEqual(decodeStatus(0x0f), ['ACKNOWLEDGE', 'DRIVER', 'DRIVER_OK', 'FEATURES_OK']);
  });
});

describe('config decoding', () => {
  it('decodes a virtio-blk config space, honouring feature bits and config length', () => {
    const config = Buffer.alloc(60);
    config.writeBigUInt64LE(262144n, 0);
    config.writeUInt32LE(4096, 8);
    config.writeUInt32LE(32, 12);
    config.writeUInt32LE(512, 20);
    config.writeUInt16LE(1, 34);
    config.writeUInt32LE(0xffffffff, 36);
    config.writeUInt32LE(1, 40);
    config.writeUInt32LE(1, 44);
    config.writeUInt8(1, 56);
    const features = bits(
      VirtioBlkF.SIZE_MAX,
      VirtioBlkF.SEG_MAX,
      VirtioBlkF.BLK_SIZE,
      VirtioBlkF.DISCARD,
      VirtioBlkF.WRITE_ZEROES,
      VirtioBlkF.FLUSH,
      VirtioBlkF.SECURE_ERASE,
    );
    const decoded = decodeBlkConfig(config, features);
    assert.equal(decoded.capacity, 262144n);
    assert.equal(decoded.sizeMax, 4096);
    assert.equal(decoded.segMax, 32);
    assert.equal(decoded.blkSize, 512);
    assert.equal(decoded.numQueues, undefined, 'MQ not offered');
    assert.deepEqual(decoded.discard, { maxSectors: 0xffffffff, maxSeg: 1, sectorAlignment: 1 });
    assert.equal(decoded.writeZeroes?.mayUnmap, true);
    assert.equal(decoded.secureErase, undefined, 'a 60-byte config has no secure-erase fields');
    assert.equal(decoded.flush, true);
    assert.equal(decoded.readOnly, false);
  });

  it('decodes a virtio-net config space', () => {
    const config = Buffer.from([0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 4, 0, 0xdc, 0x05]);
    const decoded = decodeNetConfig(
      config,
      bits(VirtioNetF.MAC, VirtioNetF.STATUS, VirtioNetF.MQ, VirtioNetF.MTU),
    );
    assert.deepEqual(decoded, { mac: '52:54:00:12:34:56', status: 1, maxVirtqueuePairs: 4, mtu: 1500 });
  });
});
