import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import type { CliContext } from '../../lib/cli/context';
import { exitCodeFor } from '../../lib/cli/output';
import { runCli } from '../../lib/cli/run';
import {
  classifyErrorCode,
  ERROR_CATEGORIES,
  ERROR_CODE_CATEGORIES,
  type ErrorCategory,
} from '../../lib/error-categories';
import { ErrorCodes, VdpaError } from '../../lib/errors';
import { SYSTEM_PATHS } from '../../lib/mgmt/sysfs';
import type { ServiceBackend } from '../../lib/service/methods';
import { rpcCodeFor, ManagementService } from '../../lib/service/server';
import { ERR_QUEUE_CORRUPT } from '../../lib/virtqueue';

/** lib/ in the source tree (the tests run from dist-test/test/host). */
const LIB = path.join(__dirname, '..', '..', '..', 'lib');

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** errno names Node knows, plus the kernel's ENOTSUPP (524), which the addon reports by that name. */
const ERRNO_NAMES = new Set([...Object.keys(os.constants.errno), 'ENOTSUPP']);
const CODE_VALUES = new Set<string>(Object.values(ErrorCodes));

describe('error codes', () => {
  it('throws no code in lib/ that is not in ErrorCodes or an errno name, and spells ERR_* only through ErrorCodes', () => {
    const files = sourceFiles(LIB);
    assert.ok(files.length > 30, `found the sources (${files.length} files under ${LIB})`);
    const problems: string[] = [];
    for (const file of files) {
      const relative = path.relative(LIB, file);
      fs.readFileSync(file, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          const where = `lib/${relative}:${i + 1}`;
          for (const [, code] of line.matchAll(/code: '([^']*)'/g)) {
            if (!ERRNO_NAMES.has(code as string) && !CODE_VALUES.has(code as string)) {
              problems.push(`${where}: code '${code}' is neither in ErrorCodes nor an errno name`);
            }
          }
          if (relative === 'errors.ts') return;
          for (const [literal] of line.matchAll(/'ERR_[A-Z_]*'/g)) {
            // Node's own codes, read (never thrown) where a Node API's error is translated into ours.
            if (literal.startsWith("'ERR_PARSE_ARGS_")) continue;
            problems.push(`${where}: ${literal} written as a literal; use ErrorCodes.X`);
          }
        });
    }
    assert.deepEqual(problems, []);
  });

  it('keeps ERR_QUEUE_CORRUPT (a public export) as the very ErrorCodes.QUEUE_CORRUPT', () => {
    assert.equal(ERR_QUEUE_CORRUPT, ErrorCodes.QUEUE_CORRUPT);
  });
});

describe('error codes: one category table for the CLI and the service', () => {
  it('gives every ErrorCodes value a category, and every category its own JSON-RPC code', () => {
    for (const [name, code] of Object.entries(ErrorCodes)) {
      assert.ok(
        Object.prototype.hasOwnProperty.call(ERROR_CODE_CATEGORIES, code),
        `ErrorCodes.${name} (${code}) has a category in lib/error-categories.ts`,
      );
    }
    const rpcCodes = Object.values(ERROR_CATEGORIES).map((c) => c.jsonRpcCode);
    assert.equal(new Set(rpcCodes).size, rpcCodes.length, 'no two categories share a JSON-RPC code');
  });

  it('classifies the codes the CLI and the service used to disagree on, and the driver core codes', () => {
    const expected: Record<string, ErrorCategory> = {
      ENXIO: 'not-found',
      ENOTTY: 'unsupported',
      ETIMEDOUT: 'timeout',
      ERR_BUSY: 'busy',
      ERR_RESET: 'retry',
      ERR_DEVICE_FAILED: 'device',
      EAGAIN: 'failure', // not in the table
    };
    for (const [code, category] of Object.entries(expected)) {
      assert.equal(classifyErrorCode(code).category, category, code);
      assert.equal(exitCodeFor(code), ERROR_CATEGORIES[category].exitStatus, `exit status for ${code}`);
      assert.equal(rpcCodeFor(code), ERROR_CATEGORIES[category].jsonRpcCode, `JSON-RPC code for ${code}`);
    }
  });

  describe('end to end: the same failure through `vhost-vdpa` and through the service', () => {
    let dir: string;
    let socketPath: string;
    let failWith = '';
    let service: ManagementService;
    let client: net.Socket;
    let lines: string[] = [];
    let waiting: ((line: string) => void) | undefined;

    const failing = async (): Promise<never> => {
      throw new VdpaError(`failed with ${failWith}`, { code: failWith });
    };
    const backend: ServiceBackend = {
      listInterfaces: failing,
      createInterface: failing,
      destroyInterface: failing,
      getStats: failing,
      close: () => undefined,
    };

    before(async () => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-codes-'));
      socketPath = path.join(dir, 's.sock');
      service = await ManagementService.start({ socketPath, backend });
      client = net.connect(socketPath);
      client.setEncoding('utf8');
      let buffer = '';
      client.on('data', (chunk: string) => {
        buffer += chunk;
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (waiting !== undefined) waiting(line);
          else lines.push(line);
        }
      });
    });
    after(async () => {
      client.destroy();
      await service.close();
      fs.rmSync(dir, { recursive: true, force: true });
    });

    async function serviceAnswer(code: string): Promise<number> {
      failWith = code;
      client.write(JSON.stringify({ jsonrpc: '2.0', method: 'list-interfaces', id: code }) + '\n');
      const line =
        lines.shift() ??
        (await new Promise<string>((resolve) => {
          waiting = (l) => {
            waiting = undefined;
            resolve(l);
          };
        }));
      const answer = JSON.parse(line) as { id: string; error: { code: number; data: { code: string } } };
      assert.equal(answer.id, code);
      assert.equal(answer.error.data.code, code);
      return answer.error.code;
    }

    async function cliExitStatus(code: string): Promise<number> {
      const ctx: CliContext = {
        stdout: () => undefined,
        stderr: () => undefined,
        openManager: async () => {
          throw new VdpaError(`failed with ${code}`, { code });
        },
        paths: SYSTEM_PATHS,
        env: {},
      };
      return runCli(['mgmtdev', 'list'], ctx);
    }

    it('agrees on the category of every code in the table (and of one outside it)', async () => {
      lines = [];
      for (const code of [...Object.keys(ERROR_CODE_CATEGORIES), 'EAGAIN']) {
        const { category, exitStatus, jsonRpcCode } = classifyErrorCode(code);
        const rpc = await serviceAnswer(code);
        const exit = await cliExitStatus(code);
        assert.equal(rpc, jsonRpcCode, `service answers ${code} as ${category}`);
        assert.equal(exit, exitStatus, `vhost-vdpa exits ${code} as ${category}`);
      }
    });
  });
});
