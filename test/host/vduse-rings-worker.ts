/**
 * The device half of vduse-rings-threads.test.ts, in a Worker: serves a queue
 * over SharedArrayBuffer "driver memory" while the main thread drives it,
 * waiting for kicks on a shared counter (Atomics.wait) exactly when
 * enableKicks() says nothing is pending.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { createDeviceQueue } from '../../lib/vduse/device-queue';
import { DriverMemory } from '../../lib/vduse/driver-memory';

/** What the test hands the worker. */
export interface RingWorkerData {
  format: 'split' | 'packed';
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  ring: SharedArrayBuffer;
  ringIova: number;
  data: SharedArrayBuffer;
  dataIova: number;
  desc: number;
  driver: number;
  device: number;
  /** [kicks, interrupts, failed] */
  control: SharedArrayBuffer;
  total: number;
}

export const KICKS = 0;
export const IRQS = 1;
export const FAILED = 2;

function serve(d: RingWorkerData): number {
  const control = new Int32Array(d.control);
  const memory = new DriverMemory();
  const ring = Buffer.from(d.ring);
  const data = Buffer.from(d.data);
  memory.add({
    start: d.ringIova,
    last: d.ringIova + ring.length - 1,
    readable: true,
    writable: true,
    buffer: ring,
  });
  memory.add({
    start: d.dataIova,
    last: d.dataIova + data.length - 1,
    readable: true,
    writable: true,
    buffer: data,
  });
  const q = createDeviceQueue({
    format: d.format,
    index: 0,
    size: d.size,
    descIova: d.desc,
    driverIova: d.driver,
    deviceIova: d.device,
    memory,
    eventIdx: d.eventIdx,
    indirect: d.indirect,
  });
  let served = 0;
  for (;;) {
    q.disableKicks();
    for (let chain = q.pop(); chain !== undefined; chain = q.pop()) {
      if (chain.error !== undefined) throw chain.error;
      // The readable bytes are one u32 sequence number repeated; the answer is its complement.
      const input = Buffer.concat(chain.readable);
      const seq = input.readUInt32LE(0);
      for (let at = 0; at < input.length; at += 4) {
        if (input.readUInt32LE(at) !== seq)
          throw new Error(`chain ${chain.id}: torn readable bytes at ${at}`);
      }
      const answer = Buffer.alloc(chain.writableBytes);
      for (let at = 0; at + 4 <= answer.length; at += 4) answer.writeUInt32LE(~seq >>> 0, at);
      let off = 0;
      for (const view of chain.writable) off += answer.copy(view, 0, off);
      q.push(chain, chain.writableBytes);
      served++;
    }
    if (q.flush()) {
      Atomics.add(control, IRQS, 1);
      Atomics.notify(control, IRQS);
    }
    if (served === d.total) return served;
    const kicks = Atomics.load(control, KICKS);
    if (q.enableKicks()) continue;
    if (Atomics.wait(control, KICKS, kicks, 5000) === 'timed-out') {
      throw new Error(`device: no kick for 5 s after serving ${served} of ${d.total} chains: a lost kick`);
    }
  }
}

try {
  parentPort?.postMessage({ served: serve(workerData as RingWorkerData) });
} catch (error) {
  const control = new Int32Array((workerData as RingWorkerData).control);
  Atomics.store(control, FAILED, 1);
  Atomics.notify(control, IRQS);
  parentPort?.postMessage({ error: String((error as Error).stack ?? error) });
}
