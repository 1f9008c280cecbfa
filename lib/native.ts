/**
 * Loads the C++ addon and describes its shape. The addon only performs system
 * calls; everything here is consumed by the typed layers above.
 * @internal
 */
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

/** The addon's exports. */
export interface NativeBinding {
  DeviceHandle: new (path: string) => NativeDeviceHandle;
  Doorbell: new () => NativeDoorbell;
  DmaMemory: new (size: number, hugetlb: boolean, name: string) => NativeDmaMemory;
  EventFd: new () => NativeEventFd;
  pageSize(): number;
  addressOf(view: ArrayBufferView): bigint;
  errnoName(errno: number): string;
  setErrorFactory(
    factory: (message: string, code: string, errno: number, syscall: string, path?: string) => Error,
  ): void;
  [other: string]: unknown;
}

function load(): NativeBinding {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const bindings = require('bindings') as (name: string) => NativeBinding;
    return bindings('vhost_vdpa');
  } catch (cause) {
    throw new VdpaError(
      'vhost-vdpa: the native addon is not built or failed to load. Run `npm install` (or `npx node-gyp rebuild`) ' +
        'in the package directory; it needs python3, make and a C++ compiler. Cause: ' +
        (cause instanceof Error ? cause.message : String(cause)),
      { code: ErrorCodes.ADDON_LOAD, cause },
    );
  }
}

/** The loaded addon. Errors it throws are VdpaError instances. */
export const native: NativeBinding = load();

native.setErrorFactory(
  (message, code, errno, syscall, path) =>
    new VdpaError(message, { code, errno, syscall, ...(path === undefined ? {} : { path }) }),
);

/** The system page size: the doorbell mmap stride and the minimum DMA alignment. */
export const PAGE_SIZE: number = native.pageSize();
