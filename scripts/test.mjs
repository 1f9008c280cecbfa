#!/usr/bin/env node
// `npm test`: the host suite here, then the device suite against real
// vhost-vdpa devices — inside the lab VM, or directly when VDPA_DEVICE names a
// device on this host. Ends with one line "N passed, N failed" for both suites.
// A device suite that did not run counts as a failure: skipping proves nothing.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildFaultDevice } from './build-fault-device.mjs';
import { buildNetTools } from './build-net-tools.mjs';

import { tallySuite } from './test-tally.cjs';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const resultsDir = join(root, '.lab', 'test-results');
const extraArgs = process.argv.slice(2); // e.g. a spec glob or --grep, passed to both mocha runs

function log(message) {
  process.stderr.write(`[test] ${message}\n`);
}

function run(command, args, env = {}) {
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  return result.status ?? 1;
}

function readSummary(file) {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

function compile() {
  if (!existsSync(join(root, 'build', 'Release', 'vhost_vdpa.node'))) {
    log('native addon missing: building it (npx node-gyp rebuild)');
    if (run('npx', ['node-gyp', 'rebuild']) !== 0) return false;
  }
  log('compiling TypeScript (lib → dist/, lib+test → dist-test/)');
  return (
    run('npx', ['tsc', '-p', 'tsconfig.json']) === 0 &&
    run('npx', ['tsc', '-p', 'tsconfig.test.json']) === 0 &&
    buildFaultDevice() && // test/fault-device/faulty-blk.c, for the hostile-device suite (docs/hostile.md)
    buildNetTools() // bench/c-baseline/af-packet-net.c, for the net kernel cross-check (docs/net.md)
  );
}

async function main() {
  mkdirSync(resultsDir, { recursive: true });
  const hostSummary = join(resultsDir, 'host.json');
  const deviceSummary = join(resultsDir, 'device.json');
  rmSync(hostSummary, { force: true });
  rmSync(deviceSummary, { force: true });

  let passed = 0;
  let failed = 0;
  const add = (name, summary, exitCode) => {
    const tally = tallySuite(name, summary, exitCode);
    for (const note of tally.notes) log(note);
    passed += tally.passed;
    failed += tally.failed;
  };

  if (!compile()) {
    console.log('0 passed, 1 failed');
    process.exit(1);
  }

  log('host suite');
  const hostExit = run('npx', ['mocha', '--config', 'test/mocharc.host.json', ...extraArgs], {
    VDPA_TEST_SUMMARY: hostSummary,
  });
  add('host', readSummary(hostSummary), hostExit);

  let deviceExit;
  // node + mocha's bin directly: npx costs ~20 s per start inside the TCG guest.
  const mochaDevice = [
    process.execPath,
    join(root, 'node_modules', 'mocha', 'bin', 'mocha.js'),
    '--config',
    'test/mocharc.device.json',
    ...extraArgs,
  ];
  if (process.env.VDPA_DEVICE) {
    log(`device suite on this host against ${process.env.VDPA_DEVICE}`);
    deviceExit = run(mochaDevice[0], mochaDevice.slice(1), { VDPA_TEST_SUMMARY: deviceSummary });
  } else {
    log('device suite in the lab VM (set VDPA_DEVICE=/dev/vhost-vdpa-N to use a device on this host)');
    const { runInLab } = await import('./lab/index.mjs');
    const result = await runInLab({
      command: ['node', ...mochaDevice.slice(1)],
      env: { VDPA_TEST_SUMMARY: deviceSummary },
      timeoutSec: Number(process.env.VDPA_LAB_TIMEOUT ?? 2400),
    });
    deviceExit = result.exitCode;
    log(`lab: accel ${result.accel}, timings ${JSON.stringify(result.timings)}`);
  }
  add('device', readSummary(deviceSummary), deviceExit);

  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((error) => {
  console.error(error);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
