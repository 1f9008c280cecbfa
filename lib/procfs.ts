/**
 * What /proc says about this process's memory: the mapping that holds an
 * address, and the memlock limit. Used to explain, before the kernel is
 * asked, why memory cannot be mapped for DMA.
 * @internal
 */
import { readFileSync } from 'node:fs';

/** One line of /proc/self/maps. */
export interface ProcMapping {
  start: bigint;
  end: bigint;
  perms: string;
  inode: number;
  pathname: string;
}

/** The mappings of this process (fresh read). */
export function readMappings(): ProcMapping[] {
  const text = readFileSync('/proc/self/maps', 'utf8');
  const mappings: ProcMapping[] = [];
  for (const line of text.split('\n')) {
    const match = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+\S+\s+(\d+)\s*(.*)$/.exec(line);
    if (match === null) continue;
    mappings.push({
      start: BigInt('0x' + match[1]),
      end: BigInt('0x' + match[2]),
      perms: match[3],
      inode: Number(match[4]),
      pathname: match[5],
    });
  }
  return mappings;
}

/**
 * Why [address, address+size) cannot be used for DMA by a VA-mode parent, or
 * undefined if it can: every byte must be in a shared, file-backed mapping
 * (memfd, hugetlbfs, shm, a file) that is readable and writable.
 */
export function whyNotDmaCapable(address: bigint, size: bigint): string | undefined {
  const mappings = readMappings();
  let cursor = address;
  const end = address + size;
  while (cursor < end) {
    const mapping = mappings.find((m) => m.start <= cursor && cursor < m.end);
    if (mapping === undefined) return `address 0x${cursor.toString(16)} is not mapped in this process`;
    const where = `0x${mapping.start.toString(16)}-0x${mapping.end.toString(16)} ${mapping.perms} ${mapping.pathname || '(anonymous)'}`;
    if (mapping.perms[3] !== 's') return `the memory is a private mapping (${where}), not MAP_SHARED`;
    if (mapping.pathname === '' || mapping.pathname.startsWith('[')) {
      return `the memory is anonymous (${where}), not backed by a file`;
    }
    cursor = mapping.end;
  }
  return undefined;
}

/** RLIMIT_MEMLOCK (soft) in bytes, or undefined when unlimited. */
export function memlockLimit(): bigint | undefined {
  const text = readFileSync('/proc/self/limits', 'utf8');
  const match = /^Max locked memory\s+(\S+)/m.exec(text);
  if (match === null || match[1] === 'unlimited') return undefined;
  return BigInt(match[1]);
}
