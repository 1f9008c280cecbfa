/**
 * DeviceChain.secondDescriptor, which the `not-head@N` fault writes as a used id: the ring index of a chain's
 * second descriptor (split: the head's `next`; packed: the slot after the head), undefined for a chain that is
 * one ring descriptor (indirect).
 */
import { strict as assert } from 'node:assert';
import { AREA, DATA_IOVA, makePair, RING_IOVA, type Pair } from './vduse-rings-harness';

/** Makes `segments` buffers (the last one writable) available as one chain; returns the driver's id. */
function send(pair: Pair, segments: number): number {
  const id = pair.driver.begin(segments);
  for (let s = 0; s < segments; s++) pair.driver.push(DATA_IOVA + id * AREA + s * 64, 64, s === segments - 1);
  pair.driver.end(id);
  pair.driver.publish();
  return id;
}

describe('VDUSE device queues: the second descriptor of a chain (for not-head faults)', () => {
  it('split: the head descriptor’s next, read from the table', () => {
    const pair = makePair({ format: 'split', size: 16 });
    const device = pair.device();
    const desc = Buffer.from(pair.ring.buffer, Number(pair.driver.addresses.desc) - RING_IOVA);
    for (const segments of [3, 2, 4]) {
      send(pair, segments);
      const chain = device.pop();
      assert.ok(chain !== undefined && chain.error === undefined);
      const next = desc.readUInt16LE(chain.id * 16 + 14);
      assert.equal(chain.secondDescriptor, next);
      assert.notEqual(chain.secondDescriptor, chain.id, 'not the head');
      device.push(chain, 0);
    }
    send(pair, 1);
    assert.equal(device.pop()?.secondDescriptor, undefined, 'a one-descriptor chain has none');
  });

  it('packed: the slot after the head, wrapping at the end of the ring', () => {
    const pair = makePair({ format: 'packed', size: 8 });
    const device = pair.device();
    const seconds: (number | undefined)[] = [];
    for (const segments of [3, 3, 1, 3]) {
      send(pair, segments);
      const chain = device.pop();
      assert.ok(chain !== undefined && chain.error === undefined);
      seconds.push(chain.secondDescriptor);
      device.push(chain, 0);
      device.flush();
      pair.driver.collect(() => undefined);
    }
    // Heads at slots 0, 3, 6 (one descriptor), 7 (its second descriptor wraps to slot 0).
    assert.deepEqual(seconds, [1, 4, undefined, 0]);
  });

  it('a chain made of one indirect descriptor has no second ring descriptor', () => {
    for (const format of ['split', 'packed'] as const) {
      const pair = makePair({ format, size: 8, indirectEntries: 4 });
      const device = pair.device();
      send(pair, 3);
      const chain = device.pop();
      assert.ok(chain !== undefined && chain.error === undefined, String(chain?.error));
      assert.equal(chain.writableBytes, 64);
      assert.equal(chain.secondDescriptor, undefined, format);
    }
  });
});
