/**
 * Harness for the hostile-device suite's devices (see docs/hostile.md), with one interface, {@link FaultyBlk}, and
 * two backends that misbehave alike:
 *
 * - {@link startFaultyBlk}: the C fault daemon (test/fault-device/faulty-blk.c, built into build/faulty-blk by
 *   scripts/build-fault-device.mjs); names `fblk-<pid>-<n>`.
 * - {@link startVduseBlk}: our own TypeScript device, `vhost-vdpa vduse blk --ram … --no-attach --json` (the CLI,
 *   dist/cli/main.js) as a child process — never in the driver's process, so SIGKILL kills only the device;
 *   names `vblk-<pid>-<n>`.
 *
 * Each runs inside the lab VM. The harness spawns the daemon, waits until it serves messages, sets msg_timeout,
 * creates the vdpa device with iproute2's `vdpa` (a child process: `vdpa dev add/del` wait on the daemon, and must
 * never block this event loop — which the SIGKILL test measures), and waits for /dev/vhost-vdpa-N. `stop()`
 * deletes the vdpa device, then ends the daemon with SIGTERM (it destroys the VDUSE device itself); after the
 * daemon was killed, the orphaned VDUSE device is destroyed (`faulty-blk --destroy NAME`, or VDUSE_DESTROY_DEV
 * from this process for ours). The vhost-vdpa minor is the lowest free one, above the lab's five.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

import { VduseControl } from '../../lib/vduse/control';

const run = promisify(execFile);

/** Where scripts/build-fault-device.mjs puts the daemon (dist-test/test/device → the project root). */
export const FAULTY_BLK = resolve(__dirname, '..', '..', '..', 'build', 'faulty-blk');

/** Our CLI, compiled (dist-test/test/device → the project root). */
export const VHOST_VDPA_CLI = resolve(__dirname, '..', '..', '..', 'dist', 'cli', 'main.js');

/** Options for {@link startFaultyBlk}. */
export interface FaultyBlkOptions {
  /** Fault specs, e.g. `['bad-id@5', 'ioerr-every:3']` (see docs/hostile.md; both backends take the same). */
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

/** A running fault device (either backend). */
export interface FaultyBlk {
  /** vdpa (and VDUSE) device name. */
  readonly name: string;
  /** /dev/vhost-vdpa-N of the vdpa device. */
  readonly chardev: string;
  /** The daemon's pid. */
  readonly pid: number;
  /**
   * Everything the daemon printed on stderr so far (what it did: faults applied, resets, …). Both backends print
   * the same lines for faults (`request N queue Q: KIND: …`), resizes and DRIVER_OK; each adds its own prefix.
   */
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

/** How one backend starts its daemon, knows it is ready, and removes what a killed daemon left. */
interface Backend {
  /** For messages: "faulty-blk" or "vhost-vdpa vduse blk". */
  label: string;
  name: string;
  command: string;
  args: string[];
  /** Whether the daemon serves messages yet, from what it printed so far. */
  ready(stdout: string): boolean;
  /** Destroys the VDUSE device a daemon that did not exit cleanly left behind. */
  destroyOrphan(): Promise<void>;
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
  try {
    return await startDaemon({
      label: 'faulty-blk',
      name,
      command: FAULTY_BLK,
      args,
      ready: () => existsSync(readyFile),
      destroyOrphan: async () => void (await run(FAULTY_BLK, ['--destroy', name])),
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true }); // the ready file is read only while starting
  }
}

/**
 * Starts our own device, `vhost-vdpa vduse blk` (a RAM disk; faults as `--fault`), in a child process and puts a
 * vdpa device on it — the same lifecycle as {@link startFaultyBlk}. msg_timeout is written by the harness
 * between the device's creation and `vdpa dev add`, as faulty-blk does it itself.
 */
export async function startVduseBlk(options: FaultyBlkOptions = {}): Promise<FaultyBlk> {
  if (!existsSync(VHOST_VDPA_CLI)) throw new Error(`${VHOST_VDPA_CLI} is missing: compile first (npx tsc)`);
  const name = `vblk-${process.pid}-${++started}`;
  const args = [
    VHOST_VDPA_CLI,
    'vduse',
    'blk',
    '--name',
    name,
    '--ram',
    String(options.sizeBytes ?? 16 << 20),
  ];
  args.push('--no-attach', '--json');
  if (options.queues !== undefined) args.push('--queues', String(options.queues));
  if (options.queueSize !== undefined) args.push('--queue-size', String(options.queueSize));
  if (options.fill !== undefined) args.push('--fill', options.fill);
  for (const fault of options.faults ?? []) args.push('--fault', fault);
  const fault = await startDaemon({
    label: 'vhost-vdpa vduse blk',
    name,
    command: process.execPath,
    args,
    // The CLI prints its JSON summary once the worker serves the device (and its signal handlers are in).
    ready: (stdout) => {
      try {
        JSON.parse(stdout); // one (pretty-printed) JSON object: complete once it parses
        return true;
      } catch {
        return false;
      }
    },
    destroyOrphan: async () => {
      const control = VduseControl.open();
      try {
        control.destroy(name);
      } finally {
        control.close();
      }
    },
    ...(options.msgTimeoutSec === undefined ? {} : { msgTimeoutSec: options.msgTimeoutSec }),
  });
  return fault;
}

/** Spawns a backend's daemon, waits until it is ready, attaches the vdpa device (see the module comment). */
async function startDaemon(backend: Backend & { msgTimeoutSec?: number }): Promise<FaultyBlk> {
  const { name, label } = backend;
  const child = spawn(backend.command, backend.args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  let stdout = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
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
        throw new Error(`vdpa dev del ${name} failed: ${error.message}\n${label} log:\n${log}`);
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
    if (existsSync(`/dev/vduse/${name}`)) await backend.destroyOrphan();
  };

  try {
    // Generous: under the lab's TCG our CLI needs ~8 s to its summary (node alone 1.8 s, loading the CLI's
    // modules ~5.5 s, the worker ~1 s; lab run 2026-11-30), faulty-blk well under one.
    for (let waited = 0; !backend.ready(stdout); waited += 20) {
      if (child.exitCode !== null || child.signalCode !== null || waited > 60000)
        throw new Error(`${label} did not get ready (exit ${child.exitCode ?? child.signalCode}):\n${log}`);
      await sleep(20);
    }
    if (backend.msgTimeoutSec !== undefined)
      writeFileSync(`/sys/class/vduse/${name}/msg_timeout`, `${backend.msgTimeoutSec}\n`);
    await run('vdpa', ['dev', 'add', 'name', name, 'mgmtdev', 'vduse']).catch((error: Error) => {
      throw new Error(
        `vdpa dev add name ${name} mgmtdev vduse failed: ${error.message}\n${label} log:\n${log}`,
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
            throw new Error(`${label} never logged ${String(pattern)}; its log:\n${log}`);
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
