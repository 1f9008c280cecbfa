// Ethernet frames with the userspace virtio-net driver. Run: npm run lab -- node examples/net.js [/dev/vhost-vdpa-2]
// vdpa_sim_net loops every transmitted frame back to its receive queue if it passes its MAC filter.
const { NetDevice, VdpaManager } = require('..');

async function main() {
  const nic = NetDevice.open(process.argv[2] ?? '/dev/vhost-vdpa-2'); // negotiates, fills the RX ring, starts
  console.log(
    `mac ${nic.mac}, mtu ${nic.mtu}, link ${nic.linkUp ? 'up' : 'down'}, cvq in ASID 1: ${nic.controlQueueIsolated}`,
  );
  await nic.setMac('52:54:aa:bb:cc:01'); // VIRTIO_NET_CTRL_MAC_ADDR_SET over the control queue

  const frame = Buffer.alloc(64);
  Buffer.from([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x01]).copy(frame, 0); // destination: us
  Buffer.from([0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x02]).copy(frame, 6); // source
  frame.writeUInt16BE(0x88b5, 12); // EtherType: local experimental
  frame.write('hello, vdpa', 14);

  const received = (async () => {
    for await (const f of nic.frames()) return f; // a copy; `break`/return ends the iterator
  })();
  await nic.send(frame); // the driver writes the virtio_net_hdr; resolves when the device took it
  console.log((await received).toString('latin1', 14, 25)); // 'hello, vdpa'

  const zeroCopy = nic.allocBuffer(4096); // DMA memory: frames sent from views of it are not copied
  frame.copy(zeroCopy);
  await nic.sendBatch([zeroCopy.subarray(0, 64), frame]); // one kick for the batch

  const manager = await VdpaManager.open(); // vendor counters need netlink (root)
  const stats = await nic.stats((q) => manager.getVendorStats('net0', q));
  console.log(
    `tx ${stats.tx.frames} frames, rx ${stats.rx.frames}, device rx overruns ${stats.vendor.rx['rx overruns']}`,
  );
  manager.close();
  await nic.close(); // resets the device, frees its memory, ends frames() iterators
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
