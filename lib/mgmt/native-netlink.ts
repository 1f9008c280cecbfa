/**
 * The netlink socket of the addon (native/netlink.cc), typed, and the
 * transport interface the protocol layers are written against (so tests can
 * put a fake kernel behind it).
 * @module
 */
import { native } from '../native';
import { NETLINK_CAP_ACK, NETLINK_EXT_ACK, SOL_NETLINK } from './netlink';

/** native/netlink.cc's NetlinkSocket. */
export interface NativeNetlinkSocket {
  readonly fd: number;
  readonly portId: number;
  setOption(level: number, name: number, value: number): void;
  send(message: Uint8Array): number;
  /** send() on the libuv thread pool. */
  sendAsync(message: Uint8Array): Promise<number>;
  receive(): [Buffer[], number[]];
  watch(callback: (error: Error | undefined, datagrams: Buffer[], senders: number[]) => void): void;
  unwatch(): void;
  setRef(referenced: boolean): void;
  close(): void;
}

/** A datagram transport to the kernel, as the netlink client needs it. */
export interface NetlinkTransport {
  /** The port id the kernel addresses replies to. */
  readonly portId: number;
  /** Sends one request datagram (synchronously; the kernel handles it during the call). */
  send(datagram: Buffer): void;
  /**
   * Sends one request datagram from the libuv thread pool, for requests whose
   * kernel handler may sleep (DEV_DEL waits for the char device to be closed):
   * the event loop keeps running meanwhile. Optional: without it such
   * requests are sent with {@link send}.
   */
  sendAsync?(datagram: Buffer): Promise<void>;
  /** Starts delivering received datagrams; `senders[i]` is 0 for the kernel. */
  listen(onDatagrams: (error: Error | undefined, datagrams: Buffer[], senders: number[]) => void): void;
  /** Whether a listening transport keeps the process alive. */
  setRef(referenced: boolean): void;
  close(): void;
}

const NetlinkSocketClass = native.NetlinkSocket as new (protocol: number) => NativeNetlinkSocket;

/**
 * Opens a netlink socket of `protocol` in the addon with extended ACKs
 * (the kernel's error strings) and capped ACKs (errors do not echo the whole
 * request) turned on.
 */
export function openNativeTransport(protocol: number): NetlinkTransport {
  const socket = new NetlinkSocketClass(protocol);
  try {
    socket.setOption(SOL_NETLINK, NETLINK_EXT_ACK, 1);
    socket.setOption(SOL_NETLINK, NETLINK_CAP_ACK, 1);
  } catch (error) {
    socket.close();
    throw error;
  }
  return {
    portId: socket.portId,
    send: (datagram) => {
      socket.send(datagram);
    },
    sendAsync: async (datagram) => {
      await socket.sendAsync(datagram);
    },
    listen: (onDatagrams) => socket.watch(onDatagrams),
    setRef: (referenced) => socket.setRef(referenced),
    close: () => socket.close(),
  };
}
