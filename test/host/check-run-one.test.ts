import { strict as assert } from 'node:assert';
import { setTimeout as sleep } from 'node:timers/promises';
import { runOne } from '../../lib/check/run-one';
import type { Check } from '../../lib/check/run';

const check = (run: () => Promise<void>): Check<undefined> => ({
  id: 'test.check',
  group: 'test',
  title: 'a test check',
  run,
});

describe('check: one check under a deadline', () => {
  it('passes a check that finishes in time', async () => {
    const result = await runOne(
      check(() => sleep(5)),
      undefined,
      1000,
    );
    assert.equal(result.status, 'pass');
  });

  it('fails an overrunning check with ETIMEDOUT, but returns only once it has let go of the device', async () => {
    // The check stands in for one that still holds /dev/vhost-vdpa-N after its deadline: the next
    // check must not start before it closes, or it fails with EBUSY instead of testing anything.
    let settled = false;
    const result = await runOne(
      check(async () => {
        // Deadline at 200 ms, grace until >= 400 ms: the check settles at 250 ms, inside the grace
        // whatever the load (timers fire in expiry order, with microtasks run between them).
        await sleep(250);
        settled = true;
      }),
      undefined,
      200,
    );
    assert.equal(result.status, 'fail');
    assert.match(result.reason ?? '', /ETIMEDOUT/);
    assert.equal(settled, true, 'runOne returned while the overrunning check was still running');
  });

  it('gives the overrunning check its grace even when the clock says the deadline has not quite passed', async () => {
    // A timer may fire a fraction of a millisecond before performance.now() reaches its delay. A frozen
    // clock makes that deterministic: runOne used to compare clocks and returned while the check still ran.
    const realNow = performance.now.bind(performance);
    const frozen = realNow();
    performance.now = () => frozen;
    let settled = false;
    try {
      const result = await runOne(
        // Deadline at 200 ms, grace until >= 400 ms: settling at 250 ms is inside the grace.
        check(async () => {
          await sleep(250);
          settled = true;
        }),
        undefined,
        200,
      );
      assert.equal(result.status, 'fail');
      assert.match(result.reason ?? '', /ETIMEDOUT/);
    } finally {
      performance.now = realNow;
    }
    assert.equal(settled, true, 'runOne returned while the overrunning check was still running');
  });

  it('waits at most a second deadline for a check that never settles', async () => {
    const started = performance.now();
    const result = await runOne(
      check(() => new Promise<void>(() => undefined)),
      undefined,
      40,
    );
    const elapsed = performance.now() - started;
    assert.equal(result.status, 'fail');
    assert.ok(elapsed >= 70 && elapsed < 10000, `returned after ${elapsed.toFixed(0)} ms`);
  });
});
