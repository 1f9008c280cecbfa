/** `vhost-vdpa net …` argument handling on the host (the commands themselves run in the lab suite). */
import { strict as assert } from 'node:assert';
import type { CliContext } from '../../lib/cli/context';
import { runCli } from '../../lib/cli/run';
import type { VdpaManagement } from '../../lib/mgmt/vdpa';

async function run(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const ctx: CliContext = {
    stdout: (t) => (out += t),
    stderr: (t) => (err += t),
    openManager: () => Promise.reject(new Error('no netlink in this test')) as Promise<VdpaManagement>,
    paths: { sys: '/nonexistent/sys', dev: '/nonexistent/dev', proc: '/proc' },
    env: {},
  };
  const code = await runCli(argv, ctx);
  return { code, out, err };
}

describe('cli: net commands (host)', () => {
  it('lists send, capture and loopback-test under `net --help`', async () => {
    const { code, out } = await run('net', '--help');
    assert.equal(code, 0);
    for (const name of ['net send', 'net capture', 'net loopback-test']) assert.ok(out.includes(name), out);
  });

  it('refuses bad numbers and MACs with a usage error (exit 2) before opening anything', async () => {
    let r = await run('net', 'send', '/dev/vhost-vdpa-99', '--count', 'many');
    assert.equal(r.code, 2);
    assert.match(r.err, /--count must be an integer from 1 to/);
    r = await run('net', 'send', '/dev/vhost-vdpa-99', '--dst', '52:54:00');
    assert.equal(r.code, 2);
    assert.match(r.err, /--dst: "52:54:00" is not a MAC address/);
    r = await run('net', 'loopback-test', '/dev/vhost-vdpa-99', '--window', '0');
    assert.equal(r.code, 2);
    assert.match(r.err, /--window must be an integer from 1/);
    r = await run('net', 'capture');
    assert.equal(r.code, 2);
    assert.match(r.err, /missing DEV/);
  });

  it('says how to get a char device for a vdpa device name it cannot find', async () => {
    const r = await run('net', 'send', 'net9', '--json');
    assert.equal(r.code, 3, 'not found');
    assert.match(r.err, /no vdpa device named "net9"/);
    assert.match(r.out, /"code": "ENODEV"/);
  });
});
