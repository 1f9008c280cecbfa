import { strict as assert } from 'node:assert';
import { readFileSync, statSync } from 'node:fs';
import {
  bit,
  DmaRegion,
  EventFd,
  IotlbMapping,
  PAGE_SIZE,
  VdpaError,
  VhostBackendF,
  VhostVdpaDevice,
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VirtioBlkF,
  VirtioF,
  VHOST_IOTLB_UPDATE,
  decodeBlkConfig,
} from '../../lib';
import { bindDriver, describeBinding } from '../../lib/mgmt';
import { native } from '../../lib/native';
import { forEachDevice, sh, TestDevice, testDevices, waitFor } from './helpers';

const gc = (global as { gc?: () => void }).gc;

/** Binds a vdpa device to the kernel's virtio_vdpa (→ virtio-blk), runs `body` with its vdX name, binds it back. */
async function withKernelVirtioBlk<T>(device: TestDevice, body: (disk: string) => T): Promise<T> {
  await bindDriver(device.name, 'virtio_vdpa');
  try {
    const disk = await waitFor(`a virtio-blk disk for ${device.name}`, () =>
      describeBinding(device.name).kernelDevices?.find((name) => name.startsWith('vd')),
    );
    return body(disk);
  } finally {
    await bindDriver(device.name, 'vhost_vdpa');
  }
}

function vdpaDevShow(name: string): { type: string; mgmtdev: string; max_vqs: number; max_vq_size: number } {
  const shown = JSON.parse(sh('vdpa', ['-j', 'dev', 'show', name])) as {
    dev: Record<string, { type: string; mgmtdev: string; max_vqs: number; max_vq_size: number }>;
  };
  return shown.dev[name];
}

forEachDevice('block', 'vhost-vdpa block device', (target) => {
  let device: VhostVdpaDevice;
  beforeEach(() => {
    device = VhostVdpaDevice.open(target.chardev);
  });
  afterEach(() => device.close());

  it('reports virtio device id 2 (block)', () => {
    assert.equal(device.deviceId, 2);
  });

  it('agrees with `vdpa -j dev show` on max vqs and queue size', () => {
    const shown = vdpaDevShow(target.name);
    assert.equal(shown.type, 'block');
    assert.equal(device.getVqsCount(), shown.max_vqs);
    assert.equal(device.getVringNum(), shown.max_vq_size);
  });

  it('offers backend features including IOTLB_MSG_V2 and acknowledges it on open', () => {
    const offered = device.getBackendFeatures();
    assert.ok((offered & bit(VhostBackendF.IOTLB_MSG_V2)) !== 0n);
    assert.ok((device.ackedBackendFeatures & bit(VhostBackendF.IOTLB_MSG_V2)) !== 0n);
    assert.equal(device.ackedBackendFeatures & ~offered, 0n);
  });

  it('walks the status transitions and refuses to clear bits without a reset', () => {
    device.reset();
    assert.equal(device.getStatus(), 0);
    device.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert.equal(device.getStatus(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
    device.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    assert.throws(() => device.setStatus(VIRTIO_CONFIG_S_ACKNOWLEDGE), {
      code: 'EINVAL',
      syscall: 'ioctl(VHOST_VDPA_SET_STATUS)',
      path: target.chardev,
    });
    device.reset();
    assert.equal(device.getStatus(), 0);
  });

  it('negotiates features: FEATURES_OK confirmed, and SET_FEATURES afterwards is EBUSY', () => {
    const offered = device.getFeatures();
    const { negotiated } = device.negotiate(bit(VirtioBlkF.BLK_SIZE) | bit(VirtioBlkF.FLUSH));
    assert.ok((negotiated & bit(VirtioF.VERSION_1)) !== 0n);
    assert.equal(negotiated & ~offered, 0n);
    assert.ok((device.getStatus() & VIRTIO_CONFIG_S_FEATURES_OK) !== 0);
    assert.throws(() => device.setFeatures(negotiated), {
      code: 'EBUSY',
      syscall: 'ioctl(VHOST_SET_FEATURES)',
    });
  });

  it('fails negotiation clearly when a required feature is missing', () => {
    assert.throws(() => device.negotiate(0n, bit(VirtioF.RING_PACKED)), {
      code: 'ERR_UNSUPPORTED',
      message: /lacks required/,
    });
  });

  it('reads config space and refuses reads beyond the config size with a typed error', () => {
    const size = device.getConfigSize();
    assert.ok(size >= 24, `config size ${size}`);
    assert.equal(device.getConfig(0, size).length, size);
    assert.throws(() => device.getConfig(0, size + 4), {
      code: 'ERR_OUT_OF_RANGE',
      message: /config space of/,
    });
    assert.throws(() => device.getConfig(size, 1), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('reports capacity and block size equal to what the kernel’s virtio-blk reports for the same device', async () => {
    const features = device.getFeatures();
    const config = decodeBlkConfig(device.getConfig(0, device.getConfigSize()), features);
    device.close();
    const kernel = await withKernelVirtioBlk(target, (disk) => ({
      sectors: BigInt(readFileSync(`/sys/block/${disk}/size`, 'utf8').trim()),
      logical: Number(readFileSync(`/sys/block/${disk}/queue/logical_block_size`, 'utf8').trim()),
    }));
    assert.equal(config.capacity, kernel.sectors);
    assert.equal(config.blkSize, kernel.logical);
    if (target.backingFile !== undefined)
      assert.equal(config.capacity * 512n, BigInt(statSync(target.backingFile).size));
    device = VhostVdpaDevice.open(target.chardev);
  });

  it('answers ENOBUFS for a vring index out of range, naming the queue', () => {
    const count = device.getVqsCount();
    assert.throws(() => device.getVringBase(count + 98), {
      code: 'ENOBUFS',
      message: new RegExp(`queue index ${count + 98}`),
    });
    assert.throws(() => device.setVringNum(count + 1, 64), { code: 'ENOBUFS' });
  });

  it('rejects a second open with EBUSY and names the device', () => {
    assert.throws(
      () => VhostVdpaDevice.open(target.chardev),
      (error: unknown) => {
        assert.ok(error instanceof VdpaError);
        assert.equal(error.code, 'EBUSY');
        assert.equal(error.path, target.chardev);
        assert.match(error.message, new RegExp(target.chardev));
        return true;
      },
    );
  });

  it('round-trips the vring base, before and after DRIVER_OK', () => {
    // VDUSE answers GET_VRING_BASE from its userspace daemon, which only learns
    // the base when the queue starts: so check after DRIVER_OK too, with real
    // (mapped, consistent) rings in place.
    const size = 64;
    const region = DmaRegion.allocate(4 * PAGE_SIZE);
    let mapping: IotlbMapping | undefined;
    try {
      device.negotiate(0n);
      mapping = device.map(region);
      const desc = mapping.iova;
      const avail = desc + BigInt(PAGE_SIZE);
      const used = avail + BigInt(PAGE_SIZE);
      // avail.idx = used.idx = 42: nothing pending for the device.
      region.view(PAGE_SIZE + 2, 2).writeUInt16LE(42, 0);
      region.view(2 * PAGE_SIZE + 2, 2).writeUInt16LE(42, 0);
      device.setVringNum(0, size);
      device.setVringAddr(0, { desc, avail, used });
      device.setVringBase(0, 42);
      if (target.mgmtdev !== 'vduse') assert.equal(device.getVringBase(0), 42);
      const kick = new EventFd();
      const call = new EventFd();
      try {
        device.setVringKick(0, kick.fd);
        device.setVringCall(0, call.fd);
        device.setVringEnable(0, true);
        device.setStatus(device.getStatus() | VIRTIO_CONFIG_S_DRIVER_OK);
        assert.equal(device.getVringBase(0), 42);
        assert.throws(
          () => device.setVringBase(0, 7),
          { code: 'EINVAL' },
          'not while running and not suspended',
        );
      } finally {
        device.reset();
        kick.close();
        call.close();
      }
    } finally {
      // A reset keeps vhost-vdpa's IOTLB: unmap before freeing.
      if (mapping !== undefined) device.unmap(mapping);
      region.free();
    }
  });

  it('keeps its IOTLB across a reset, as the kernel does, and resends it on request', () => {
    const region = DmaRegion.allocate(PAGE_SIZE);
    const mapping = device.map(region);
    try {
      device.reset();
      assert.ok(device.mappings.includes(mapping), 'still listed after the reset');
      // The kernel agrees: an UPDATE over the same range is refused (EEXIST), which a forgetful bookkeeping
      // would have sent.
      assert.throws(
        () =>
          device.writeIotlbMessages([
            {
              type: VHOST_IOTLB_UPDATE,
              asid: 0,
              iova: mapping.iova,
              size: mapping.size,
              uaddr: mapping.uaddr,
              perm: 3,
            },
          ]),
        (error: VdpaError) => error.syscall !== undefined,
      );
      device.resendMappings([mapping]); // INVALIDATE + UPDATE: accepted
      assert.ok(device.mappings.includes(mapping));
    } finally {
      device.unmap(mapping);
      region.free();
    }
  });

  it('reports the IOVA range', () => {
    const range = device.getIovaRange();
    assert.ok(range.last > range.first);
  });

  it('maps, invalidates and remaps DMA memory', () => {
    const region = DmaRegion.allocate(4 * PAGE_SIZE);
    try {
      const mapping = device.map(region, { iova: 0x100000n });
      assert.equal(mapping.iova, 0x100000n);
      assert.equal(mapping.size, BigInt(4 * PAGE_SIZE));
      device.unmap(mapping);
      const again = device.map(region, { iova: 0x100000n, access: 'ro' });
      const batch = device.mapBatch([
        { memory: region, offset: 0, size: PAGE_SIZE },
        { memory: region, offset: PAGE_SIZE, size: PAGE_SIZE, access: 'wo' },
      ]);
      assert.equal(device.mappings.length, 3);
      device.unmapBatch([again, ...batch]);
      assert.equal(device.mappings.length, 0);
    } finally {
      region.free();
    }
  });

  it('refuses an overlapping IOTLB mapping with the real reason (the kernel would only say EFAULT)', () => {
    const region = DmaRegion.allocate(2 * PAGE_SIZE);
    const mapping = device.map(region, { iova: 0x200000n });
    try {
      assert.throws(() => device.map(region, { iova: 0x200000n + BigInt(PAGE_SIZE) }), {
        code: 'ERR_IOVA_OVERLAP',
        message: /overlaps/,
      });
      // What the kernel itself says for the same mistake:
      assert.throws(
        () =>
          device.writeIotlbMessages([
            {
              type: VHOST_IOTLB_UPDATE,
              asid: 0,
              iova: 0x200000n,
              size: BigInt(PAGE_SIZE),
              uaddr: region.address,
              perm: 3,
            },
          ]),
        { code: 'EFAULT', syscall: 'write(IOTLB)' },
      );
    } finally {
      // Unmapped first: free() refuses memory a device still maps.
      device.unmap(mapping);
      region.free();
    }
  });

  it('refuses out-of-range, misaligned and anonymous memory with the real reason', () => {
    const region = DmaRegion.allocate(PAGE_SIZE);
    try {
      const { last } = device.getIovaRange();
      if (last < 0xffffffffffffffffn) {
        assert.throws(() => device.map(region, { iova: last + 1n }), { code: 'ERR_OUT_OF_RANGE' });
      }
      assert.throws(() => device.map(region, { iova: 2n ** 64n }), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => device.map(region, { iova: 0x300001n }), { code: 'ERR_MISALIGNED' });
      const buffer = Buffer.alloc(2 * PAGE_SIZE);
      assert.throws(() => device.map(buffer as unknown as DmaRegion), {
        code: 'ERR_NOT_DMA_MEMORY',
        message: /anonymous/,
      });
      const address = (native.addressOf(buffer) + BigInt(PAGE_SIZE) - 1n) & ~BigInt(PAGE_SIZE - 1);
      assert.throws(() => device.map({ uaddr: address, size: BigInt(PAGE_SIZE) }), {
        code: 'ERR_NOT_DMA_MEMORY',
        message: /private mapping|anonymous/,
      });
      assert.throws(() => device.map(region, { asid: 5 }), { code: /ERR_OUT_OF_RANGE|ERR_UNSUPPORTED/ });
    } finally {
      region.free();
    }
  });

  it('has no doorbell on the simulator/VDUSE (ENOTSUPP) and chooses the eventfd path', () => {
    assert.throws(() => device.mapDoorbell(0), { code: 'ENOTSUPP', errno: 524, syscall: 'mmap(doorbell)' });
    const caps = device.capabilities();
    assert.equal(caps.doorbell, false);
    assert.equal(caps.notification, 'eventfd');
    assert.equal(caps.doorbellError, 'ENOTSUPP');
  });

  it('suspends and resumes where offered, and says EOPNOTSUPP where not', () => {
    const caps = device.capabilities();
    device.negotiate(0n);
    device.setStatus(device.getStatus() | VIRTIO_CONFIG_S_DRIVER_OK);
    if (caps.suspend) {
      device.suspend();
      if (caps.resume) device.resume();
      assert.equal(target.mgmtdev === 'vduse', false, 'VDUSE was measured without SUSPEND');
    } else {
      assert.throws(() => device.suspend(), { code: 'EOPNOTSUPP', message: /does not support suspend/ });
      assert.throws(() => device.resume(), { code: 'EOPNOTSUPP' });
    }
    if (target.mgmtdev === 'vdpasim_blk') assert.equal(caps.suspend && caps.resume, true);
  });

  it('probes capabilities consistently with the ioctls', () => {
    const caps = device.capabilities();
    assert.equal(caps.iotlbMsgV2, true);
    assert.equal(caps.vqsCount, true);
    assert.equal(caps.groups, true);
    if (caps.vringSize) assert.equal(device.getVringSize(0), device.getVringNum());
    else assert.throws(() => device.getVringSize(0), { code: 'EOPNOTSUPP' });
    if (!caps.vringGroup) assert.throws(() => device.getVringGroup(0), { code: 'EOPNOTSUPP' });
  });

  it('wires kick, call and config eventfds', () => {
    const kick = new EventFd();
    const call = new EventFd();
    const config = new EventFd();
    try {
      device.setVringKick(0, kick.fd);
      device.setVringCall(0, call.fd);
      device.setVringErr(0, call.fd);
      device.setConfigCall(config.fd);
      device.setConfigCall(-1);
      device.setVringCall(0, -1);
    } finally {
      kick.close();
      call.close();
      config.close();
    }
  });

  it('throws a clear error on use after close', () => {
    device.close();
    assert.throws(() => device.getStatus(), {
      code: 'ERR_CLOSED',
      path: target.chardev,
      message: /is closed/,
    });
    device.close(); // idempotent
    device = VhostVdpaDevice.open(target.chardev);
  });

  it('releases the device when an unclosed object is garbage-collected', async () => {
    device.close();
    assert.ok(gc !== undefined, 'run with --expose-gc');
    (() => {
      VhostVdpaDevice.open(target.chardev); // dropped without close()
    })();
    device = await waitFor(
      'the collected handle to release the device',
      () => {
        gc();
        try {
          return VhostVdpaDevice.open(target.chardev);
        } catch (error) {
          if ((error as VdpaError).code === 'EBUSY') return undefined;
          throw error;
        }
      },
      5000,
    );
  });
});

forEachDevice('net', 'vhost-vdpa net device', (target) => {
  let device: VhostVdpaDevice;
  beforeEach(() => {
    device = VhostVdpaDevice.open(target.chardev);
  });
  afterEach(() => device.close());

  it('reports device id 1 and its control queue in its own group and address space', () => {
    assert.equal(device.deviceId, 1);
    assert.equal(device.getVqsCount(), vdpaDevShow(target.name).max_vqs);
    assert.equal(device.getGroupNum(), 2);
    assert.equal(device.getAsNum(), 2);
    assert.equal(device.getVringGroup(0), 0);
    assert.equal(device.getVringGroup(device.getVqsCount() - 1), 1);
  });

  it('attaches the control-queue group to ASID 1 and maps memory there', () => {
    device.setGroupAsid(1, 1);
    const region = DmaRegion.allocate(PAGE_SIZE);
    try {
      const a = device.map(region, { asid: 1, iova: 0x10000n });
      const b = device.map(region, { asid: 0, iova: 0x10000n }); // same IOVA, other address space
      device.unmapBatch([a, b]);
      assert.throws(() => device.setGroupAsid(1, 2), {
        code: 'EINVAL',
        syscall: 'ioctl(VHOST_VDPA_SET_GROUP_ASID)',
      });
    } finally {
      region.free();
    }
  });

  it('shows the negotiated features in `vdpa dev config show`', () => {
    const { negotiated } = device.negotiate(bit(5) | bit(16)); // MAC, STATUS
    const shown = JSON.parse(sh('vdpa', ['-j', 'dev', 'config', 'show', target.name])) as {
      config: Record<string, { negotiated_features?: string[] }>;
    };
    const names = shown.config[target.name].negotiated_features ?? [];
    assert.ok(names.includes('VERSION_1'), JSON.stringify(shown));
    assert.ok((negotiated & bit(5)) !== 0n && names.includes('MAC'));
  });
});

describe('lab', () => {
  it('provides the devices the suite expects', () => {
    const devices = testDevices();
    assert.ok(
      devices.some((d) => d.class === 'block'),
      'a block device',
    );
    if (process.env.VDPA_LAB !== undefined) {
      assert.deepEqual(devices.map((d) => d.name).sort(), ['blk0', 'net0', 'vduse-mq', 'vduse-ro', 'vduse0']);
    }
  });
});
