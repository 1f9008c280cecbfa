/**
 * The storage behind a VDUSE block device: a RAM disk or a file. Reads and
 * writes go straight between the store and the driver's buffers (the chain's
 * views into mapped driver memory), without a copy in between: a RAM disk
 * copies synchronously, a file uses fs.readv/writev on the thread pool so the
 * device's event loop keeps answering VDUSE messages meanwhile.
 * @module
 */
import * as fs from 'node:fs';

import { ErrorCodes, VdpaError } from '../errors';

/** A block store: byte offsets, always inside [0, size). */
export interface BlockStore {
  /** Size in bytes. */
  readonly size: number;
  /** Human-readable origin, for logs. */
  readonly description: string;
  /** Fills `buffers` (in order) from `offset`. Synchronous stores return undefined. */
  read(offset: number, buffers: Buffer[]): Promise<void> | undefined;
  write(offset: number, buffers: Buffer[]): Promise<void> | undefined;
  flush(): Promise<void> | undefined;
  /** Deallocate: data afterwards is unspecified (old or zeros). */
  discard(offset: number, length: number): Promise<void> | undefined;
  writeZeroes(offset: number, length: number): Promise<void> | undefined;
  /** Grows (or shrinks) the store to `bytes` (a resize of the device). */
  resize(bytes: number): void;
  close(): void;
}

/**
 * Initial content of a RAM disk (and of the space a resize adds): `'zero'`, or `'sectors'` — every 8 bytes of
 * sector S hold S (a 64-bit little-endian integer), so any two ranges differ and data delivered to the wrong
 * request is recognised (faulty-blk's `--fill sectors`, for the hostile-device suite).
 */
export type RamFill = 'zero' | 'sectors';

/** Writes the `'sectors'` pattern into `data`, which holds the disk's bytes from `offset` (a multiple of 8). */
export function fillSectorNumbers(data: Buffer, offset: number): void {
  const word = Buffer.alloc(8);
  // One 8-byte word per sector, repeated by fill(): 16 Ki sectors for 8 MiB instead of 1 Mi word writes.
  for (let at = 0; at < data.length; ) {
    const sector = Math.floor((offset + at) / 512);
    const end = Math.min(data.length, (sector + 1) * 512 - offset);
    word.writeUInt32LE(sector % 0x100000000, 0);
    word.writeUInt32LE(Math.floor(sector / 0x100000000), 4);
    data.fill(word, at, end);
    at = end;
  }
}

/** A RAM disk; contents start zeroed, or as `fill` says. */
export class RamStore implements BlockStore {
  private data: Buffer;
  readonly description: string;

  constructor(
    size: number,
    private readonly fill: RamFill = 'zero',
  ) {
    this.data = Buffer.alloc(size);
    if (fill === 'sectors') fillSectorNumbers(this.data, 0);
    this.description = `RAM disk of ${size} bytes${fill === 'sectors' ? ', filled with sector numbers' : ''}`;
  }

  get size(): number {
    return this.data.length;
  }

  resize(bytes: number): void {
    const data = Buffer.alloc(bytes);
    this.data.copy(data, 0, 0, Math.min(bytes, this.data.length));
    if (this.fill === 'sectors' && bytes > this.data.length)
      fillSectorNumbers(data.subarray(this.data.length), this.data.length);
    this.data = data;
  }

  read(offset: number, buffers: Buffer[]): undefined {
    let at = offset;
    for (const b of buffers) {
      this.data.copy(b, 0, at, at + b.length);
      at += b.length;
    }
    return undefined;
  }

  write(offset: number, buffers: Buffer[]): undefined {
    let at = offset;
    for (const b of buffers) {
      b.copy(this.data, at);
      at += b.length;
    }
    return undefined;
  }

  flush(): undefined {
    return undefined;
  }

  discard(offset: number, length: number): undefined {
    this.data.fill(0, offset, offset + length);
    return undefined;
  }

  writeZeroes(offset: number, length: number): undefined {
    this.data.fill(0, offset, offset + length);
    return undefined;
  }

  close(): void {}
}

const ZEROES = Buffer.alloc(1 << 20);

/**
 * Calls fs.readv/writev until every byte moved (they may return short counts). One promise and one callback
 * per request in the usual case, where the first call moves everything.
 */
function transferAll(
  op: typeof fs.readv | typeof fs.writev,
  fd: number,
  buffers: Buffer[],
  position: number,
  what: string,
): Promise<void> {
  let left = 0;
  for (const b of buffers) left += b.length;
  if (left === 0) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    let rest = buffers;
    let at = position;
    const done = (error: Error | null, n: number): void => {
      if (error !== null) return reject(error);
      if (n === 0) return reject(new VdpaError(`${what} at ${at}: end of file`, { code: 'EIO' }));
      left -= n;
      if (left === 0) return resolve();
      at += n;
      rest = advance(rest, n);
      op(fd, rest, at, done);
    };
    op(fd, rest, at, done);
  });
}

/** transferAll on this thread (a file in memory); throws what the system call throws. */
function transferAllSync(
  op: typeof fs.readvSync | typeof fs.writevSync,
  fd: number,
  buffers: Buffer[],
  position: number,
  what: string,
): undefined {
  let left = 0;
  for (const b of buffers) left += b.length;
  let rest = buffers;
  let at = position;
  while (left > 0) {
    const n = op(fd, rest, at);
    if (n === 0) throw new VdpaError(`${what} at ${at}: end of file`, { code: 'EIO' });
    left -= n;
    at += n;
    if (left > 0) rest = advance(rest, n);
  }
  return undefined;
}

/** `buffers` without their first `n` bytes (a short readv/writev). */
function advance(buffers: Buffer[], n: number): Buffer[] {
  let i = 0;
  let skip = n;
  while (i < buffers.length && (buffers[i] as Buffer).length <= skip) skip -= (buffers[i++] as Buffer).length;
  const rest = buffers.slice(i);
  if (skip > 0 && rest.length > 0) rest[0] = (rest[0] as Buffer).subarray(skip);
  return rest;
}

/** statfs f_type of the file systems whose files live in memory: tmpfs (and /dev/shm), ramfs. */
const MEMORY_FILE_SYSTEMS = new Set([0x01021994, 0x858458f6]);

/** Whether the file at `path` lives in memory (tmpfs, ramfs): FileStore then transfers inline. */
export function onMemoryFileSystem(path: string): boolean {
  try {
    return MEMORY_FILE_SYSTEMS.has(fs.statfsSync(path).type);
  } catch {
    return false;
  }
}

/**
 * A file (regular file or block device) opened once; its size is the device's capacity.
 *
 * Reads and writes go to libuv's thread pool (the device's event loop keeps answering VDUSE messages while a
 * disk works), except for a file on tmpfs or ramfs: there every transfer is a memory copy that cannot wait for
 * a device, so it is done inline (readv/writev on the device's thread), which saves two thread switches per
 * request and lets one kick's requests complete together (one interrupt).
 */
export class FileStore implements BlockStore {
  readonly description: string;

  private constructor(
    private readonly fd: number,
    public size: number,
    private readonly path: string,
    private readonly readOnly: boolean,
    /** Transfers inline (a memory file system) instead of on the thread pool. */
    readonly inline: boolean,
  ) {
    this.description = `${path} (${size} bytes${inline ? ', in memory: inline I/O' : ''})`;
  }

  /** Grows the file (ftruncate); a read-only file keeps its size and the device reads beyond it as errors. */
  resize(bytes: number): void {
    if (!this.readOnly && bytes > this.size) fs.ftruncateSync(this.fd, bytes);
    this.size = this.readOnly ? Math.min(bytes, this.size) : bytes;
  }

  /**
   * Opens `path` (read-write unless `readOnly`), creating it with `createSize` bytes when it does not exist and a
   * size is given, or growing a smaller file to `createSize`.
   */
  static open(path: string, readOnly: boolean, createSize?: number): FileStore {
    const exists = fs.existsSync(path);
    if (!exists && createSize === undefined) {
      throw new VdpaError(`${path} does not exist; give a size to create it (--size 1G)`, { code: 'ENOENT' });
    }
    if (!exists && readOnly) {
      throw new VdpaError(`${path} does not exist, and a read-only device cannot create it`, {
        code: 'ENOENT',
      });
    }
    const fd = fs.openSync(path, readOnly ? 'r' : exists ? 'r+' : 'w+');
    try {
      let size = fs.fstatSync(fd).size;
      if (createSize !== undefined && size < createSize) {
        if (readOnly)
          throw new VdpaError(
            `${path} has ${size} bytes, fewer than --size ${createSize}, and is opened read-only`,
            {
              code: ErrorCodes.INVALID_ARG,
            },
          );
        fs.ftruncateSync(fd, createSize);
        size = createSize;
      }
      if (size < 512)
        throw new VdpaError(`${path} is smaller than one sector (512 bytes)`, {
          code: ErrorCodes.INVALID_ARG,
        });
      return new FileStore(fd, size - (size % 512), path, readOnly, onMemoryFileSystem(path));
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  read(offset: number, buffers: Buffer[]): Promise<void> | undefined {
    if (this.inline) return transferAllSync(fs.readvSync, this.fd, buffers, offset, `reading ${this.path}`);
    return transferAll(fs.readv, this.fd, buffers, offset, `reading ${this.path}`);
  }

  write(offset: number, buffers: Buffer[]): Promise<void> | undefined {
    if (this.inline) return transferAllSync(fs.writevSync, this.fd, buffers, offset, `writing ${this.path}`);
    return transferAll(fs.writev, this.fd, buffers, offset, `writing ${this.path}`);
  }

  flush(): Promise<void> {
    return new Promise((resolve, reject) =>
      fs.fdatasync(this.fd, (e) => (e === null ? resolve() : reject(e))),
    );
  }

  /** A hint only: the file keeps its data (reads after a discard may return old data; the spec allows it). */
  discard(): undefined {
    return undefined;
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    for (let at = offset; at < offset + length; at += ZEROES.length) {
      const n = Math.min(ZEROES.length, offset + length - at);
      await transferAll(fs.writev, this.fd, [ZEROES.subarray(0, n)], at, `zeroing ${this.path}`);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
