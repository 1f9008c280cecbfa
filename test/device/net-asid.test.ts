/**
 * Control-queue isolation on vdpa_sim_net (2 groups, 2 address spaces): with
 * the control queue's group in ASID 1, a command whose buffer is mapped only
 * in ASID 0 is not acted on; the same command with its buffer in ASID 1 is.
 * Built from the device layer (rings, mappings, SET_GROUP_ASID) so the test
 * can place the buffer where NetDevice never would.
 */
import { strict as assert } from 'node:assert';
import {
  bits,
  DmaRegion,
  EventFd,
  QueueNotifier,
  SplitVirtqueue,
  splitRingLayout,
  attachVirtqueue,
  VhostVdpaDevice,
  VIRTIO_CONFIG_S_ACKNOWLEDGE,
  VIRTIO_CONFIG_S_DRIVER,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
  VirtioNetF,
} from '../../lib';
import { forEachDevice } from './helpers';

const CVQ = 2;
const PAGE = 4096;
/** Offsets in the ASID 1 region after the ring. */
const CMD_OFFSET = 0;
const ACK_OFFSET = 64;

forEachDevice('net', 'control queue isolation (ASID 1)', (device) => {
  /** Opens net0 with only the control queue set up, its group in ASID 1; `commandInAsid0` places the command there. */
  async function sendMacSet(
    mac: number[],
    commandInAsid0: boolean,
  ): Promise<{ completed: number; ack: number; mac: string }> {
    const dev = VhostVdpaDevice.open(device.chardev);
    const regions: DmaRegion[] = [];
    const call = new EventFd();
    let notifier: QueueNotifier | undefined;
    try {
      const wanted = bits(VirtioNetF.CTRL_VQ, VirtioNetF.CTRL_MAC_ADDR, VirtioNetF.MAC);
      dev.negotiate(wanted, wanted);
      const layout = splitRingLayout(16);
      const ringBytes = Math.ceil(layout.bytes / PAGE) * PAGE;
      const ring = DmaRegion.allocate(ringBytes + PAGE);
      const other = DmaRegion.allocate(PAGE);
      regions.push(ring, other);
      const [ringMap] = dev.mapBatch([{ memory: ring, asid: 1 }]);
      // Far from anything mapped in ASID 1, so the device cannot find it there by accident.
      const [otherMap] = dev.mapBatch([{ memory: other, asid: 0, iova: ringMap.iova + 0x1000000n }]);
      notifier = QueueNotifier.create(dev, CVQ, false);
      const kick = notifier;
      const vq = new SplitVirtqueue<string>({
        index: CVQ,
        size: 16,
        memory: ring.buffer,
        byteOffset: 0,
        iova: Number(ringMap.iova),
        notify: () => kick.notify(),
      });
      attachVirtqueue(dev, vq, notifier.kick.fd, call.fd);
      dev.setGroupAsid(dev.getVringGroup(CVQ), 1);
      dev.setStatus(
        VIRTIO_CONFIG_S_ACKNOWLEDGE |
          VIRTIO_CONFIG_S_DRIVER |
          VIRTIO_CONFIG_S_FEATURES_OK |
          VIRTIO_CONFIG_S_DRIVER_OK,
      );
      const command = commandInAsid0 ? other.bytes : ring.bytes.subarray(ringBytes);
      const commandIova = commandInAsid0 ? Number(otherMap.iova) : Number(ringMap.iova) + ringBytes;
      command.set([1, 1, ...mac], CMD_OFFSET); // VIRTIO_NET_CTRL_MAC, MAC_ADDR_SET
      const ackBytes = ring.bytes.subarray(ringBytes);
      ackBytes[ACK_OFFSET] = 0xff;
      vq.begin(2);
      vq.push(commandIova + CMD_OFFSET, 8, false);
      vq.push(Number(ringMap.iova) + ringBytes + ACK_OFFSET, 1, true);
      vq.end('mac');
      vq.publish();
      let completed = 0;
      for (let waited = 0; completed === 0 && waited < 1000; waited += 10) {
        await new Promise((r) => setTimeout(r, 10));
        completed += vq.collect(() => undefined);
      }
      const config = dev.getConfig(0, 6);
      return {
        completed,
        ack: ackBytes[ACK_OFFSET],
        mac: [...config].map((b) => b.toString(16).padStart(2, '0')).join(':'),
      };
    } finally {
      dev.close();
      notifier?.close();
      call.close();
      for (const r of regions) r.free();
    }
  }

  it('a command in ASID 0 memory is not acted on; in ASID 1 it is', async () => {
    const hidden = await sendMacSet([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x31], true);
    assert.notEqual(hidden.mac, '52:54:aa:bb:cc:31', 'the device read a buffer it should not see');
    assert.ok(hidden.completed === 0 || hidden.ack !== 0, `completed ${hidden.completed}, ack ${hidden.ack}`);
    const visible = await sendMacSet([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x32], false);
    assert.deepEqual(visible, { completed: 1, ack: 0, mac: '52:54:aa:bb:cc:32' });
  });
});
