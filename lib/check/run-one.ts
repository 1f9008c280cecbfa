/**
 * One check under a deadline (lib/check/run.ts runs the list). Separate so
 * the host tests can drive it with checks that hang or overrun.
 */
import { performance } from 'node:perf_hooks';
import { ErrorCodes, hasCode, VdpaError } from '../errors';
import type { Check, CheckOutcome } from './run';
import type { CheckResult } from './types';

/**
 * Runs one check within `timeoutMs`. A check that overruns is reported as
 * failed with `ERR_TIMEOUT`, but only once it has settled (or after a second
 * `timeoutMs`), because it may still hold the device the next check opens.
 */
export async function runOne<C>(check: Check<C>, context: C, timeoutMs: number): Promise<CheckResult> {
  const base = { id: check.id, group: check.group, title: check.title };
  const start = performance.now();
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<CheckOutcome> | undefined;
  // Set by the deadline itself. Not a clock comparison: a timer may fire a fraction of a millisecond before
  // performance.now() says `timeoutMs` passed (libuv's loop clock is coarser), and the overrunning check
  // then went on holding the device without its grace.
  let deadlinePassed = false;
  try {
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        deadlinePassed = true;
        reject(
          new VdpaError(`did not finish within ${timeoutMs} ms`, { code: ErrorCodes.TIMEOUT, errno: 110 }),
        );
      }, timeoutMs);
    });
    running = Promise.resolve().then(() => check.run(context));
    const outcome = await Promise.race([running, deadline]);
    const durationMs = performance.now() - start;
    if (outcome !== undefined && 'skip' in outcome)
      return { ...base, status: 'skip', reason: outcome.skip, durationMs };
    return {
      ...base,
      status: 'pass',
      ...(outcome === undefined ? {} : { numbers: outcome.numbers }),
      durationMs,
    };
  } catch (error) {
    const e = error as VdpaError;
    if (running !== undefined && deadlinePassed && hasCode(error, ErrorCodes.TIMEOUT)) {
      // The check overran its deadline but still holds the device (vhost-vdpa allows one open): let it
      // settle — its own requests time out and it closes the device — or the next checks would all fail
      // with EBUSY instead of testing anything. Bounded by another deadline.
      let grace: NodeJS.Timeout | undefined;
      await Promise.race([
        running.catch(() => undefined),
        new Promise<void>((resolve) => (grace = setTimeout(resolve, timeoutMs))),
      ]);
      clearTimeout(grace);
    }
    return {
      ...base,
      status: 'fail',
      reason: e.code !== undefined && !e.message.includes(e.code) ? `${e.code}: ${e.message}` : e.message,
      durationMs: performance.now() - start,
    };
  } finally {
    clearTimeout(timer);
  }
}
