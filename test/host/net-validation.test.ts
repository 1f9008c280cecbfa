/** Host tests of the net driver's pure parts: MAC parsing and the frames() iterator's flow control. */
import { strict as assert } from 'node:assert';
import { formatMac, parseMac } from '../../lib';
import { FrameIterator } from '../../lib/net/frames';

describe('net: MAC addresses', () => {
  it('parses colon and dash forms and 6 bytes, formats lower case', () => {
    assert.deepEqual([...parseMac('52:54:AA:bb:cc:01', 'x')], [0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x01]);
    assert.deepEqual([...parseMac('52-54-aa-bb-cc-01', 'x')], [0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x01]);
    const bytes = Uint8Array.of(1, 2, 3, 4, 5, 6);
    const parsed = parseMac(bytes, 'x');
    assert.notEqual(parsed, bytes, 'a copy: the caller may reuse its array');
    assert.equal(formatMac(Uint8Array.of(0x52, 0x54, 0xaa, 0xbb, 0xcc, 0x1)), '52:54:aa:bb:cc:01');
  });

  for (const bad of [
    '52:54:aa:bb:cc',
    '52:54:aa:bb:cc:01:02',
    '52:54-aa:bb:cc:01',
    'zz:54:aa:bb:cc:01',
    '',
    42,
    null,
  ]) {
    it(`refuses ${JSON.stringify(bad)} with ERR_INVALID_ARG naming the caller`, () => {
      assert.throws(() => parseMac(bad, 'setMac()'), {
        code: 'ERR_INVALID_ARG',
        message: /^setMac\(\): .*not a MAC address; write it as aa:bb:cc:dd:ee:ff/,
      });
    });
  }

  it('refuses byte arrays that are not 6 long', () => {
    assert.throws(() => parseMac(new Uint8Array(7), 'setMac()'), {
      code: 'ERR_INVALID_ARG',
      message: /6 bytes, got 7/,
    });
  });
});

describe('net: frames() iterator', () => {
  function make(highWaterMark: number): { it: FrameIterator; events: string[] } {
    const events: string[] = [];
    const it = new FrameIterator(highWaterMark, {
      full: () => events.push('full'),
      drained: () => events.push('drained'),
      done: () => events.push('done'),
    });
    return { it, events };
  }

  it('hands frames to a waiting reader at once and queues them otherwise, in order', async () => {
    const { it } = make(4);
    const waiting = it.next();
    it.push(Buffer.from('a'));
    assert.equal((await waiting).value?.toString(), 'a');
    it.push(Buffer.from('b'));
    it.push(Buffer.from('c'));
    assert.equal((await it.next()).value?.toString(), 'b');
    assert.equal((await it.next()).value?.toString(), 'c');
  });

  it('reports full at the high-water mark and drained at half, once each', async () => {
    const { it, events } = make(4);
    for (let i = 0; i < 6; i++) it.push(Buffer.from([i]));
    assert.deepEqual(events, ['full']);
    await it.next();
    await it.next();
    await it.next();
    assert.deepEqual(events, ['full'], '3 left: above half of 4');
    await it.next();
    assert.deepEqual(events, ['full', 'drained']);
  });

  it('delivers what is queued after end(), then done; a full iterator that ends releases flow control', async () => {
    const { it, events } = make(2);
    it.push(Buffer.from('x'));
    it.push(Buffer.from('y'));
    it.end();
    assert.deepEqual(events, ['full', 'drained', 'done']);
    assert.equal((await it.next()).value?.toString(), 'x');
    assert.equal((await it.next()).value?.toString(), 'y');
    assert.equal((await it.next()).done, true);
    it.push(Buffer.from('z'));
    assert.equal((await it.next()).done, true, 'nothing after the end');
  });

  it('break (return()) ends a pending reader and drops the queue', async () => {
    const { it, events } = make(8);
    const pending = it.next();
    await it.return();
    assert.equal((await pending).done, true);
    assert.deepEqual(events, ['done']);
  });
});
