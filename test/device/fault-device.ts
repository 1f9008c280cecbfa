/**
 * Harness for the fault-injecting VDUSE block device (test/fault-device/faulty-blk.c, built into
 * build/faulty-blk by scripts/build-fault-device.mjs; see docs/hostile.md). Runs inside the lab VM.
 *
 * {@link startFaultyBlk} spawns the daemon, waits until it serves messages, creates the vdpa device with
 * iproute2's `vdpa` (a child process: `vdpa dev add/del` wait on the daemon, and must never block this event
 * loop — which the SIGKILL test measures), and waits for /dev/vhost-vdpa-N. `stop()` deletes the vdpa device,
 * then ends the daemon with SIGTERM (it destroys the VDUSE device itself); after the daemon was killed,
 * `faulty-blk --destroy NAME` removes the orphaned VDUSE device. Names are `fblk-<pid>-<n>`, which no lab
 * device uses; the vhost-vdpa minor is the lowest free one, above the lab's five.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where scripts/build-fault-device.mjs puts the daemon (dist-test/test/device → the project root). */
export const FAULTY_BLK = resolve(__dirname, '..', '..', '..', 'build', 'faulty-blk');

/** Options for {@link startFaultyBlk}. */
export interface FaultyBlkOptions {
  /** Fault specs, e.g. `['bad-id@5', 'ioerr-every:3']` (see docs/hostile.md). */
  faults?: string[];
  /** Disk size in bytes (default 16 MiB). */
  sizeBytes?: number;
  /** Request queues (default 1; more offers VIRTIO_BLK_F_MQ). */
  queues?: number;
  /** Largest queue size the device accepts (default 256). */
  queueSize?: number;
  /** /sys/class/vduse/NAME/msg_timeout in seconds (kernel default 30; 0 waits forever). */
  msgTimeoutSec?: number;
  /** Initial content: zeros (default) or `'sectors'`, see {@link sectorPattern}. */
  fill?: 'zero' | 'sectors';
}

/**
 * What the device holds at [offset, offset + length) when started with `fill: 'sectors'` (and not written
 * since): every 8 bytes of sector S are S, little-endian. Any two ranges differ, so data returned for the
 * wrong request is recognised.
 */
export function sectorPattern(offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += 8) out.writeBigUInt64LE(BigInt(Math.floor((offset + i) / 512)), i);
  return out;
}

/** A running fault device. */
export interface FaultyBlk {
  /** vdpa (and VDUSE) device name. */
  readonly name: string;
  /** /dev/vhost-vdpa-N of the vdpa device. */
  readonly chardev: string;
  /** The daemon's pid. */
  readonly pid: number;
  /** Everything the daemon printed on stderr so far (what it did: faults applied, resets, …). */
  log(): string;
  /** Resolves when the daemon's log matches `pattern` (or rejects after `timeoutMs` with the log). */
  waitForLog(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends a signal to the daemon. */
  kill(signal: NodeJS.Signals): void;
  /** Whether the daemon has exited. */
  readonly exited: boolean;
  /**
   * Deletes the vdpa device and ends the daemon (or removes the VDUSE device a killed daemon left).
   * Close every driver on the char device first: the kernel waits for its holders. Idempotent.
   */
  stop(): Promise<void>;
}

let started = 0;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function charDevOf(name: string): string | undefined {
  const dir = `/sys/bus/vdpa/devices/${name}`;
  if (!existsSync(dir)) return undefined;
  const entry = readdirSync(dir).find((e) => e.startsWith('vhost-vdpa-'));
  return entry !== undefined && existsSync(`/dev/${entry}`) ? `/dev/${entry}` : undefined;
}

/** Whether one of this process's file descriptors is `path`. */
function heldByThisProcess(path: string): boolean {
  return readdirSync('/proc/self/fd').some((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path;
    } catch {
      return false; // closed meanwhile (readdir's own fd)
    }
  });
}

function exitPromise(child: ChildProcess): Promise<void> {
  return new Promise((r) => {
    if (child.exitCode !== null || child.signalCode !== null) r();
    else child.once('exit', () => r());
  });
}

/** Starts build/faulty-blk and puts a vdpa device on it (see the module comment). */
export async function startFaultyBlk(options: FaultyBlkOptions = {}): Promise<FaultyBlk> {
  if (!existsSync(FAULTY_BLK))
    throw new Error(`${FAULTY_BLK} is missing: run node scripts/build-fault-device.mjs (npm test builds it)`);
  const name = `fblk-${process.pid}-${++started}`;
  const tmp = mkdtempSync(join(tmpdir(), 'faulty-blk-'));
  const readyFile = join(tmp, 'ready');
  const args = ['--name', name, '--size', String(options.sizeBytes ?? 16 << 20), '--ready-file', readyFile];
  if (options.queues !== undefined) args.push('--queues', String(options.queues));
  if (options.queueSize !== undefined) args.push('--queue-size', String(options.queueSize));
  if (options.msgTimeoutSec !== undefined) args.push('--msg-timeout', String(options.msgTimeoutSec));
  if (options.fill !== undefined) args.push('--fill', options.fill);
  for (const fault of options.faults ?? []) args.push('--fault', fault);

  const child = spawn(FAULTY_BLK, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    log += chunk;
    if (process.env.VDPA_FAULT_VERBOSE) process.stderr.write(chunk);
  });
  const exited = exitPromise(child);
  let vdpaAdded = false;
  let stopped = false;
  let chardevPath: string | undefined;

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (vdpaAdded && existsSync(`/sys/bus/vdpa/devices/${name}`)) {
      // `vdpa dev del` waits, unkillably, for every holder of the char device: refuse rather than hang the suite.
      if (chardevPath !== undefined && heldByThisProcess(chardevPath)) {
        stopped = false;
        throw new Error(`stop(): ${chardevPath} is still open in this process: close the driver first`);
      }
      // With a dead daemon the kernel waits msg_timeout for the reset message, then marks the device broken.
      await run('vdpa', ['dev', 'del', name]).catch((error: Error) => {
        throw new Error(`vdpa dev del ${name} failed: ${error.message}\ndaemon log:\n${log}`);
      });
    }
    const killedBefore = child.exitCode !== null || child.signalCode !== null;
    if (!killedBefore) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    // A daemon that did not exit cleanly (killed, or it could not destroy) leaves /dev/vduse/NAME behind.
    if (existsSync(`/dev/vduse/${name}`)) await run(FAULTY_BLK, ['--destroy', name]);
    rmSync(tmp, { recursive: true, force: true });
  };

  try {
    for (let waited = 0; !existsSync(readyFile); waited += 20) {
      if (child.exitCode !== null || child.signalCode !== null || waited > 10000)
        throw new Error(`faulty-blk did not get ready (exit ${child.exitCode ?? child.signalCode}):\n${log}`);
      await sleep(20);
    }
    await run('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vduse']).catch((error: Error) => {
      throw new Error(
        `vdpa dev add name ${name} mgmtdev vduse failed: ${error.message}\ndaemon log:\n${log}`,
      );
    });
    vdpaAdded = true;
    let chardev: string | undefined;
    for (let waited = 0; (chardev = charDevOf(name)) === undefined; waited += 20) {
      if (waited > 5000) throw new Error(`no /dev/vhost-vdpa-N appeared for ${name}`);
      await sleep(20);
    }
    const device = chardev;
    chardevPath = device;
    return {
      name,
      chardev: device,
      pid: child.pid ?? -1,
      log: () => log,
      async waitForLog(pattern: RegExp, timeoutMs = 5000): Promise<string> {
        for (let waited = 0; !pattern.test(log); waited += 20) {
          if (waited > timeoutMs)
            throw new Error(`faulty-blk never logged ${String(pattern)}; its log:\n${log}`);
          await sleep(20);
        }
        return log;
      },
      kill: (signal) => {
        child.kill(signal);
      },
      get exited() {
        return child.exitCode !== null || child.signalCode !== null;
      },
      stop,
    };
  } catch (error) {
    await stop().catch(() => undefined);
    throw error;
  }
}
