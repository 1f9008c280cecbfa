// Block I/O with the userspace virtio-blk driver. Run: npm run lab -- node examples/blk.js [/dev/vhost-vdpa-N]
const { BlockDevice } = require('..');

async function main() {
  const disk = BlockDevice.open(process.argv[2] ?? '/dev/vhost-vdpa-0'); // negotiates, maps memory, starts queues
  console.log(`${disk.capacity} bytes, ${disk.logicalBlockSize}-byte blocks, id "${await disk.getId()}"`);

  await disk.write(0, Buffer.alloc(4096, 'a')); // any Buffer: copied through a mapped bounce pool
  const back = await disk.read(0, 4096); // → a new Buffer
  console.log(back.toString('latin1', 0, 4)); // 'aaaa'

  const buf = disk.allocBuffer(65536); // DMA memory: zero-copy
  await Promise.all([disk.readInto(1 << 20, buf), disk.writeZeroes(2 << 20, 65536, { unmap: false })]);
  await disk.flush();
  await disk.close(); // drains, resets the device, frees its memory
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
