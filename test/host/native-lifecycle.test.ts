import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

// These run a child Node process because the defects they guard against take
// the whole process down (std::terminate → exit 134, SIGSEGV → 139).
const LIB = path.resolve(__dirname, '../../lib');

function runChild(
  source: string,
  timeoutMs = 60_000,
): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, ['-e', source], {
    encoding: 'utf8',
    timeout: timeoutMs,
    env: { ...process.env, VDPA_LIB: LIB },
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function explain(result: { status: number | null; stdout: string; stderr: string }): string {
  return `exit status ${String(result.status)}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
}

describe('exceptions thrown by fd-watch callbacks', () => {
  it('reach process.on("uncaughtException") from an eventfd watch, and the process goes on', () => {
    const result = runChild(`
      const { EventFd } = require(process.env.VDPA_LIB);
      const fd = new EventFd();
      let calls = 0;
      process.on('uncaughtException', (error) => {
        console.log('caught: ' + error.message);
        if (calls === 2) fd.close();
      });
      fd.watch(() => {
        calls++;
        if (calls === 1) setTimeout(() => fd.signal(), 1);
        throw new Error('thrown by listener ' + calls);
      });
      fd.signal();
    `);
    assert.equal(result.status, 0, explain(result));
    assert.equal(result.stdout, 'caught: thrown by listener 1\ncaught: thrown by listener 2\n');
  });

  it('reach process.on("uncaughtException") from a netlink socket watch', () => {
    // A request to a nonexistent generic netlink family: the kernel answers
    // with an error datagram, which wakes the watch.
    const result = runChild(`
      const { openNativeTransport } = require(process.env.VDPA_LIB + '/mgmt/native-netlink');
      const { encodeMessage, NLM_F_REQUEST, NLM_F_ACK } = require(process.env.VDPA_LIB + '/mgmt/netlink');
      const transport = openNativeTransport(16);
      process.on('uncaughtException', (error) => {
        console.log('caught: ' + error.message);
        transport.close();
      });
      transport.listen(() => { throw new Error('thrown by netlink listener'); });
      transport.send(encodeMessage(0x10, NLM_F_REQUEST | NLM_F_ACK, 1, transport.portId, Buffer.alloc(4)));
    `);
    assert.equal(result.status, 0, explain(result));
    assert.equal(result.stdout, 'caught: thrown by netlink listener\n');
  });

  it('without a handler, end the process like any uncaught exception (status 1, the error printed)', () => {
    const result = runChild(`
      const { EventFd } = require(process.env.VDPA_LIB);
      const fd = new EventFd();
      fd.watch(() => { throw new Error('nobody catches this'); });
      fd.signal();
    `);
    assert.equal(result.status, 1, explain(result));
    assert.match(result.stderr, /nobody catches this/);
  });
});

describe('Worker threads that end with live native objects', function () {
  // 25 Workers each: a few seconds on an idle machine, much longer on a loaded one.
  this.timeout(120_000);

  // Each Worker opens an eventfd and a netlink socket, both watched, plus a
  // DeviceHandle on a plain file, DMA memory, a watched VduseFile (on a FIFO)
  // and a FileMapping of the DMA memory's fd, then exits (process.exit)
  // or is terminated. The main thread checks that it survives and that no
  // descriptor leaked.
  const workerSource = `
    const { parentPort, workerData } = require('node:worker_threads');
    const lib = require(workerData.lib);
    const { openNativeTransport } = require(workerData.lib + '/mgmt/native-netlink');
    const { native } = require(workerData.lib + '/native');
    const eventfd = new lib.EventFd();
    eventfd.watch(() => {});
    eventfd.signal();
    const netlink = openNativeTransport(16);
    netlink.listen(() => {});
    netlink.setRef(true);
    new native.DeviceHandle(workerData.file);
    const region = lib.DmaRegion.allocate(8192);
    region.bytes[0] = 1;
    // VDUSE: a watched device file (a FIFO stands in for /dev/vduse/NAME) and a mapping of an fd.
    const vduseFile = new native.VduseFile(workerData.fifo, true);
    vduseFile.watch(() => {});
    new Uint8Array(new native.FileMapping(region.fd, 0, 8192, 3).buffer)[1] = 2;
    parentPort.postMessage('ready');
    if (workerData.how === 'exit') setTimeout(() => process.exit(0), 1);
  `;

  for (const how of ['exit', 'terminate'] as const) {
    it(`leave the main thread running when they ${how === 'exit' ? 'call process.exit()' : 'are terminated'}, 25 times`, () => {
      const result = runChild(`
        const fs = require('node:fs');
        const os = require('node:os');
        const path = require('node:path');
        const { Worker } = require('node:worker_threads');
        const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-worker-')), 'device');
        fs.writeFileSync(file, '');
        const fifo = path.join(path.dirname(file), 'fifo');
        require('node:child_process').execFileSync('mkfifo', [fifo]);
        // The first Worker opens descriptors Node keeps for later ones; count from its end.
        let before;
        let remaining = 26;
        const next = () => {
          if (remaining === 25) before = fs.readdirSync('/proc/self/fd').length;
          if (remaining-- === 0) {
            // Finalizers of the Workers' objects ran during their teardown.
            const after = fs.readdirSync('/proc/self/fd').length;
            console.log('descriptors leaked: ' + (after - before));
            return;
          }
          const worker = new Worker(${JSON.stringify(workerSource)}, {
            eval: true,
            workerData: { lib: process.env.VDPA_LIB, file, fifo, how: ${JSON.stringify(how)} },
          });
          worker.on('message', () => { if (${JSON.stringify(how)} === 'terminate') worker.terminate(); });
          worker.on('error', (error) => { console.log('worker error: ' + error.message); process.exitCode = 2; });
          worker.on('exit', next);
        };
        next();
      `);
      assert.equal(result.status, 0, explain(result));
      assert.equal(result.stdout, 'descriptors leaked: 0\n', explain(result));
    });
  }
});

describe('Worker threads terminated while their fd-watch callbacks are running', function () {
  this.timeout(120_000);

  // Eight eventfds whose callbacks signal again (a call into the addon), a
  // watched netlink socket and a watched VduseFile: termination lands inside a
  // callback or a native method most of the time. Before the addon was built
  // with NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS this aborted the process in
  // every run of 40 Workers ("FATAL ERROR: Error::Error napi_define_properties"
  // from FdPoller::OnPoll, or std::terminate from EventFd.signal()).
  const workerSource = `
    const { parentPort, workerData } = require('node:worker_threads');
    const lib = require(workerData.lib);
    const { openNativeTransport } = require(workerData.lib + '/mgmt/native-netlink');
    const { native } = require(workerData.lib + '/native');
    for (let i = 0; i < 8; i++) {
      const eventfd = new lib.EventFd();
      eventfd.watch(() => eventfd.signal());
      eventfd.signal();
    }
    openNativeTransport(16).listen(() => {});
    new native.VduseFile(workerData.fifo, true).watch(() => {});
    parentPort.postMessage('ready');
  `;

  it('leave the main thread running, 40 times', () => {
    const result = runChild(`
      const fs = require('node:fs');
      const os = require('node:os');
      const path = require('node:path');
      const { Worker } = require('node:worker_threads');
      const fifo = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-worker-')), 'fifo');
      require('node:child_process').execFileSync('mkfifo', [fifo]);
      let remaining = 40;
      const next = () => {
        if (remaining-- === 0) {
          console.log('all terminated');
          return;
        }
        const worker = new Worker(${JSON.stringify(workerSource)}, {
          eval: true,
          workerData: { lib: process.env.VDPA_LIB, fifo },
        });
        // 0-3 ms after 'ready': the callbacks are firing continuously by then.
        worker.on('message', () => setTimeout(() => void worker.terminate(), (remaining % 4)));
        worker.on('error', (error) => { console.log('worker error: ' + error.message); process.exitCode = 2; });
        worker.on('exit', next);
      };
      next();
    `);
    assert.equal(result.status, 0, explain(result));
    assert.equal(result.stdout, 'all terminated\n', explain(result));
  });
});
