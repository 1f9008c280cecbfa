/**
 * Loads the C++ addon and describes its shape. The addon only performs system
 * calls; everything here is consumed by the typed layers above.
 * @internal
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ErrorCodes, VdpaError } from './errors';

/** An open vhost-vdpa character device (native/device.cc). */
export interface NativeDeviceHandle {
  /** -1 once close()/closeAsync() was called. */
  readonly fd: number;
  readonly path: string;
  /** Async ioctls and closes still running on the libuv thread pool. */
  readonly pending: number;
  ioctl(request: number, name: string, arg?: Uint8Array | null): number;
  /** The ioctl on the thread pool; `arg` is copied in, and back on success. */
  ioctlAsync(request: number, name: string, arg?: Uint8Array | null): Promise<number>;
  /** close(2) on the thread pool, after any async ioctl still running. */
  closeAsync(): Promise<void>;
  writeMessages(messages: Uint8Array, messageSize: number, name: string): number;
  mapDoorbell(queueIndex: number, pageSize: number): NativeDoorbell;
  close(): void;
}

/** A mapped notification page (native/device.cc). */
export interface NativeDoorbell {
  readonly mapped: boolean;
  notify16(value: number): void;
  notify32(value: number): void;
  unmap(): void;
}

/** memfd-backed shared memory (native/dma_memory.cc). */
export interface NativeDmaMemory {
  readonly buffer: ArrayBuffer;
  readonly address: bigint;
  readonly size: number;
  readonly fd: number;
  readonly freed: boolean;
  free(): void;
}

/** An eventfd with an optional uv_poll watcher (native/eventfd.cc). */
export interface NativeEventFd {
  readonly fd: number;
  signal(value?: number): void;
  read(): number;
  watch(callback: (count: number | undefined, error?: Error) => void): void;
  unwatch(): void;
  setRef(referenced: boolean): void;
  close(): void;
}

/** A /dev/vduse file: the control device or a device's message queue (native/vduse.cc). */
export interface NativeVduseFile {
  /** -1 once closed. */
  readonly fd: number;
  readonly path: string;
  ioctl(request: number, name: string, arg?: Uint8Array | null): number;
  /** Bytes read (one request), or 0 when none is queued (the file is nonblocking). */
  readMessage(buffer: Uint8Array): number;
  writeMessage(buffer: Uint8Array): void;
  /** callback(status) on the loop whenever the fd is readable or in error (status < 0). */
  watch(callback: (status: number) => void): void;
  unwatch(): void;
  setRef(referenced: boolean): void;
  close(): void;
}

/** A MAP_SHARED mapping of a file range, e.g. an IOTLB fd (native/vduse.cc). */
export interface NativeFileMapping {
  readonly buffer: ArrayBuffer;
  readonly mapped: boolean;
  /** Detaches `buffer` and unmaps now (otherwise: when both are collected). */
  unmap(): void;
}

/** The addon's exports. */
export interface NativeBinding {
  DeviceHandle: new (path: string) => NativeDeviceHandle;
  Doorbell: new () => NativeDoorbell;
  /** A new memfd of `size` bytes, or (one string argument) an existing memfd/hugetlbfs file mapped whole. */
  DmaMemory: {
    new (size: number, hugetlb: boolean, name: string): NativeDmaMemory;
    new (path: string): NativeDmaMemory;
  };
  EventFd: new () => NativeEventFd;
  VduseFile: new (path: string, nonblocking: boolean) => NativeVduseFile;
  FileMapping: new (fd: number, offset: number, length: number, access: number) => NativeFileMapping;
  /** close(2) of a descriptor the kernel handed over (VDUSE_IOTLB_GET_FD). */
  closeFd(fd: number): void;
  pageSize(): number;
  addressOf(view: ArrayBufferView): bigint;
  errnoName(errno: number): string;
  setErrorFactory(
    factory: (message: string, code: string, errno: number, syscall: string, path?: string) => Error,
  ): void;
  [other: string]: unknown;
}

/** This process's C library as node-gyp-build names it, with the glibc version when there is one. */
function libcOfProcess(): string {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  const header = report?.header;
  return header?.glibcVersionRuntime === undefined ? 'musl' : `glibc ${header.glibcVersionRuntime}`;
}

function listDir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

/** What the package directory offers, for the error message: `build/Release/x.node`, `prebuilds/t/y.node`. */
function availableBinaries(packageRoot: string): string[] {
  const built = listDir(path.join(packageRoot, 'build', 'Release'))
    .filter((f) => f.endsWith('.node'))
    .map((f) => `build/Release/${f}`);
  const prebuilt = listDir(path.join(packageRoot, 'prebuilds')).flatMap((tuple) =>
    listDir(path.join(packageRoot, 'prebuilds', tuple)).map((f) => `prebuilds/${tuple}/${f}`),
  );
  return [...built, ...prebuilt];
}

/**
 * Loads the addon from `packageRoot` the way node-gyp-build does: a source build (build/Release) first, then
 * the prebuilt binary for this platform, architecture and libc (prebuilds/linux-x64/vhost-vdpa.glibc.node).
 * Throws ERR_ADDON_LOAD naming what was tried, what this process is, and how to fix it.
 */
export function loadAddon(packageRoot: string): NativeBinding {
  let file: string | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };
    file = nodeGypBuild.path(packageRoot);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require(file) as NativeBinding;
  } catch (cause) {
    const found = availableBinaries(packageRoot);
    const reason = (cause instanceof Error ? cause.message : String(cause)).split('\n')[0] as string;
    throw new VdpaError(
      `vhost-vdpa: the native addon did not load. ` +
        (file === undefined
          ? `No binary matches this process (${process.platform}-${process.arch}, ${libcOfProcess()}, ` +
            `Node ${process.version}, Node-API ${process.versions.napi ?? '?'}): tried build/Release/*.node ` +
            `(a source build), then prebuilds/${process.platform}-${process.arch}/ in ${packageRoot}; ` +
            `the package has ${found.length > 0 ? found.join(', ') : 'neither'}. `
          : `${path.relative(packageRoot, file)} was found but failed to load: ${reason}. `) +
        'Fix: build it from source with `npm rebuild vhost-vdpa` (in a clone: `npm install`), which needs ' +
        'python3, make and a C++17 compiler (Debian/Ubuntu: apt-get install python3 make g++).',
      { code: ErrorCodes.ADDON_LOAD, cause },
    );
  }
}

/** The nearest directory above `dir` with a package.json: the package (dist/ is built into it), or the clone. */
function packageRootAbove(dir: string): string {
  for (let d = dir; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    if (path.dirname(d) === d) return path.dirname(dir);
  }
}

/** The loaded addon. Errors it throws are VdpaError instances. */
export const native: NativeBinding = loadAddon(packageRootAbove(__dirname));

native.setErrorFactory(
  (message, code, errno, syscall, path) =>
    new VdpaError(message, { code, errno, syscall, ...(path === undefined ? {} : { path }) }),
);

/** The system page size: the doorbell mmap stride and the minimum DMA alignment. */
export const PAGE_SIZE: number = native.pageSize();
