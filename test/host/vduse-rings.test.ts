import { strict as assert } from 'node:assert';
import { DeviceChain, DeviceQueue } from '../../lib/vduse/device-queue';
import { AREA, DATA_IOVA, gather, makePair, Pair, PairOptions, prng } from './vduse-rings-harness';

/** What the driver put into one chain, to check the device against. */
interface Sent {
  readable: Buffer;
  writable: [number, number][];
  writableBytes: number;
  written: number;
  output: Buffer | undefined;
}

/**
 * A random run of our driver queue against the device queue, both following
 * the notification protocol: the device serves only when kicked (or when its
 * enableKicks() re-check says so), the driver collects only after an
 * interrupt (or while it polls). A lost kick or interrupt stalls the run,
 * which fails. Every byte and id is checked, and the suppression decisions
 * are checked against the spec as they are made. Returns chains completed.
 */
function randomRun(
  o: PairOptions & { steps: number; seed: number; maxSegments: number; restartEvery?: number },
): number {
  const rnd = prng(o.seed);
  const pair: Pair = makePair(o);
  const { driver } = pair;
  let device: DeviceQueue = pair.device();
  const sent = new Map<number, Sent>();
  const popped = new Set<number>();
  const held: DeviceChain[] = [];
  let kickPending = false;
  let irqPending = false;
  let polling = false;
  let busy = false; // the device turned kicks off and is not looking
  let irqArmed = true; // the driver consumed everything and re-armed: the next flush with entries must interrupt
  let kickArmed = true; // the device consumed everything and enabled kicks: the next publish must kick
  let anyPushedSinceFlush = false;
  let completions = 0;
  let restartWanted = false;
  let restarts = 0;

  const where = (): string =>
    `${o.format} size ${o.size} indirect ${o.indirectEntries ?? 0} eventIdx ${String(o.eventIdx)} seed ${o.seed}`;

  function add(): void {
    const count = 1 + Math.floor(rnd() * 3);
    let added = 0;
    for (let k = 0; k < count; k++) {
      const segments = 1 + Math.floor(rnd() * Math.min(o.maxSegments, o.size));
      if (!driver.canAdd(segments)) break;
      const id = driver.begin(segments);
      assert.ok(id >= 0);
      const readableCount = Math.floor(rnd() * (segments + 1));
      let offset = 0;
      const readableParts: Buffer[] = [];
      const writable: [number, number][] = [];
      let writableBytes = 0;
      const most = Math.floor(AREA / segments);
      for (let s = 0; s < segments; s++) {
        const length = 1 + Math.floor(rnd() * (most - 1));
        const iova = DATA_IOVA + id * AREA + offset;
        const bytes = pair.dataBytes.subarray(iova - DATA_IOVA, iova - DATA_IOVA + length);
        if (s < readableCount) {
          for (let i = 0; i < length; i++) bytes[i] = Math.floor(rnd() * 256);
          readableParts.push(Buffer.from(bytes));
        } else {
          bytes.fill(0xee);
          writable.push([iova, length]);
          writableBytes += length;
        }
        driver.push(iova, length, s >= readableCount);
        offset += length;
      }
      driver.end(id);
      sent.set(id, {
        readable: Buffer.concat(readableParts),
        writable,
        writableBytes,
        written: 0,
        output: undefined,
      });
      added++;
    }
    if (added === 0) return;
    const kicked = driver.publish();
    if (busy) assert.equal(kicked, false, `${where()}: kicked while the device had kicks disabled`);
    if (kickArmed)
      assert.equal(kicked, true, `${where()}: no kick although the device enabled kicks and was idle`);
    if (kicked) {
      kickPending = true;
      kickArmed = false;
    }
  }

  function check(chain: DeviceChain): void {
    assert.equal(chain.error, undefined, `${where()}: ${String(chain.error)}`);
    const s = sent.get(chain.id);
    assert.ok(s !== undefined, `${where()}: device popped id ${chain.id}, which the driver did not send`);
    assert.ok(!popped.has(chain.id), `${where()}: id ${chain.id} popped twice`);
    popped.add(chain.id);
    assert.equal(chain.readableBytes, s.readable.length);
    assert.equal(chain.writableBytes, s.writableBytes);
    assert.ok(gather(chain.readable).equals(s.readable), `${where()}: readable bytes of chain ${chain.id}`);
  }

  function complete(chain: DeviceChain): void {
    const s = sent.get(chain.id) as Sent;
    const written = Math.floor(rnd() * (chain.writableBytes + 1));
    const output = Buffer.alloc(written);
    for (let i = 0; i < written; i++) {
      output[i] = (s.readable.length > 0 ? s.readable[i % s.readable.length] : chain.id + i) ^ 0x5a;
    }
    let at = 0;
    for (const view of chain.writable) {
      if (at >= written) break;
      at += output.copy(view, 0, at, Math.min(written, at + view.length));
    }
    s.written = written;
    s.output = output;
    popped.delete(chain.id);
    device.push(chain, written);
  }

  function flush(): void {
    const interrupt = device.flush();
    if (polling) assert.equal(interrupt, false, `${where()}: interrupt while the driver polls`);
    else if (o.eventIdx && irqPending)
      assert.equal(interrupt, false, `${where()}: second interrupt before the driver looked`);
    if (!polling && irqArmed && interrupt === false) {
      // Only acceptable when nothing was published.
      assert.ok(!anyPushedSinceFlush, `${where()}: no interrupt although the driver had re-armed`);
    }
    if (interrupt) {
      irqPending = true;
      irqArmed = false;
    }
    anyPushedSinceFlush = false;
  }

  function serve(): void {
    kickPending = false;
    for (;;) {
      device.disableKicks();
      for (let chain = device.pop(); chain !== undefined; chain = device.pop()) {
        check(chain);
        if (rnd() < 0.5) {
          complete(chain);
          anyPushedSinceFlush = true;
        } else held.push(chain);
      }
      flush();
      if (rnd() < 0.3) {
        busy = true;
        return;
      }
      busy = false;
      if (!device.enableKicks()) {
        kickArmed = true;
        return;
      }
    }
  }

  function completeSome(): void {
    const n = 1 + Math.floor(rnd() * held.length);
    for (let k = 0; k < n; k++) {
      const chain = held.splice(Math.floor(rnd() * held.length), 1)[0];
      complete(chain);
      anyPushedSinceFlush = true;
    }
    flush();
  }

  function collect(): void {
    irqPending = false;
    driver.collect((id, length) => {
      const s = sent.get(id);
      assert.ok(
        s?.output !== undefined,
        `${where()}: completion of id ${id}, which the device did not complete`,
      );
      assert.equal(length, s.written, `${where()}: used length of ${id}`);
      let at = 0;
      for (const [iova, len] of s.writable) {
        const bytes = pair.dataBytes.subarray(iova - DATA_IOVA, iova - DATA_IOVA + len);
        for (let i = 0; i < len; i++, at++) {
          const want: number = at < s.written ? s.output[at] : 0xee;
          if (bytes[i] !== want) assert.fail(`${where()}: chain ${id} byte ${at}: ${bytes[i]} ≠ ${want}`);
        }
      }
      sent.delete(id);
      completions++;
    });
    if (!polling) irqArmed = true;
  }

  for (let step = 0; step < o.steps; step++) {
    const r = rnd();
    if (r < 0.35) add();
    else if (r < 0.55) {
      if (kickPending) serve();
    } else if (r < 0.7) {
      if (held.length > 0) completeSome();
    } else if (r < 0.72) {
      if (busy) {
        busy = false;
        if (device.enableKicks()) kickPending = true;
        else kickArmed = true;
      }
    } else if (r < 0.74) {
      // Switch between interrupts and polling (the driver re-checks after turning interrupts on).
      polling = !polling;
      driver.setInterrupts(!polling);
      collect();
    } else if (polling || irqPending) collect();
    if (o.restartEvery !== undefined && step % o.restartEvery === o.restartEvery - 1) restartWanted = true;
    if (restartWanted && held.length === 0) {
      // GET_VQ_STATE, then a new device queue from that state (VQ_GET_INFO after a restart).
      flush();
      device = pair.device(device.state());
      restarts++;
      restartWanted = false;
    }
  }
  // Drain, moved by notifications only: a lost kick or interrupt leaves nothing to do.
  if (polling) {
    polling = false;
    driver.setInterrupts(true);
    collect();
  }
  for (let guard = 0; driver.inFlight > 0; guard++) {
    assert.ok(guard < 1e6, 'drain does not end');
    if (kickPending) serve();
    else if (held.length > 0) completeSome();
    else if (busy) {
      busy = false;
      if (device.enableKicks()) kickPending = true;
    } else if (irqPending) collect();
    else
      assert.fail(`${where()}: stalled with ${driver.inFlight} chains in flight: a lost kick or interrupt`);
  }
  assert.equal(device.inFlight, 0);
  if (o.restartEvery !== undefined) {
    assert.ok(
      restarts >= Math.floor(o.steps / o.restartEvery) - 1,
      `${where()}: ${restarts} restarts from state()`,
    );
  }
  pair.ring.free();
  pair.data.free();
  return completions;
}

describe('VDUSE device queues against our driver queues', function () {
  this.timeout(120000);
  let total = 0;
  const splitSizes = [1, 2, 4, 16, 64, 256];
  const packedSizes = [1, 3, 16, 100, 255, 256];
  for (const format of ['split', 'packed'] as const) {
    for (const size of format === 'split' ? splitSizes : packedSizes) {
      for (const indirect of [false, true]) {
        for (const eventIdx of [false, true]) {
          it(`${format} ring of ${size}, indirect ${indirect ? 'on' : 'off'}, EVENT_IDX ${eventIdx ? 'on' : 'off'}: every byte, id and notification`, () => {
            total += randomRun({
              format,
              size,
              indirectEntries: indirect ? Math.min(size, 8) : 0,
              eventIdx,
              steps: 9000,
              seed: size * 4 + (indirect ? 2 : 0) + (eventIdx ? 1 : 0) + (format === 'packed' ? 1000 : 0),
              maxSegments: 8,
              restartEvery: 1500,
            });
          });
        }
      }
    }
  }
  it('completed at least 100,000 chains in all', () => {
    assert.ok(total >= 100000, `${total} chains`);
  });
});
