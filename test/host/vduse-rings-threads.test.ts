import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { PackedVirtqueue, packedRingLayout, SplitVirtqueue, splitRingLayout, Virtqueue } from '../../lib';
import { FAILED, IRQS, KICKS, RingWorkerData } from './vduse-rings-worker';

const RING_IOVA = 0x10000;
const DATA_IOVA = 0x1000000;
const AREA = 256;

/**
 * Our driver queue on this thread, the device queue in a Worker, over shared
 * memory, both running at once: the memory orderings and the kick/interrupt
 * re-checks of both sides under real concurrency. Each side sleeps only when
 * the protocol says the other will wake it (Atomics.wait on a shared
 * counter); a lost kick or interrupt times out and fails.
 */
async function concurrentRun(o: {
  format: 'split' | 'packed';
  size: number;
  eventIdx: boolean;
  indirect: boolean;
  total: number;
}): Promise<void> {
  const indirectEntries = o.indirect ? 4 : 0;
  const layout =
    o.format === 'split'
      ? splitRingLayout(o.size, indirectEntries)
      : packedRingLayout(o.size, indirectEntries);
  const ring = new SharedArrayBuffer(layout.bytes);
  const data = new SharedArrayBuffer(o.size * AREA);
  const control = new SharedArrayBuffer(12);
  const ctl = new Int32Array(control);
  const options = {
    index: 0,
    size: o.size,
    memory: ring as unknown as ArrayBuffer,
    byteOffset: 0,
    iova: RING_IOVA,
    indirectEntries,
    eventIdx: o.eventIdx,
    notify: () => {
      Atomics.add(ctl, KICKS, 1);
      Atomics.notify(ctl, KICKS);
    },
  };
  const vq: Virtqueue<number> =
    o.format === 'split' ? new SplitVirtqueue<number>(options) : new PackedVirtqueue<number>(options);
  const workerData: RingWorkerData = {
    format: o.format,
    size: o.size,
    eventIdx: o.eventIdx,
    indirect: o.indirect,
    ring,
    ringIova: RING_IOVA,
    data,
    dataIova: DATA_IOVA,
    desc: Number(vq.addresses.desc),
    driver: Number(vq.addresses.avail),
    device: Number(vq.addresses.used),
    control,
    total: o.total,
  };
  const worker = new Worker(path.join(__dirname, 'vduse-rings-worker.js'), { workerData });
  const result = new Promise<{ served?: number; error?: string }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const words = new Uint32Array(data);
  const seqOf = new Uint32Array(o.size);
  let sent = 0;
  let done = 0;
  let seq = 1;
  try {
    while (done < o.total) {
      while (sent < o.total) {
        const segments = 2 + (seq % 2);
        if (!vq.canAdd(segments)) break;
        const id = vq.begin(segments);
        const area = id * AREA;
        words.fill(seq, area / 4, area / 4 + 16); // 64 readable bytes: seq, 16 times
        words.fill(0, area / 4 + 16, area / 4 + 48); // up to 128 writable bytes
        vq.push(DATA_IOVA + area, 64, false);
        vq.push(DATA_IOVA + area + 64, 64, true);
        if (segments === 3) vq.push(DATA_IOVA + area + 128, 64, true);
        vq.end(id);
        seqOf[id] = seq++;
        sent++;
        if (sent % 8 === 0) vq.publish();
      }
      vq.publish();
      if (Atomics.load(ctl, FAILED) !== 0) break;
      const irqs = Atomics.load(ctl, IRQS);
      const n = vq.collect((id, length) => {
        const writable = seqOf[id] % 2 === 0 ? 64 : 128;
        assert.equal(length, writable, `used length of chain ${id}`);
        const base = id * AREA + 64;
        for (let w = 0; w < writable / 4; w++) {
          if (words[base / 4 + w] !== ~seqOf[id] >>> 0)
            assert.fail(`chain ${id} (seq ${seqOf[id]}): word ${w} is ${words[base / 4 + w]}`);
        }
        done++;
      });
      if (n === 0 && done < o.total && (sent === o.total || !vq.canAdd(3))) {
        if (Atomics.wait(ctl, IRQS, irqs, 5000) === 'timed-out') {
          assert.fail(`driver: no interrupt for 5 s with ${vq.inFlight} chains in flight: a lost interrupt`);
        }
      }
    }
    const answer = await result;
    assert.equal(answer.error, undefined, answer.error);
    assert.equal(answer.served, o.total);
    assert.equal(done, o.total);
  } finally {
    await worker.terminate();
  }
}

describe('VDUSE device queue in a Worker, our driver queue on the main thread, concurrently', function () {
  this.timeout(180_000);
  for (const format of ['split', 'packed'] as const) {
    for (const [eventIdx, indirect] of [
      [false, false],
      [true, true],
    ]) {
      it(`${format}, EVENT_IDX ${eventIdx ? 'on' : 'off'}, indirect ${indirect ? 'on' : 'off'}: 20,000 chains, every word checked, no lost kick or interrupt`, () =>
        concurrentRun({ format, size: 64, eventIdx, indirect, total: 20_000 }));
    }
  }
});
