import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { evalModule, LAB_DIR } from './lab-module';

const VM = path.join(LAB_DIR, 'vm.mjs');

function retry(res: Record<string, unknown>, retriesLeft: number): boolean {
  return evalModule(
    `import { retryAfterBootPanic } from ${JSON.stringify(VM)};
     console.log(JSON.stringify(retryAfterBootPanic(${JSON.stringify(res)}, ${retriesLeft})));`,
  ) as boolean;
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
