/**
 * Control-plane checks, for any device class: the uAPI answers sanely, the
 * device negotiates and resets, its config space decodes and agrees with
 * what the kernel reports over netlink, suspend/resume keeps ring state, and
 * the doorbell where there is one.
 */
import type { VhostVdpaDevice } from '../device';
import { ErrorCodes, VdpaError } from '../errors';
import { bit, hasBit, VhostBackendF, VirtioBlkF, VirtioF, VirtioNetF } from '../features';
import { VdpaManager } from '../mgmt';
import {
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VIRTIO_ID_BLOCK,
  VIRTIO_ID_NET,
} from '../uapi';
import { decodeBlkConfig, decodeNetConfig } from '../virtio-config';
import { DmaSpace } from '../virtio/dma-space';
import { attachQueues, closeQueues, createQueues } from '../virtio/queues';
import type { Check, CheckContext } from './run';

type DeviceContext = CheckContext & { device: VhostVdpaDevice };

function fail(message: string): never {
  throw new VdpaError(message, { code: ErrorCodes.CHECK_FAILED });
}

/** Smallest config space per class: blk capacity (8 bytes); net MAC (6) with VIRTIO_NET_F_MAC. */
const MIN_CONFIG: Record<number, number> = { [VIRTIO_ID_BLOCK]: 8, [VIRTIO_ID_NET]: 6 };

function unsupported(error: unknown): boolean {
  const code = (error as { code?: string }).code;
  return code === 'ENOTTY' || code === 'EOPNOTSUPP' || code === 'ENOTSUPP';
}

export const deviceChecks: Check<DeviceContext>[] = [
  {
    id: 'uapi.device-id',
    group: 'uapi',
    title: 'device id is a virtio class (net 1, block 2)',
    run: ({ device }) => {
      const id = device.deviceId;
      if (id !== VIRTIO_ID_NET && id !== VIRTIO_ID_BLOCK) {
        return { skip: `device id ${id}: class checks exist for net and block only` };
      }
    },
  },
  {
    id: 'uapi.features.version1',
    group: 'uapi',
    title: 'offers VIRTIO_F_VERSION_1',
    run: ({ device }) => {
      if (!hasBit(device.getFeatures(), VirtioF.VERSION_1))
        fail('VIRTIO_F_VERSION_1 not offered: vhost-vdpa is a virtio 1.x transport');
    },
  },
  {
    id: 'uapi.features.access-platform',
    group: 'uapi',
    title: 'offers VIRTIO_F_ACCESS_PLATFORM',
    run: ({ device }) => {
      if (!hasBit(device.getFeatures(), VirtioF.ACCESS_PLATFORM)) {
        fail('VIRTIO_F_ACCESS_PLATFORM not offered: the device would bypass the IOTLB');
      }
    },
  },
  {
    id: 'uapi.config-size',
    group: 'uapi',
    title: 'config space is large enough for the device class',
    run: ({ device }) => {
      const size = device.getConfigSize();
      const min = MIN_CONFIG[device.deviceId] ?? 0;
      if (size < min)
        fail(
          `config space of ${size} bytes; a ${device.deviceId === VIRTIO_ID_BLOCK ? 'block' : 'net'} device needs ≥ ${min}`,
        );
      return { numbers: { bytes: size } };
    },
  },
  {
    id: 'uapi.iova-range',
    group: 'uapi',
    title: 'IOVA range is non-empty and holds at least 1 MiB',
    run: ({ device }) => {
      const { first, last } = device.getIovaRange();
      if (last <= first) fail(`empty IOVA range [0x${first.toString(16)}, 0x${last.toString(16)}]`);
      if (last - first + 1n < 1n << 20n)
        fail(`IOVA range of ${last - first + 1n} bytes is too small for rings and buffers`);
    },
  },
  {
    id: 'uapi.vqs',
    group: 'uapi',
    title: 'virtqueue count and size are usable',
    run: ({ device }) => {
      const size = device.getVringNum();
      if (size < 2 || size > 32768) fail(`VHOST_VDPA_GET_VRING_NUM says ${size}`);
      let count: number | undefined;
      try {
        count = device.getVqsCount();
      } catch (error) {
        if (!unsupported(error)) throw error;
      }
      const features = device.getFeatures();
      const needed =
        device.deviceId === VIRTIO_ID_NET ? 2 + (hasBit(features, VirtioNetF.CTRL_VQ) ? 1 : 0) : 1;
      if (count !== undefined && count < needed)
        fail(`${count} virtqueue(s); the device class needs ${needed}`);
      return { numbers: { maxSize: size, ...(count === undefined ? {} : { count }) } };
    },
  },
  {
    id: 'uapi.backend-features',
    group: 'uapi',
    title: 'backend offers IOTLB_MSG_V2 and IOTLB_BATCH',
    run: ({ device }) => {
      const offered = device.getBackendFeatures();
      const missing = [
        hasBit(offered, VhostBackendF.IOTLB_MSG_V2) ? '' : 'IOTLB_MSG_V2',
        hasBit(offered, VhostBackendF.IOTLB_BATCH) ? '' : 'IOTLB_BATCH',
      ].filter((s) => s !== '');
      if (missing.length > 0) fail(`backend features 0x${offered.toString(16)} lack ${missing.join(', ')}`);
    },
  },
  {
    id: 'uapi.groups-asid',
    group: 'uapi',
    title: 'virtqueue groups and address spaces are consistent',
    run: ({ device }) => {
      let groups: number;
      let spaces: number;
      try {
        groups = device.getGroupNum();
        spaces = device.getAsNum();
      } catch (error) {
        if (unsupported(error))
          return { skip: 'VHOST_VDPA_GET_GROUP_NUM/GET_AS_NUM not supported by this kernel' };
        throw error;
      }
      if (groups < 1 || spaces < 1) fail(`${groups} group(s), ${spaces} address space(s)`);
      let count = 1;
      try {
        count = device.getVqsCount();
      } catch (error) {
        if (!unsupported(error)) throw error;
      }
      for (let i = 0; i < count; i++) {
        let group: number;
        try {
          group = device.getVringGroup(i);
        } catch (error) {
          // Parents without get_vq_group (VDUSE in 6.12) have one group: every queue is in it.
          if (unsupported(error) && groups === 1) break;
          throw error;
        }
        if (group >= groups) fail(`virtqueue ${i} is in group ${group}, but the device has ${groups}`);
      }
      return { numbers: { groups, addressSpaces: spaces } };
    },
  },
  {
    id: 'negotiation.features-ok',
    group: 'negotiation',
    title: 'accepts the offered features (FEATURES_OK) and resets to status 0',
    run: ({ device }) => {
      const offered = device.getFeatures();
      // Everything offered except what a driver must understand to accept it (packed rings, notification data).
      const { negotiated } = device.negotiate(
        offered & ~(bit(VirtioF.RING_PACKED) | bit(VirtioF.NOTIFICATION_DATA)),
      );
      if ((device.getStatus() & VIRTIO_CONFIG_S_FEATURES_OK) === 0) fail('FEATURES_OK not kept');
      device.reset();
      const status = device.getStatus();
      if (status !== 0) fail(`status 0x${status.toString(16)} after reset, expected 0`);
      return { numbers: { negotiatedFeatures: Number(negotiated & 0xffffffffn) } };
    },
  },
  {
    id: 'config.decode',
    group: 'config',
    title: 'config space decodes, and reads the same twice',
    run: ({ device }) => {
      const { negotiated } = device.negotiate(device.getFeatures() & ~bit(VirtioF.RING_PACKED));
      const size = device.getConfigSize();
      const a = device.getConfig(0, size);
      const b = device.getConfig(0, size);
      if (!a.equals(b)) fail("two reads of an idle device's config space differ");
      if (device.deviceId === VIRTIO_ID_BLOCK) {
        const c = decodeBlkConfig(a, negotiated);
        if (c.capacity === 0n) fail('capacity 0');
        if (
          hasBit(negotiated, VirtioBlkF.BLK_SIZE) &&
          c.blkSize !== undefined &&
          (c.blkSize < 512 || (c.blkSize & (c.blkSize - 1)) !== 0)
        ) {
          fail(`blk_size ${c.blkSize} is not a power of two ≥ 512`);
        }
        return { numbers: { capacitySectors: Number(c.capacity) } };
      }
      if (device.deviceId === VIRTIO_ID_NET) {
        const c = decodeNetConfig(a, negotiated);
        if (hasBit(negotiated, VirtioNetF.MTU) && (c.mtu ?? 0) < 68) fail(`MTU ${c.mtu} below 68`);
        if (hasBit(negotiated, VirtioNetF.MAC) && c.mac === undefined) fail('VIRTIO_NET_F_MAC but no MAC');
      }
      device.reset();
    },
  },
  {
    id: 'config.netlink',
    group: 'config',
    title: 'config space agrees with the kernel’s netlink view (vdpa dev config show)',
    run: async ({ device, name }) => {
      if (name === undefined)
        return {
          skip: 'the device has no vdpa bus entry in sysfs (not a vhost-vdpa char device of a vdpa device?)',
        };
      const { negotiated } = device.negotiate(device.getFeatures() & ~bit(VirtioF.RING_PACKED));
      const bytes = device.getConfig(0, device.getConfigSize());
      const manager = await VdpaManager.open();
      try {
        const kernel = await manager.getConfig(name);
        if (kernel.deviceId !== device.deviceId)
          fail(`netlink says device id ${kernel.deviceId}, the device ${device.deviceId}`);
        if (device.deviceId === VIRTIO_ID_NET && kernel.net !== undefined) {
          const ours = decodeNetConfig(bytes, negotiated);
          if (kernel.net.mac !== undefined && ours.mac !== undefined && kernel.net.mac !== ours.mac) {
            fail(`MAC: netlink ${kernel.net.mac}, config space ${ours.mac}`);
          }
          if (kernel.net.mtu !== undefined && ours.mtu !== undefined && kernel.net.mtu !== ours.mtu) {
            fail(`MTU: netlink ${kernel.net.mtu}, config space ${ours.mtu}`);
          }
        }
        if (device.deviceId === VIRTIO_ID_BLOCK && kernel.blk?.capacity !== undefined) {
          const ours = decodeBlkConfig(bytes, negotiated);
          if (kernel.blk.capacity !== ours.capacity)
            fail(`capacity: netlink ${kernel.blk.capacity}, config space ${ours.capacity}`);
        }
        if (kernel.negotiatedFeatures !== undefined && kernel.negotiatedFeatures !== negotiated) {
          fail(
            `negotiated features: netlink 0x${kernel.negotiatedFeatures.toString(16)}, ours 0x${negotiated.toString(16)}`,
          );
        }
      } finally {
        manager.close();
        device.reset();
      }
    },
  },
  {
    id: 'suspend.vring-base',
    group: 'suspend',
    title: 'suspends a running device, keeps each ring’s base, and resumes',
    run: ({ device }) => {
      const offered = device.getBackendFeatures();
      if (
        !hasBit(offered, VhostBackendF.SUSPEND) ||
        !hasBit(device.ackedBackendFeatures, VhostBackendF.SUSPEND)
      ) {
        return { skip: 'the backend does not offer VHOST_BACKEND_F_SUSPEND' };
      }
      const { negotiated } = device.negotiate(device.getFeatures() & ~bit(VirtioF.RING_PACKED));
      const count = device.deviceId === VIRTIO_ID_NET ? 2 : 1;
      const dma = new DmaSpace(device);
      const queues = createQueues(device, dma, {
        count,
        size: Math.min(64, device.getVringNum()),
        format: 'split',
        indirectEntries: 0,
        eventIdx: hasBit(negotiated, VirtioF.RING_EVENT_IDX),
        slotSize: 16,
        doorbell: false,
        name: 'vhost-vdpa-check',
      });
      try {
        attachQueues(device, queues);
        device.setStatus(device.getStatus() | VIRTIO_CONFIG_S_DRIVER_OK);
        device.suspend();
        for (let i = 0; i < count; i++) {
          const base = device.getVringBase(i);
          if (base !== 0)
            fail(
              `queue ${i}: GET_VRING_BASE ${base} after suspend of a ring with nothing submitted, expected 0`,
            );
        }
        if (
          hasBit(offered, VhostBackendF.RESUME) &&
          hasBit(device.ackedBackendFeatures, VhostBackendF.RESUME)
        )
          device.resume();
      } finally {
        device.reset();
        closeQueues(queues);
        dma.release();
      }
    },
  },
  {
    id: 'doorbell.map',
    group: 'doorbell',
    title: 'maps queue 0’s doorbell page',
    run: ({ device }) => {
      try {
        device.mapDoorbell(0).unmap();
      } catch (error) {
        if (unsupported(error))
          return { skip: 'the parent has no notification area (VHOST_VDPA mmap: ENOTSUPP)' };
        throw error;
      }
    },
  },
];
