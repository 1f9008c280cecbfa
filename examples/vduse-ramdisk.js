// A virtio-blk RAM disk implemented in Node, used by this same process through vhost-vdpa.
// Run (root, vduse + vhost_vdpa loaded): npm run lab -- node examples/vduse-ramdisk.js
const { BlockDevice, VduseBlockDevice } = require('..');

async function main() {
  // The device runs in a Worker: vhost-vdpa calls below block this thread until it answers.
  const ramdisk = await VduseBlockDevice.start({ name: 'ram0', ramBytes: 64 << 20, attach: true });
  console.log(`${ramdisk.store} → ${ramdisk.chardev}`); // /dev/vduse/ram0 attached as /dev/vhost-vdpa-N

  const disk = BlockDevice.open(ramdisk.chardev); // the driver side, same process
  await disk.write(0, Buffer.from('hello from both sides of virtio'.padEnd(512)));
  console.log((await disk.read(0, 512)).toString().trim());
  console.log(await ramdisk.stats()); // { requests, reads, writes, errors, faults } as the device saw them

  await disk.close();
  await ramdisk.stop(); // deletes the vdpa device, destroys /dev/vduse/ram0
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
