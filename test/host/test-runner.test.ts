import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';

/** The repository root (the tests run from dist-test/test/host). */
const ROOT = path.join(__dirname, '..', '..', '..');
const MOCHA = path.join(ROOT, 'node_modules', 'mocha', 'bin', 'mocha.js');

interface Summary {
  passes: number;
  failures: number;
  pending: number;
  declared?: number;
  ran?: number;
}
const { tallySuite } = createRequire(__filename)(path.join(ROOT, 'scripts', 'test-tally.cjs')) as {
  tallySuite(
    name: string,
    summary: Summary | undefined,
    exitCode: number,
  ): { passed: number; failed: number; notes: string[] };
};

/** Runs mocha on one fixture with our reporter; returns its exit status and summary. */
function runFixture(
  fixture: string,
  extra: string[] = [],
): { status: number; summary?: Summary; output: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-runner-'));
  const file = path.join(dir, 'summary.json');
  try {
    const result = spawnSync(
      process.execPath,
      [MOCHA, '--reporter', './test/reporter.cjs', ...extra, path.join('test', 'fixtures', fixture)],
      { cwd: ROOT, encoding: 'utf8', env: { ...process.env, VDPA_TEST_SUMMARY: file } },
    );
    const summary = fs.existsSync(file) ? (JSON.parse(fs.readFileSync(file, 'utf8')) as Summary) : undefined;
    return { status: result.status ?? 1, summary, output: result.stdout + result.stderr };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('test runner (scripts/test.mjs, test/reporter.cjs, test/mocharc.*.json)', () => {
  it('counts tests a failing before() hook skipped as failures, and says so', () => {
    const { status, summary, output } = runFixture('hook-skips-tests.fixture.cjs');
    assert.notEqual(status, 0, output);
    assert.deepEqual(summary, { passes: 1, failures: 1, pending: 1, declared: 4, ran: 2 });
    const tally = tallySuite('host', summary, status);
    assert.equal(tally.passed, 1);
    // 1 hook failure + 1 pending + 2 tests that never ran
    assert.equal(tally.failed, 4);
    assert.match(tally.notes.join('\n'), /host suite: 4 tests declared, only 2 ran .*2 never ran/);
  });

  it('counts a suite that ran everything it declared as it is', () => {
    const tally = tallySuite('device', { passes: 7, failures: 0, pending: 0, declared: 7, ran: 7 }, 0);
    assert.deepEqual(tally, { passed: 7, failed: 0, notes: [] });
  });

  it('refuses .only in both suites (forbidOnly), so a forgotten .only cannot hide the other tests', () => {
    for (const suite of ['host', 'device']) {
      const config = JSON.parse(
        fs.readFileSync(path.join(ROOT, 'test', `mocharc.${suite}.json`), 'utf8'),
      ) as {
        forbidOnly?: boolean;
      };
      assert.equal(config.forbidOnly, true, `test/mocharc.${suite}.json sets forbidOnly`);
    }
    const { status, output } = runFixture('only.fixture.cjs', ['--forbid-only']);
    assert.notEqual(status, 0);
    assert.match(output, /forbidOnly|\.only/);
  });

  it('compiles before running the host suite (npm run test:host on a fresh clone)', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as {
      scripts: Record<string, string>;
    };
    assert.match(
      pkg.scripts['test:host'] ?? '',
      /^tsc -p tsconfig\.json && tsc -p tsconfig\.test\.json && mocha --config test\/mocharc\.host\.json$/,
    );
  });
});
