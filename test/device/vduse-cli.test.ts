/**
 * `vhost-vdpa vduse blk` as a daemon: what it prints, a clean SIGTERM, and recovery after SIGKILL — including a
 * SIGKILL while a driver (our BlockDevice, in this process) has the device open: the kernel then waits
 * msg_timeout for the dead daemon on the next status write (the close), marks the device broken, and the next
 * start of the CLI destroys the stale device and says so.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';

import { BlockDevice } from '../../lib';
import { deviceExists } from '../../lib/mgmt/sysfs';

const CLI = resolve(__dirname, '..', '..', '..', 'dist', 'cli', 'main.js');
let serial = 0;
const uniqueName = (): string => `tvc-${process.pid}-${++serial}`;

interface Daemon {
  child: ChildProcess;
  summary: { name: string; chardev: string | null; capacity: number; ring: string; pid: number };
  stderr(): string;
  exited: Promise<number | null>;
}

/** Starts the CLI and resolves once it printed its JSON summary. */
function startCli(args: string[]): Promise<Daemon> {
  const child = spawn(process.execPath, [CLI, 'vduse', 'blk', '--json', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((ok) => child.on('exit', (code) => ok(code)));
  return new Promise((ok, fail) => {
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      let summary: Daemon['summary'];
      try {
        summary = JSON.parse(out) as Daemon['summary']; // one (pretty-printed) JSON object
      } catch {
        return; // not all of it yet
      }
      ok({ child, summary, stderr: () => err, exited });
    });
    void exited.then((code) =>
      fail(new Error(`the CLI exited (${String(code)}) before printing: ${err}${out}`)),
    );
  });
}

describe('vhost-vdpa vduse blk (CLI daemon)', function () {
  this.timeout(180_000);
  const running: ChildProcess[] = [];
  after(() => {
    for (const child of running) if (child.exitCode === null) child.kill('SIGTERM');
  });

  it('prints what it created as JSON and detaches cleanly on SIGTERM (exit 0, vdpa and VDUSE devices gone)', async () => {
    const name = uniqueName();
    const daemon = await startCli(['--name', name, '--ram', '16M', '--packed', '--queues', '2']);
    running.push(daemon.child);
    assert.equal(daemon.summary.name, name);
    assert.match(daemon.summary.chardev ?? '', /^\/dev\/vhost-vdpa-\d+$/);
    assert.equal(daemon.summary.capacity, 16 << 20);
    assert.equal(daemon.summary.ring, 'packed');
    assert.ok(deviceExists(name) && existsSync(`/dev/vduse/${name}`));
    daemon.child.kill('SIGTERM');
    assert.equal(await daemon.exited, 0, daemon.stderr());
    assert.match(daemon.stderr(), /SIGTERM: detaching/);
    assert.equal(deviceExists(name), false);
    assert.equal(existsSync(`/dev/vduse/${name}`), false);
  });

  it('after SIGKILL, the next start destroys the stale device, says so, and serves again', async () => {
    const name = uniqueName();
    const first = await startCli(['--name', name, '--ram', '16M']);
    first.child.kill('SIGKILL');
    await first.exited;
    assert.ok(existsSync(`/dev/vduse/${name}`), 'SIGKILL leaves the VDUSE device behind');
    const second = await startCli(['--name', name, '--ram', '16M']);
    running.push(second.child);
    assert.match(
      second.stderr(),
      new RegExp(`destroyed a stale VDUSE device "${name}" \\(and its vdpa device\\)`),
    );
    const disk = BlockDevice.open(second.summary.chardev as string);
    await disk.write(0, Buffer.alloc(4096, 1));
    assert.equal((await disk.read(0, 4096))[0], 1);
    await disk.close();
    second.child.kill('SIGTERM');
    assert.equal(await second.exited, 0, second.stderr());
  });

  it('SIGKILL with a driver using the device: its close waits msg_timeout, then the next start recovers', async () => {
    const name = uniqueName();
    const first = await startCli(['--name', name, '--ram', '16M']);
    writeFileSync(`/sys/class/vduse/${name}/msg_timeout`, '3'); // the kernel's default is 30 s
    const disk = BlockDevice.open(first.summary.chardev as string, { requestTimeoutMs: 1000 });
    await disk.write(0, Buffer.alloc(4096, 2));
    first.child.kill('SIGKILL');
    await first.exited;
    // A request now never completes (no daemon): the driver's deadline fails it. Its recovery resets the device,
    // which waits msg_timeout for the dead daemon; the device is then broken for good.
    await assert.rejects(disk.read(0, 4096));
    const closing = Date.now();
    await disk.close({ drain: false });
    const closeMs = Date.now() - closing;
    const second = await startCli(['--name', name, '--ram', '16M']);
    running.push(second.child);
    assert.match(second.stderr(), /destroyed a stale VDUSE device/);
    second.child.kill('SIGTERM');
    assert.equal(await second.exited, 0, second.stderr());
    console.log(`      (close after SIGKILL took ${closeMs} ms with msg_timeout 3 s)`);
  });
});
