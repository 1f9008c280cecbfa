import { strict as assert } from 'node:assert';

import { VdpaError } from '../../lib/errors';
import { errnoName } from '../../lib/mgmt/errno';
import { decodeGenl, encodeGenl } from '../../lib/mgmt/genl';
import {
  align4,
  AttributeSet,
  AttributeWriter,
  decodeAttributes,
  decodeDone,
  decodeError,
  decodeMessages,
  encodeMessage,
  hostOrder,
  NLA_F_NESTED,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSGERR_ATTR_MISS_TYPE,
  NLMSGERR_ATTR_MSG,
  NLMSGERR_ATTR_OFFS,
} from '../../lib/mgmt/netlink';
import { decodeConfig, decodeVendorStats, unsupportedOptionNames } from '../../lib/mgmt/vdpa';
import * as uapi from '../../lib/mgmt/vdpa-uapi';
import { errorMessage } from './mgmt-fakes';

describe('mgmt: netlink codec', () => {
  it('round-trips a message header and pads it to 4 bytes', () => {
    const payload = Buffer.from([1, 2, 3, 4, 5]);
    const wire = encodeMessage(0x20, NLM_F_REQUEST | NLM_F_ACK, 77, 4242, payload);
    assert.equal(wire.length, 24);
    assert.equal(hostOrder.u32(wire, 0), 21, 'nlmsg_len counts the unpadded length');
    const [m] = decodeMessages(wire);
    assert.ok(m);
    assert.deepEqual(
      { type: m.type, flags: m.flags, seq: m.seq, portId: m.portId, payload: [...m.payload] },
      { type: 0x20, flags: NLM_F_REQUEST | NLM_F_ACK, seq: 77, portId: 4242, payload: [1, 2, 3, 4, 5] },
    );
  });

  it('splits a datagram holding several messages', () => {
    const a = encodeMessage(0x20, 0, 1, 0, Buffer.alloc(3));
    const b = encodeMessage(NLMSG_DONE, 0, 1, 0, Buffer.alloc(4));
    assert.deepEqual(
      decodeMessages(Buffer.concat([a, b])).map((m) => m.type),
      [0x20, NLMSG_DONE],
    );
  });

  it('rejects a message whose length runs past the datagram', () => {
    const wire = encodeMessage(0x20, 0, 1, 0, Buffer.alloc(8));
    hostOrder.w32(wire, 200, 0);
    assert.throws(
      () => decodeMessages(wire),
      (e: VdpaError) => e.code === 'ERR_NETLINK_PROTOCOL',
    );
  });

  it('rejects a message length shorter than the header', () => {
    const wire = encodeMessage(0x20, 0, 1, 0, Buffer.alloc(8));
    hostOrder.w32(wire, 4, 0);
    assert.throws(() => decodeMessages(wire), /message length 4/);
  });

  it('round-trips every attribute type', () => {
    const area = new AttributeWriter()
      .u8(1, 0xab)
      .u16(2, 0xbeef)
      .u32(3, 0xdeadbeef)
      .u64(4, 0x1122334455667788n)
      .string(5, 'vdpasim_blk')
      .put(6, Buffer.from([0x52, 0x54, 0, 1, 2, 3]))
      .nested(7, (w) => w.u32(1, 9).string(2, 'x'))
      .toBuffer();
    assert.equal(area.length % 4, 0);
    const set = new AttributeSet(area);
    assert.equal(set.u8(1), 0xab);
    assert.equal(set.u16(2), 0xbeef);
    assert.equal(set.u32(3), 0xdeadbeef);
    assert.equal(set.u64(4), 0x1122334455667788n);
    assert.equal(set.string(5), 'vdpasim_blk');
    assert.deepEqual([...(set.binary(6) ?? [])], [0x52, 0x54, 0, 1, 2, 3]);
    assert.equal(set.get(7)?.nested, true, 'NLA_F_NESTED is reported and masked from the type');
    assert.equal(set.nested(7)?.u32(1), 9);
    assert.equal(set.nested(7)?.string(2), 'x');
    assert.equal(set.u32(99), undefined);
  });

  it('sends strings NUL-terminated (NLA_NUL_STRING needs it)', () => {
    const area = new AttributeWriter().string(1, 'ab').toBuffer();
    assert.equal(hostOrder.u16(area, 0), 4 + 3);
    assert.equal(area[6], 0);
  });

  it('reads integers of whatever width the kernel sent (NET_STATUS is sent as u16)', () => {
    const set = new AttributeSet(
      new AttributeWriter().u16(11, 1).u8(12, 3).u32(13, 7).u64(14, 9n).toBuffer(),
    );
    assert.deepEqual([set.uint(11), set.uint(12), set.uint(13), set.uint(14)], [1, 3, 7, 9]);
  });

  it('rejects an attribute too short for the requested type', () => {
    const set = new AttributeSet(new AttributeWriter().u16(1, 5).toBuffer());
    assert.throws(() => set.u32(1), /attribute 1 has 2 bytes, a u32 needs 4/);
    assert.throws(
      () => set.u64(1),
      (e: VdpaError) => e.code === 'ERR_NETLINK_PROTOCOL',
    );
  });

  it('rejects an attribute whose length runs past its area', () => {
    const area = new AttributeWriter().u32(1, 5).toBuffer();
    hostOrder.w16(area, 40, 0);
    assert.throws(() => decodeAttributes(area), /attribute length 40/);
  });

  it('refuses to encode an attribute longer than 65535 bytes', () => {
    assert.throws(
      () => new AttributeWriter().put(1, Buffer.alloc(70000)),
      (e: VdpaError) => e.code === 'ERR_INVALID_ARG',
    );
  });

  it('strips NLA_F_NESTED from types when decoding', () => {
    const area = new AttributeWriter().put(3 | NLA_F_NESTED, Buffer.alloc(0)).toBuffer();
    assert.deepEqual(decodeAttributes(area)[0], { type: 3, nested: true, data: Buffer.alloc(0) });
  });

  it('aligns to 4 bytes', () => {
    assert.deepEqual([0, 1, 4, 5, 8].map(align4), [0, 4, 4, 8, 8]);
  });
});

describe('mgmt: NLMSG_ERROR and extended ACKs', () => {
  const request = decodeMessages(encodeMessage(0x20, NLM_F_REQUEST, 5, 1, Buffer.alloc(12)))[0];
  assert.ok(request);

  it('decodes an ACK as errno 0', () => {
    const [m] = decodeMessages(errorMessage(request, 0));
    assert.ok(m);
    assert.deepEqual(decodeError(m), { errno: 0 });
  });

  it('surfaces the kernel message verbatim', () => {
    const [m] = decodeMessages(errorMessage(request, 19, 'vdpa: device not found'));
    assert.ok(m);
    assert.equal(m.type, NLMSG_ERROR);
    assert.deepEqual(decodeError(m), { errno: 19, message: 'vdpa: device not found' });
  });

  it('finds the TLVs after an uncapped echo of the whole request', () => {
    const echoed = encodeMessage(0x20, NLM_F_REQUEST, 5, 1, Buffer.alloc(10));
    const tlvs = new AttributeWriter()
      .string(NLMSGERR_ATTR_MSG, 'bad attr')
      .u32(NLMSGERR_ATTR_OFFS, 20)
      .u32(NLMSGERR_ATTR_MISS_TYPE, 4)
      .toBuffer();
    const code = Buffer.alloc(4);
    hostOrder.w32(code, -22 >>> 0, 0);
    const wire = encodeMessage(NLMSG_ERROR, NLM_F_ACK_TLVS, 5, 1, Buffer.concat([code, echoed, tlvs]));
    const [m] = decodeMessages(wire);
    assert.ok(m);
    assert.deepEqual(decodeError(m), { errno: 22, message: 'bad attr', offset: 20, missingType: 4 });
  });

  it('rejects an NLMSG_ERROR too short for its error code', () => {
    const [m] = decodeMessages(encodeMessage(NLMSG_ERROR, 0, 5, 1, Buffer.alloc(2)));
    assert.ok(m);
    assert.throws(() => decodeError(m), /NLMSG_ERROR payload of 2 bytes/);
  });

  it('decodes a failed dump from NLMSG_DONE', () => {
    const code = Buffer.alloc(4);
    hostOrder.w32(code, -16 >>> 0, 0);
    const tlvs = new AttributeWriter().string(NLMSGERR_ATTR_MSG, 'busy').toBuffer();
    const [m] = decodeMessages(encodeMessage(NLMSG_DONE, NLM_F_ACK_TLVS, 5, 1, Buffer.concat([code, tlvs])));
    assert.ok(m);
    assert.deepEqual(decodeDone(m), { errno: 16, message: 'busy' });
  });
});

describe('mgmt: generic netlink and vdpa decoding', () => {
  it('round-trips genlmsghdr', () => {
    const payload = encodeGenl(5, 1, new AttributeWriter().string(4, 'blk0').toBuffer());
    const g = decodeGenl({ type: 0x20, flags: 0, seq: 0, portId: 0, payload });
    assert.equal(g.cmd, 5);
    assert.equal(g.version, 1);
    assert.equal(g.attrs.string(4), 'blk0');
  });

  it('rejects a generic netlink payload shorter than its header', () => {
    assert.throws(
      () => decodeGenl({ type: 0x20, flags: 0, seq: 0, portId: 0, payload: Buffer.alloc(2) }),
      /generic netlink payload/,
    );
  });

  it('decodes a block config reply', () => {
    const attrs = new AttributeWriter()
      .string(uapi.VDPA_ATTR_DEV_NAME, 'blk0')
      .u32(uapi.VDPA_ATTR_DEV_ID, 2)
      .u64(uapi.VDPA_ATTR_DEV_FEATURES, 0x308007646n)
      .u64(uapi.VDPA_ATTR_DEV_BLK_CFG_CAPACITY, 0x40000n)
      .u32(uapi.VDPA_ATTR_DEV_BLK_CFG_BLK_SIZE, 512)
      .u32(uapi.VDPA_ATTR_DEV_BLK_CFG_SEG_MAX, 32)
      .u16(uapi.VDPA_ATTR_DEV_BLK_CFG_NUM_QUEUES, 1)
      .u8(uapi.VDPA_ATTR_DEV_BLK_READ_ONLY, 0)
      .u8(uapi.VDPA_ATTR_DEV_BLK_FLUSH, 1);
    const c = decodeConfig(new AttributeSet(attrs.toBuffer()));
    assert.deepEqual(c, {
      name: 'blk0',
      deviceId: 2,
      deviceClass: 'block',
      deviceFeatures: 0x308007646n,
      blk: { capacity: 0x40000n, blockSize: 512, segMax: 32, numQueues: 1, readOnly: false, flush: true },
    });
  });

  it('decodes a net config reply (MAC, u16 status, MTU, negotiated features)', () => {
    const attrs = new AttributeWriter()
      .string(uapi.VDPA_ATTR_DEV_NAME, 'net0')
      .u32(uapi.VDPA_ATTR_DEV_ID, 1)
      .u64(uapi.VDPA_ATTR_DEV_NEGOTIATED_FEATURES, 0x300000000n)
      .put(uapi.VDPA_ATTR_DEV_NET_CFG_MACADDR, Buffer.from([0x52, 0x54, 0, 0, 0, 1]))
      .u16(uapi.VDPA_ATTR_DEV_NET_STATUS, 1)
      .u16(uapi.VDPA_ATTR_DEV_NET_CFG_MTU, 1500);
    const c = decodeConfig(new AttributeSet(attrs.toBuffer()));
    assert.deepEqual(c.net, { mac: '52:54:00:00:00:01', status: 1, linkUp: true, mtu: 1500 });
    assert.equal(c.negotiatedFeatures, 0x300000000n);
    assert.equal(c.blk, undefined, 'block attributes (21+) are only read for block devices');
  });

  it('pairs vendor counter names with their values in order', () => {
    const attrs = new AttributeWriter()
      .string(uapi.VDPA_ATTR_DEV_NAME, 'net0')
      .u32(uapi.VDPA_ATTR_DEV_ID, 1)
      .u32(uapi.VDPA_ATTR_DEV_QUEUE_INDEX, 2)
      .string(uapi.VDPA_ATTR_DEV_VENDOR_ATTR_NAME, 'received_desc')
      .u64(uapi.VDPA_ATTR_DEV_VENDOR_ATTR_VALUE, 5n)
      .string(uapi.VDPA_ATTR_DEV_VENDOR_ATTR_NAME, 'completed_desc')
      .u64(uapi.VDPA_ATTR_DEV_VENDOR_ATTR_VALUE, 4n);
    const s = decodeVendorStats(new AttributeSet(attrs.toBuffer()));
    assert.equal(s.queueIndex, 2);
    assert.deepEqual(s.counters, [
      { name: 'received_desc', value: 5n },
      { name: 'completed_desc', value: 4n },
    ]);
  });

  it('names the options in "Some provided attributes are not supported: 0x…"', () => {
    assert.deepEqual(unsupportedOptionNames('vdpa: Some provided attributes are not supported: 0x1000'), [
      'maxVqPairs',
    ]);
    assert.deepEqual(unsupportedOptionNames('x: 0x2400'), ['mac', 'mtu']);
    assert.deepEqual(unsupportedOptionNames('no mask'), []);
  });

  it('decodes the class mask of a management device', () => {
    assert.deepEqual(uapi.decodeClassMask(0x6n), ['net', 'block']);
    assert.equal(uapi.virtioClassName(99), 'id 99');
  });

  it('names errnos the way the kernel does', () => {
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    assert.equal(errnoName(11), 'EAGAIN');
    assert.equal(errnoName(19), 'ENODEV');
    assert.equal(errnoName(524), 'ENOTSUPP');
    assert.equal(errnoName(4000), 'E4000');
  });
});
