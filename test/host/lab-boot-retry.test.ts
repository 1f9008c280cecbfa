import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

// scripts/lab is ESM; this suite compiles to CommonJS, so the decision is evaluated in a child process.
const VM = path.resolve(__dirname, '../../../scripts/lab/vm.mjs');

function retry(res: Record<string, unknown>, retriesLeft: number): boolean {
  const result = spawnSync(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { retryAfterBootPanic } from ${JSON.stringify(VM)};
       console.log(JSON.stringify(retryAfterBootPanic(${JSON.stringify(res)}, ${retriesLeft})));`,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout) as boolean;
}

describe('lab: a guest kernel panic while booting', () => {
  const panicked = { outcome: 'guest-failed', panic: true, commandStarted: false };

  it('boots again when the command had not started, as many times as allowed', () => {
    assert.equal(retry(panicked, 1), true);
    assert.equal(retry(panicked, 0), false);
  });

  it('never re-runs a command that started, nor retries other failures', () => {
    assert.equal(retry({ ...panicked, commandStarted: true }, 1), false);
    assert.equal(retry({ ...panicked, panic: false }, 1), false);
    assert.equal(retry({ outcome: 'timeout', panic: true, commandStarted: false }, 1), false);
    assert.equal(retry({ outcome: 'done', exitCode: 1, panic: false, commandStarted: true }, 1), false);
  });
});
