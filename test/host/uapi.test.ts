import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  encodeIotlbMessages,
  encodeVringAddr,
  encodeVringFile,
  encodeVringState,
  ioctls,
  VHOST_IOTLB_UPDATE,
  VHOST_MSG_V2_SIZE,
} from '../../lib';

// Values computed from the kernel's _IOC macros (include/uapi/linux/vhost.h, Linux 6.12).
const EXPECTED: Record<string, number> = {
  VHOST_GET_FEATURES: 0x8008af00,
  VHOST_SET_FEATURES: 0x4008af00,
  VHOST_SET_OWNER: 0x0000af01,
  VHOST_RESET_OWNER: 0x0000af02,
  VHOST_SET_VRING_NUM: 0x4008af10,
  VHOST_SET_VRING_ADDR: 0x4028af11,
  VHOST_SET_VRING_BASE: 0x4008af12,
  VHOST_GET_VRING_BASE: 0xc008af12,
  VHOST_SET_VRING_KICK: 0x4008af20,
  VHOST_SET_VRING_CALL: 0x4008af21,
  VHOST_SET_VRING_ERR: 0x4008af22,
  VHOST_SET_BACKEND_FEATURES: 0x4008af25,
  VHOST_GET_BACKEND_FEATURES: 0x8008af26,
  VHOST_VDPA_GET_DEVICE_ID: 0x8004af70,
  VHOST_VDPA_GET_STATUS: 0x8001af71,
  VHOST_VDPA_SET_STATUS: 0x4001af72,
  VHOST_VDPA_GET_CONFIG: 0x8008af73,
  VHOST_VDPA_SET_CONFIG: 0x4008af74,
  VHOST_VDPA_SET_VRING_ENABLE: 0x4008af75,
  VHOST_VDPA_GET_VRING_NUM: 0x8002af76,
  VHOST_VDPA_SET_CONFIG_CALL: 0x4004af77,
  VHOST_VDPA_GET_IOVA_RANGE: 0x8010af78,
  VHOST_VDPA_GET_CONFIG_SIZE: 0x8004af79,
  VHOST_VDPA_GET_AS_NUM: 0x8004af7a,
  VHOST_VDPA_GET_VRING_GROUP: 0xc008af7b,
  VHOST_VDPA_SET_GROUP_ASID: 0x4008af7c,
  VHOST_VDPA_SUSPEND: 0x0000af7d,
  VHOST_VDPA_RESUME: 0x0000af7e,
  VHOST_VDPA_GET_VRING_DESC_GROUP: 0xc008af7f,
  VHOST_VDPA_GET_VQS_COUNT: 0x8004af80,
  VHOST_VDPA_GET_GROUP_NUM: 0x8004af81,
  VHOST_VDPA_GET_VRING_SIZE: 0xc008af82,
};

describe('uapi', () => {
  it('defines every vhost-vdpa ioctl with the kernel’s request number', () => {
    for (const [name, value] of Object.entries(EXPECTED)) {
      assert.equal(ioctls[name as keyof typeof ioctls], value, name);
    }
  });

  it('agrees with the installed <linux/vhost.h> for every ioctl it defines', function () {
    // The host's headers (6.1) lack the newest ioctls; compare the ones they have.
    const dir = mkdtempSync(join(tmpdir(), 'vhost-uapi-'));
    const names = Object.keys(EXPECTED);
    const source =
      '#include <stdio.h>\n#include <linux/vhost.h>\nint main(void) {\n' +
      names.map((n) => `#ifdef ${n}\n  printf("${n} %lu\\n", (unsigned long)${n});\n#endif\n`).join('') +
      '  return 0;\n}\n';
    writeFileSync(join(dir, 'probe.c'), source);
    const cc = spawnSync('cc', ['-o', join(dir, 'probe'), join(dir, 'probe.c')], { encoding: 'utf8' });
    assert.equal(cc.status, 0, `cc failed: ${cc.stderr}`);
    const out = spawnSync(join(dir, 'probe'), { encoding: 'utf8' }).stdout.trim().split('\n');
    assert.ok(out.length >= 25, `expected most ioctls in the headers, got ${out.length}`);
    for (const line of out) {
      const [name, value] = line.split(' ');
      assert.equal(ioctls[name as keyof typeof ioctls], Number(value), name);
    }
  });

  it('encodes vhost_vring_state, vhost_vring_file and vhost_vring_addr as the kernel lays them out', () => {
    assert.deepEqual([...encodeVringState(2, 256)], [2, 0, 0, 0, 0, 1, 0, 0]);
    assert.deepEqual([...encodeVringFile(1, -1)], [1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    const addr = Buffer.from(encodeVringAddr(3, { desc: 0x1000n, avail: 0x2000n, used: 0x3000n }));
    assert.equal(addr.length, 40);
    assert.equal(addr.readUInt32LE(0), 3);
    assert.equal(addr.readBigUInt64LE(8), 0x1000n); // desc_user_addr
    assert.equal(addr.readBigUInt64LE(16), 0x3000n); // used_user_addr
    assert.equal(addr.readBigUInt64LE(24), 0x2000n); // avail_user_addr
  });

  it('encodes IOTLB messages as 72-byte struct vhost_msg_v2', () => {
    const bytes = Buffer.from(
      encodeIotlbMessages([
        { type: VHOST_IOTLB_UPDATE, asid: 1, iova: 0x10000n, size: 0x2000n, uaddr: 0x7f0000000000n, perm: 3 },
        { type: VHOST_IOTLB_UPDATE, asid: 0, iova: 0x20000n, size: 0x1000n, uaddr: 0x7f0000100000n, perm: 1 },
      ]),
    );
    assert.equal(bytes.length, 2 * VHOST_MSG_V2_SIZE);
    assert.equal(bytes.readUInt32LE(0), 2); // VHOST_IOTLB_MSG_V2
    assert.equal(bytes.readUInt32LE(4), 1); // asid
    assert.equal(bytes.readBigUInt64LE(8), 0x10000n);
    assert.equal(bytes.readBigUInt64LE(16), 0x2000n);
    assert.equal(bytes.readBigUInt64LE(24), 0x7f0000000000n);
    assert.equal(bytes[32], 3);
    assert.equal(bytes[33], VHOST_IOTLB_UPDATE);
    assert.equal(bytes.readBigUInt64LE(72 + 8), 0x20000n);
  });
});
