// How scripts/test.mjs counts one suite's summary (written by test/reporter.cjs)
// into "N passed, N failed". CommonJS so that the host tests can load it too.
'use strict';

/**
 * @param {string} name 'host' or 'device'
 * @param {{passes: number, failures: number, pending: number, declared?: number, ran?: number} | undefined} summary
 * @param {number} exitCode mocha's exit status
 * @returns {{passed: number, failed: number, notes: string[]}}
 */
function tallySuite(name, summary, exitCode) {
  const notes = [];
  if (summary === undefined) {
    notes.push(`${name} suite produced no results (exit code ${exitCode}): counted as 1 failure`);
    return { passed: 0, failed: 1, notes };
  }
  const passed = summary.passes;
  let failed = summary.failures + summary.pending; // a skipped test is not a pass
  if (summary.failures === 0 && exitCode !== 0) {
    notes.push(`${name} suite exited with ${exitCode} without a failed test: counted as 1 failure`);
    failed += 1;
  }
  if (typeof summary.declared !== 'number' || typeof summary.ran !== 'number') {
    notes.push(`${name} suite summary has no declared/ran counts (old reporter?): counted as 1 failure`);
    failed += 1;
  } else if (summary.ran < summary.declared) {
    const missing = summary.declared - summary.ran;
    notes.push(
      `${name} suite: ${summary.declared} tests declared, only ${summary.ran} ran (passed, failed or pending); ` +
        `${missing} never ran (a failing before/beforeEach hook skips the rest of its describe): ` +
        `counted as ${missing} failure${missing === 1 ? '' : 's'}`,
    );
    failed += missing;
  }
  return { passed, failed, notes };
}

module.exports = { tallySuite };
