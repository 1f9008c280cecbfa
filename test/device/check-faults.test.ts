/**
 * `vhost-vdpa check` against the fault-injecting VDUSE device (test/fault-device/faulty-blk.c, docs/hostile.md):
 * each fault mode fails the check that should catch it, and only that one. The faults fire at the first data
 * request the device sees (`@1`), which is the first request of `blk.ring`, the check of the used-ring protocol;
 * a stall is a timeout of that request; a slow device and a capacity change are not faults of the device.
 */
import { strict as assert } from 'node:assert';
import { formatCheckTable, runChecks } from '../../lib';
import { startFaultyBlk, type FaultyBlk } from './fault-device';

/** Fault spec → the ids of the checks that must fail (all others pass or skip with a reason). */
const EXPECTED: [string[], string[]][] = [
  [[], []],
  [['bad-id@1'], ['blk.ring']],
  [['not-head@1'], ['blk.ring']],
  [['dup@1'], ['blk.ring']],
  [['bad-len@1'], ['blk.ring']],
  [
    ['ioerr-every:1'],
    // Every data check; faulty-blk offers neither write-zeroes nor discard, so those two skip.
    [
      'blk.ring',
      'blk.read',
      'blk.get-id',
      'blk.flush',
      'blk.integrity',
      'perf.blk-randread-qd1',
      'perf.blk-randread-qd32',
    ],
  ],
  [['stall@1'], ['blk.ring']],
  [['slow:50'], []],
  [['resize@1:33554432'], []],
];

describe('vhost-vdpa check against faulty-blk: each fault fails the check that catches it, and only that', function () {
  this.timeout(600_000);
  let fault: FaultyBlk | undefined;
  afterEach(async () => {
    await fault?.stop();
    fault = undefined;
  });

  for (const [faults, failing] of EXPECTED) {
    const title = faults.length === 0 ? 'no fault' : faults.join(' ');
    it(`${title}: ${failing.length === 0 ? 'every check passes' : `fails ${failing.join(', ')}`}`, async () => {
      fault = await startFaultyBlk({ faults, sizeBytes: 16 << 20, fill: 'sectors' });
      const report = await runChecks(fault.chardev, {
        destructive: true,
        perfSeconds: 0.3,
        integrityOps: 100,
        checkTimeoutMs: 20000,
      });
      process.stdout.write(formatCheckTable(report).replace(/^/gm, '      '));
      const failed = report.results.filter((r) => r.status === 'fail').map((r) => r.id);
      assert.deepEqual(
        failed,
        failing,
        report.results.map((r) => `${r.id} ${r.status} ${r.reason ?? ''}`).join('\n'),
      );
      for (const r of report.results) if (r.status === 'skip') assert.ok((r.reason ?? '').length > 10, r.id);
    });
  }
});
