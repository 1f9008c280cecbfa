// Mocha reporter: the spec reporter's output, plus a JSON summary written to
// $VDPA_TEST_SUMMARY so scripts/test.mjs can add up host and device suites
// (the device suite runs inside the lab VM and writes through the shared tree).
// `declared` is what mocha found to run (runner.total: every test of the
// loaded files that matches --grep, counted before the run, as --dry-run
// would); `ran` is how many of them reported a result. A failing before() or
// beforeEach() hook makes mocha skip the rest of its describe silently, so
// scripts/test.mjs counts declared − ran as failures.
'use strict';
const fs = require('node:fs');
const Mocha = require('mocha');

const { EVENT_RUN_END, EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING } = Mocha.Runner.constants;

class SpecWithSummary extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const ran = new Set();
    const count = (test) => {
      if (test.type === 'test') ran.add(test);
    };
    runner.on(EVENT_TEST_PASS, count);
    runner.on(EVENT_TEST_FAIL, count);
    runner.on(EVENT_TEST_PENDING, count);
    runner.once(EVENT_RUN_END, () => {
      const file = process.env.VDPA_TEST_SUMMARY;
      if (!file) return;
      const { passes, failures, pending } = runner.stats;
      const summary = { passes, failures, pending, declared: runner.total, ran: ran.size };
      fs.writeFileSync(file, JSON.stringify(summary) + '\n');
    });
  }
}

module.exports = SpecWithSummary;
