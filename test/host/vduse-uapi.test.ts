import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { bits, VirtioBlkF, VirtioF } from '../../lib/features';
import { decodeBlkConfig } from '../../lib/virtio-config';
import { blkFeatures, encodeBlkConfig } from '../../lib/vduse/blk-config';
import { validateCreateOptions, VduseControl } from '../../lib/vduse/control';
import * as uapi from '../../lib/vduse/uapi';

const IOCTLS = [
  'VDUSE_GET_API_VERSION',
  'VDUSE_SET_API_VERSION',
  'VDUSE_CREATE_DEV',
  'VDUSE_DESTROY_DEV',
  'VDUSE_IOTLB_GET_FD',
  'VDUSE_DEV_GET_FEATURES',
  'VDUSE_DEV_SET_CONFIG',
  'VDUSE_DEV_INJECT_CONFIG_IRQ',
  'VDUSE_VQ_SETUP',
  'VDUSE_VQ_GET_INFO',
  'VDUSE_VQ_SETUP_KICKFD',
  'VDUSE_VQ_INJECT_IRQ',
  'VDUSE_IOTLB_GET_INFO',
] as const;

/** offsetof/sizeof probes: [expression, what lib/vduse/uapi.ts assumes]. */
const LAYOUT: [string, number][] = [
  ['sizeof(struct vduse_dev_config)', uapi.VDUSE_DEV_CONFIG_SIZE],
  ['offsetof(struct vduse_dev_config, vendor_id)', 256],
  ['offsetof(struct vduse_dev_config, features)', 264],
  ['offsetof(struct vduse_dev_config, vq_num)', 272],
  ['offsetof(struct vduse_dev_config, vq_align)', 276],
  ['offsetof(struct vduse_dev_config, config_size)', 332],
  ['sizeof(struct vduse_dev_request)', uapi.VDUSE_MESSAGE_SIZE],
  ['sizeof(struct vduse_dev_response)', uapi.VDUSE_MESSAGE_SIZE],
  ['offsetof(struct vduse_dev_request, vq_state)', 24],
  ['offsetof(struct vduse_dev_request, s.status)', 24],
  ['offsetof(struct vduse_dev_request, iova.last)', 32],
  ['offsetof(struct vduse_dev_response, vq_state.packed.last_used_idx)', 34],
  ['offsetof(struct vduse_vq_info, desc_addr)', 8],
  ['offsetof(struct vduse_vq_info, packed.last_used_idx)', 38],
  ['offsetof(struct vduse_vq_info, ready)', 40],
  ['sizeof(struct vduse_vq_info)', 48],
  ['sizeof(struct vduse_vq_config)', 32],
  ['offsetof(struct vduse_iotlb_entry, perm)', 24],
  ['sizeof(struct vduse_iotlb_entry)', 32],
];

describe('vduse uapi', () => {
  it('agrees with the installed <linux/vduse.h> on every ioctl number and struct offset it uses', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-uapi-'));
    const source =
      '#include <stdio.h>\n#include <stddef.h>\n#include <sys/ioctl.h>\n#include <linux/vduse.h>\nint main(void) {\n' +
      IOCTLS.map((n) => `#ifdef ${n}\n  printf("${n} %lu\\n", (unsigned long)${n});\n#endif\n`).join('') +
      LAYOUT.map(([expr], i) => `  printf("layout${i} %lu\\n", (unsigned long)${expr});\n`).join('') +
      '  return 0;\n}\n';
    writeFileSync(join(dir, 'probe.c'), source);
    const cc = spawnSync('cc', ['-o', join(dir, 'probe'), join(dir, 'probe.c')], { encoding: 'utf8' });
    assert.equal(cc.status, 0, `cc failed: ${cc.stderr}`);
    const lines = spawnSync(join(dir, 'probe'), { encoding: 'utf8' }).stdout.trim().split('\n');
    const values = new Map(lines.map((l) => l.split(' ') as [string, string]));
    // The host's 6.1 headers lack IOTLB_GET_INFO (6.3); every other ioctl must be there.
    assert.ok(values.size >= IOCTLS.length - 1 + LAYOUT.length, `probe printed ${values.size} lines`);
    for (const name of IOCTLS) {
      if (values.has(name)) assert.equal(uapi[name], Number(values.get(name)), name);
    }
    LAYOUT.forEach(([expr, expected], i) => assert.equal(Number(values.get(`layout${i}`)), expected, expr));
  });

  it('encodes vduse_dev_config with the config bytes after the fixed part and reserved bytes zero', () => {
    const config = Buffer.from([1, 2, 3, 4]);
    const bytes = uapi.encodeDevConfig({
      name: 'vd0',
      vendorId: 0x1af4,
      deviceId: 2,
      features: 0x300000000n,
      vqNum: 2,
      vqAlign: 4096,
      config,
    });
    assert.equal(bytes.length, 340);
    assert.equal(bytes.toString('utf8', 0, 3), 'vd0');
    assert.equal(bytes[3], 0);
    assert.equal(bytes.readUInt32LE(256), 0x1af4);
    assert.equal(bytes.readBigUInt64LE(264), 0x300000000n);
    assert.equal(bytes.readUInt32LE(272), 2);
    assert.ok(bytes.subarray(280, 332).every((b) => b === 0));
    assert.equal(bytes.readUInt32LE(332), 4);
    assert.deepEqual([...bytes.subarray(336)], [1, 2, 3, 4]);
  });

  it('decodes the three request types and answers with reserved bytes zero', () => {
    const req = Buffer.alloc(152);
    req.writeUInt32LE(uapi.VDUSE_UPDATE_IOTLB, 0);
    req.writeUInt32LE(77, 4);
    req.writeBigUInt64LE(0n, 24);
    req.writeBigUInt64LE(0xffffffffffffffffn, 32);
    assert.deepEqual(uapi.decodeRequest(req), {
      type: 2,
      requestId: 77,
      start: 0n,
      last: 0xffffffffffffffffn,
    });
    req.writeUInt32LE(uapi.VDUSE_SET_STATUS, 0);
    req.writeUInt8(0x0f, 24);
    assert.deepEqual(uapi.decodeRequest(req), { type: 1, requestId: 77, status: 0x0f });

    const failed = uapi.encodeResponse(9, false);
    assert.equal(failed.length, 152);
    assert.equal(failed.readUInt32LE(0), 9);
    assert.equal(failed.readUInt32LE(4), uapi.VDUSE_REQ_RESULT_FAILED);
    assert.ok(failed.subarray(8).every((b) => b === 0));

    const packed = uapi.encodeResponse(3, true, 1, {
      packed: { availCounter: 3, availIndex: 0x8005, usedCounter: 1, usedIndex: 7 },
    });
    assert.equal(packed.readUInt32LE(24), 1);
    // The kernel keeps one bit of each wrap counter and 15 of each index.
    assert.deepEqual(
      [packed.readUInt16LE(28), packed.readUInt16LE(30), packed.readUInt16LE(32), packed.readUInt16LE(34)],
      [1, 5, 1, 7],
    );
  });
});

describe('vduse creation rules', () => {
  const base = {
    name: 'vd0',
    deviceType: 'block' as const,
    features: bits(VirtioF.VERSION_1, VirtioF.ACCESS_PLATFORM),
    config: Buffer.alloc(60),
    queueCount: 1,
  };

  it('refuses a device without ACCESS_PLATFORM before the kernel would, naming the bit', () => {
    assert.throws(
      () => validateCreateOptions({ ...base, features: bits(VirtioF.VERSION_1) }),
      (e: Error & { code?: string }) =>
        e.code === 'ERR_NEGOTIATION' && /ACCESS_PLATFORM \(bit 33\)/.test(e.message),
    );
  });

  it('refuses a device without VERSION_1', () => {
    assert.throws(
      () => validateCreateOptions({ ...base, features: bits(VirtioF.ACCESS_PLATFORM) }),
      /VERSION_1 \(bit 32\)/,
    );
  });

  it('refuses a net device with CTRL_VQ and a block device with CONFIG_WCE', () => {
    assert.throws(
      () => validateCreateOptions({ ...base, deviceType: 'net', features: base.features | bits(17) }),
      /CTRL_VQ \(bit 17\).*no control queue/,
    );
    assert.throws(
      () => validateCreateOptions({ ...base, features: base.features | bits(VirtioBlkF.CONFIG_WCE) }),
      /CONFIG_WCE/,
    );
  });

  it('refuses names that cannot be a /dev/vduse entry', () => {
    for (const name of ['', '../x', 'a/b', 'x'.repeat(256)]) {
      assert.throws(() => validateCreateOptions({ ...base, name }), /name .* is invalid/);
    }
  });

  it('says to load the vduse module when /dev/vduse/control is missing', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vduse-none-'));
    assert.throws(
      () => VduseControl.open({ devDir: dir, sysfsDir: dir }),
      (e: Error & { code?: string }) => e.code === 'ENOENT' && /modprobe vduse/.test(e.message),
    );
  });
});

describe('vduse block config', () => {
  it('encodes a virtio_blk_config the driver-side decoder reads back', () => {
    const features = blkFeatures({ readOnly: false, packed: true });
    const config = encodeBlkConfig({ capacity: 64 << 20, segMax: 254, blkSize: 4096, numQueues: 2 });
    const decoded = decodeBlkConfig(config, features);
    assert.equal(decoded.capacity, BigInt((64 << 20) / 512));
    assert.equal(decoded.segMax, 254);
    assert.equal(decoded.blkSize, 4096);
    assert.equal(decoded.numQueues, 2);
    assert.deepEqual(decoded.topology, {
      physicalBlockExp: 0,
      alignmentOffset: 0,
      minIoSize: 1,
      optIoSize: 0,
    });
    assert.equal(decoded.discard?.maxSeg, 1);
    assert.equal(decoded.discard?.sectorAlignment, 8);
    assert.equal(decoded.writeZeroes?.maxSeg, 1);
    assert.equal(decoded.readOnly, false);
    assert.ok((features & bits(VirtioF.RING_PACKED)) !== 0n);
  });

  it('offers RO and neither DISCARD nor WRITE_ZEROES when read-only, and never CONFIG_WCE', () => {
    const ro = blkFeatures({ readOnly: true, packed: false });
    assert.ok((ro & bits(VirtioBlkF.RO)) !== 0n);
    assert.equal(
      ro & bits(VirtioBlkF.DISCARD, VirtioBlkF.WRITE_ZEROES, VirtioBlkF.CONFIG_WCE, VirtioF.RING_PACKED),
      0n,
    );
    validateCreateOptions({
      name: 'x',
      deviceType: 'block',
      features: ro,
      config: Buffer.alloc(72),
      queueCount: 1,
    });
  });
});
