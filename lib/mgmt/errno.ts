/**
 * errno numbers ↔ names without the addon (the protocol layers are pure
 * TypeScript and are tested without it).
 * @module
 */
import { constants } from 'node:os';

const names = new Map<number, string>();
// Aliases share a number (ENOTSUP = EOPNOTSUPP, EWOULDBLOCK = EAGAIN, EDEADLOCK = EDEADLK): prefer the
// names the kernel sources use.
const PREFERRED = new Set(['EOPNOTSUPP', 'EAGAIN', 'EDEADLK']);
for (const [name, value] of Object.entries(constants.errno)) {
  if (!names.has(value) || PREFERRED.has(name)) names.set(value, name);
}

/** The symbolic name of an errno ('ENODEV'); 'ENOTSUPP' for the kernel-internal 524; 'E<n>' if unknown. */
export function errnoName(errno: number): string {
  if (errno === 524) return 'ENOTSUPP';
  return names.get(errno) ?? `E${errno}`;
}

/** The errno value of a name ('EPERM' → 1). */
export function errnoValue(name: keyof typeof constants.errno): number {
  return constants.errno[name];
}
