/** The virtio-net driver: see lib/net/net-device.ts and docs/net.md. */
export { NetDevice, NetDeviceOptions, NetQueueStats, NetStats, NetTransport } from './net-device';
export { parseMac, formatMac } from './mac';
export * from './protocol';
