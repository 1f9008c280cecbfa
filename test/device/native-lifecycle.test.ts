import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { DmaRegion, VhostVdpaDevice } from '../../lib';
import { labDevice } from './helpers';

// A Worker that dies with a device open, DMA memory mapped and an eventfd
// watched must leave the process running and the device closed. Run in a
// child process: the defect took the whole process down (SIGSEGV).
const LIB = path.resolve(__dirname, '../../lib');

describe('Worker threads that end with a vhost-vdpa device open', () => {
  for (const how of ['terminate', 'exit'] as const) {
    it(`closes the device when the Worker ${how === 'exit' ? 'calls process.exit()' : 'is terminated'}: the main thread opens it again, 5 times`, () => {
      const chardev = labDevice('blk0').chardev;
      const workerSource = `
        const { parentPort, workerData } = require('node:worker_threads');
        const { VhostVdpaDevice, DmaRegion, EventFd } = require(workerData.lib);
        const device = VhostVdpaDevice.open(workerData.chardev);
        const region = DmaRegion.allocate(65536);
        device.map(region);
        const call = new EventFd();
        call.watch(() => {});
        device.setVringCall(0, call.fd);
        parentPort.postMessage(device.mappings.length);
        if (workerData.how === 'exit') setTimeout(() => process.exit(0), 1);
      `;
      const result = spawnSync(
        process.execPath,
        [
          '-e',
          `
          const { Worker } = require('node:worker_threads');
          const { VhostVdpaDevice } = require(process.env.VDPA_LIB);
          const chardev = ${JSON.stringify(chardev)};
          let round = 0;
          const next = () => {
            if (round > 0) {
              // The Worker's descriptor is closed: vhost-vdpa allows one open at a time (EBUSY otherwise).
              const again = VhostVdpaDevice.open(chardev);
              again.close();
              console.log('reopened after round ' + round);
            }
            if (round++ === 5) return;
            const worker = new Worker(${JSON.stringify(workerSource)}, {
              eval: true,
              workerData: { lib: process.env.VDPA_LIB, chardev, how: ${JSON.stringify(how)} },
            });
            worker.on('message', (mapped) => {
              if (mapped !== 1) { console.log('worker mapped ' + mapped); process.exitCode = 3; }
              if (${JSON.stringify(how)} === 'terminate') worker.terminate();
            });
            worker.on('error', (error) => { console.log('worker error: ' + error.message); process.exitCode = 2; });
            worker.on('exit', next);
          };
          next();
          `,
        ],
        { encoding: 'utf8', timeout: 60_000, env: { ...process.env, VDPA_LIB: LIB } },
      );
      const detail = `status ${String(result.status)} signal ${String(result.signal)}\n${result.stdout}\n${result.stderr}`;
      assert.equal(result.status, 0, detail);
      assert.equal(result.stdout.trim().split('\n').length, 5, detail);
      assert.match(result.stdout, /reopened after round 5/, detail);
    });
  }
});

describe('an IOTLB mapping on a real device holds its DmaRegion', () => {
  it('free() refuses with ERR_BUSY while blk0 maps the region, and succeeds after unmap or close', () => {
    const device = VhostVdpaDevice.open(labDevice('blk0').chardev);
    try {
      const mapping = device.map(DmaRegion.allocate(65536));
      const region = mapping.region!;
      assert.throws(() => region.free(), { code: 'ERR_BUSY', path: device.path });
      device.unmap(mapping);
      region.free();
      const second = DmaRegion.allocate(65536);
      device.map(second);
      device.close();
      second.free();
    } finally {
      device.close();
    }
  });
});
