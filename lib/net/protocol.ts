/**
 * virtio-net wire constants (virtio 1.2 §5.1.6, include/uapi/linux/virtio_net.h)
 * that the driver uses, and the names the errors print.
 */

/** struct virtio_net_hdr_v1: with VIRTIO_F_VERSION_1 the header is always 12 bytes (num_buffers included). */
export const VIRTIO_NET_HDR_SIZE = 12;
/** Ethernet header: destination, source, EtherType. */
export const ETH_HLEN = 14;
/** MTU assumed when the device does not offer VIRTIO_NET_F_MTU. */
export const DEFAULT_MTU = 1500;
/** Smallest receive buffer (frame part) without MRG_RXBUF/GUEST_TSO (virtio 1.2 §5.1.6.3.1: 1526 bytes). */
export const MIN_RX_FRAME_BYTES = 1526;

/** Control queue: class and command bytes, and the one-byte ack. */
export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;

/** VIRTIO_NET_S_LINK_UP in the config space's status. */
export const VIRTIO_NET_S_LINK_UP = 1;

const COMMAND_NAMES: Record<string, string> = {
  '0.0': 'VIRTIO_NET_CTRL_RX_PROMISC',
  '0.1': 'VIRTIO_NET_CTRL_RX_ALLMULTI',
  '0.2': 'VIRTIO_NET_CTRL_RX_ALLUNI',
  '0.3': 'VIRTIO_NET_CTRL_RX_NOMULTI',
  '0.4': 'VIRTIO_NET_CTRL_RX_NOUNI',
  '0.5': 'VIRTIO_NET_CTRL_RX_NOBCAST',
  '1.0': 'VIRTIO_NET_CTRL_MAC_TABLE_SET',
  '1.1': 'VIRTIO_NET_CTRL_MAC_ADDR_SET',
  '2.0': 'VIRTIO_NET_CTRL_VLAN_ADD',
  '2.1': 'VIRTIO_NET_CTRL_VLAN_DEL',
  '3.0': 'VIRTIO_NET_CTRL_ANNOUNCE_ACK',
  '4.0': 'VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET',
};

/** `VIRTIO_NET_CTRL_MAC_ADDR_SET`, or `class 7 command 3` for one this table does not know. */
export function controlCommandName(cls: number, cmd: number): string {
  return COMMAND_NAMES[`${cls}.${cmd}`] ?? `control class ${cls} command ${cmd}`;
}

/** Bytes of a MAC address. */
export const MAC_BYTES = 6;
