import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

/** scripts/lab, whose modules are ESM (the host suites compile to CommonJS). */
export const LAB_DIR = path.resolve(__dirname, '../../../scripts/lab');

/**
 * Runs `source` as an ES module in a child Node process and returns what it printed as JSON: how the
 * CommonJS host suites call into scripts/lab. Fails the test when the child fails.
 */
export function evalModule(source: string): unknown {
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', source], { encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
  return JSON.parse(result.stdout);
}
