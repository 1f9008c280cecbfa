/** Assertions shared by the host and device suites. */
import { strict as assert } from 'node:assert';
import { VdpaError } from '../lib';

/**
 * Awaits `promise` and asserts it rejects with a VdpaError of `code` (and a
 * message matching `message`, when given). Returns the error for further checks.
 */
export async function rejects(promise: Promise<unknown>, code: string, message?: RegExp): Promise<VdpaError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof VdpaError, `expected VdpaError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (message !== undefined) assert.match(error.message, message);
    return error;
  }
  assert.fail(`expected a rejection with ${code}`);
}
