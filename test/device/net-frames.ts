/**
 * The frames the net suites send: frame `seq` has a size (60 … max) and a
 * payload computed from `seq` alone (xorshift32), so a receiver recomputes it
 * to check a frame byte for byte. bench/c-baseline/af-packet-net.c builds the
 * same frames, so the kernel cross-check compares like with like.
 */

/** Source MAC of every test frame (no zero byte: vdpa_sim_net's filter compares with strncmp). */
export const TEST_SOURCE = [0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x99];
/** IEEE 802 local experimental EtherType. */
export const TEST_ETHERTYPE = 0x88b5;
export const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

export function macBytes(mac: string): number[] {
  return mac.split(':').map((b) => parseInt(b, 16));
}

/** Frame `seq` to `dst`: [dst | source | 0x88b5 | seq (u32 BE) | payload], 60 … `maxFrame` bytes. */
export function frameOf(seq: number, dst: number[], maxFrame: number): Buffer {
  let x = (seq * 2654435761 + 1) >>> 0 || 1;
  const next = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  const size = 60 + (next() % (maxFrame - 60 + 1));
  const frame = Buffer.allocUnsafe(size);
  frame.set(dst, 0);
  frame.set(TEST_SOURCE, 6);
  frame.writeUInt16BE(TEST_ETHERTYPE, 12);
  frame.writeUInt32BE(seq, 14);
  for (let i = 18; i < size; i++) frame[i] = next() & 0xff;
  return frame;
}
