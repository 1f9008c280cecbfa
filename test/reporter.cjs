// Mocha reporter: the spec reporter's output, plus a JSON summary written to
// $VDPA_TEST_SUMMARY so scripts/test.mjs can add up host and device suites
// (the device suite runs inside the lab VM and writes through the shared tree).
'use strict';
const fs = require('node:fs');
const Mocha = require('mocha');

class SpecWithSummary extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    runner.once(Mocha.Runner.constants.EVENT_RUN_END, () => {
      const file = process.env.VDPA_TEST_SUMMARY;
      if (!file) return;
      const { passes, failures, pending } = runner.stats;
      fs.writeFileSync(file, JSON.stringify({ passes, failures, pending }) + '\n');
    });
  }
}

module.exports = SpecWithSummary;
