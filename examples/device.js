// The control plane: open, decode, negotiate, map memory. Run: npm run lab -- node examples/device.js
const { VhostVdpaDevice, DmaRegion, decodeFeatures } = require('..');

const dev = VhostVdpaDevice.open(process.argv[2] ?? '/dev/vhost-vdpa-0'); // SET_OWNER + backend features
console.log(dev.deviceId, decodeFeatures(dev.getFeatures(), dev.deviceId).join(' '));
const { negotiated } = dev.negotiate(0n); // reset → ACK → DRIVER → features → FEATURES_OK
const config = dev.getConfig(0, dev.getConfigSize()); // raw config space (decodeBlkConfig() types it)
const memory = DmaRegion.allocate(1 << 20); // memfd, MAP_SHARED: memory vDPA devices can see
const mapping = dev.map(memory, { access: 'rw' }); // IOTLB UPDATE at an allocated IOVA, validated first
console.log(
  `negotiated 0x${negotiated.toString(16)}, config ${config.length} bytes, mapped at 0x${mapping.iova.toString(16)}`,
);
dev.close(); // the kernel resets the device and drops its mappings
