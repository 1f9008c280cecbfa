import { strict as assert } from 'node:assert';
import { ErrorCodes, VdpaError } from '../../lib/errors';
import {
  badUsedId,
  badUsedLength,
  FaultPlan,
  formatFault,
  notHeadUsedId,
  parseFaults,
} from '../../lib/vduse/faults';

function rejects(spec: string | string[], pattern: RegExp): void {
  assert.throws(
    () => parseFaults(spec),
    (e: unknown) => {
      assert.ok(e instanceof VdpaError);
      assert.equal(e.code, ErrorCodes.INVALID_ARG);
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe('VDUSE fault plans', () => {
  it('parses every form, comma-separated or repeated, decimal or hex', () => {
    assert.deepEqual(
      parseFaults([
        'bad-id@3,dup@4',
        'not-head@0x3',
        'bad-len@0x5',
        'ioerr-every:3',
        'stall@7',
        'slow:250',
        'resize@2:1048576',
      ]),
      [
        { kind: 'bad-id', request: 3 },
        { kind: 'dup', request: 4 },
        { kind: 'not-head', request: 3 },
        { kind: 'bad-len', request: 5 },
        { kind: 'ioerr-every', every: 3 },
        { kind: 'stall', request: 7 },
        { kind: 'slow', ms: 250 },
        { kind: 'resize', request: 2, bytes: 1048576 },
      ],
    );
    assert.deepEqual(parseFaults(' stall@1 '), [{ kind: 'stall', request: 1 }]);
    assert.equal(parseFaults('resize@9:4096').map(formatFault).join(), 'resize@9:4096');
    assert.equal(
      parseFaults('ioerr-every:2,slow:5,dup@1').map(formatFault).join(),
      'ioerr-every:2,slow:5,dup@1',
    );
  });
  it('rejects a bad spec with ERR_INVALID_ARG naming it and the valid forms', () => {
    rejects('explode@3', /'explode@3': unknown fault \(one of bad-id@N, not-head@N, .*resize@N:BYTES/);
    rejects('not-head@0', /'not-head@0': N must be a positive integer/);
    rejects('not-head:3', /'not-head:3': unknown fault/);
    rejects('stall:3', /'stall:3': unknown fault/);
    rejects('ioerr-every@3', /unknown fault/);
    rejects('bad-id@0', /'bad-id@0': N must be a positive integer, got '0'/);
    rejects('dup@-1', /N must be a positive integer/);
    rejects('dup@1.5', /N must be a positive integer/);
    rejects('dup@1:2', /'dup@1:2': unknown fault/);
    rejects('slow:fast', /MS must be a positive integer, got 'fast'/);
    rejects('resize@3', /resize needs the new size/);
    rejects('resize@3:1000', /BYTES must be a multiple of 512, got 1000/);
    rejects('resize@3:99999999999999999999', /BYTES must be a positive integer/);
    rejects('stall@1,,dup@2', /empty fault/);
    rejects(['slow:1', 'slow:2'], /'slow:2': slow given twice/);
  });
  it('is deterministic per request number, counting from 1, in the order the actions apply', () => {
    const plan = new FaultPlan('ioerr-every:3,bad-id@3,bad-len@3,dup@3,resize@3:4096,slow:10,stall@5');
    assert.deepEqual(plan.next(1), [{ kind: 'delay', ms: 10 }]);
    assert.deepEqual(plan.next(3), [
      { kind: 'ioerr' },
      { kind: 'delay', ms: 10 },
      { kind: 'bad-id' },
      { kind: 'bad-len' },
      { kind: 'dup' },
      { kind: 'resize', bytes: 4096 },
    ]);
    assert.deepEqual(plan.next(5), [{ kind: 'stall' }], 'a stalled request gets nothing else');
    assert.deepEqual(plan.next(6), [{ kind: 'ioerr' }, { kind: 'delay', ms: 10 }]);
    assert.deepEqual(plan.next(3), plan.next(3), 'asking twice gives the same answer');
  });
  it('ioerr-every:N hits N, 2N, 3N … only', () => {
    const plan = new FaultPlan(['ioerr-every:3']);
    const hit = [];
    for (let n = 1; n <= 12; n++) if (plan.next(n).some((a) => a.kind === 'ioerr')) hit.push(n);
    assert.deepEqual(hit, [3, 6, 9, 12]);
  });
  it('an empty plan answers with one shared empty array', () => {
    const plan = new FaultPlan();
    assert.equal(plan.empty, true);
    assert.equal(plan.next(1), plan.next(2));
    assert.equal(plan.next(1).length, 0);
    assert.equal(new FaultPlan('stall@4').next(3), plan.next(1));
  });
  it('refuses request numbers below 1', () => {
    assert.throws(() => new FaultPlan('stall@1').next(0), {
      code: ErrorCodes.INVALID_ARG,
      message: /start at 1/,
    });
  });
  it('not-head gives way to bad-id on the same request (one used id), and combines with the rest', () => {
    assert.deepEqual(new FaultPlan('not-head@2,bad-len@2,dup@2').next(2), [
      { kind: 'not-head' },
      { kind: 'bad-len' },
      { kind: 'dup' },
    ]);
    assert.deepEqual(new FaultPlan('not-head@2,bad-id@2').next(2), [{ kind: 'bad-id' }]);
    assert.equal(formatFault({ kind: 'not-head', request: 7 }), 'not-head@7');
  });
  it('bends ids and lengths as faulty-blk does', () => {
    assert.equal(notHeadUsedId(5, 256), 5, "the chain's second descriptor");
    assert.equal(notHeadUsedId(undefined, 256), 256, 'no second ring descriptor: the queue size');
    assert.equal(badUsedId(256), 263);
    assert.equal(badUsedLength(513), 4609);
  });
});
