import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';

import { VhostVdpaDevice, VIRTIO_CONFIG_S_ACKNOWLEDGE } from '../../lib';
import { deviceExists, resolveCharDev } from '../../lib/mgmt/sysfs';
import { VdpaManager } from '../../lib/mgmt/vdpa';
import { labDevice } from './helpers';

/** Records the longest gap between ticks of a 10 ms interval while `body` runs. */
async function measureLoop<T>(
  body: () => Promise<T>,
): Promise<{ value: T; maxGapMs: number; ticks: number }> {
  let last = performance.now();
  let maxGapMs = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGapMs = Math.max(maxGapMs, now - last);
    last = now;
    ticks++;
  }, 10);
  try {
    const value = await body();
    maxGapMs = Math.max(maxGapMs, performance.now() - last);
    return { value, maxGapMs, ticks };
  } finally {
    clearInterval(timer);
  }
}

describe('async device calls on real devices', () => {
  for (const name of ['blk0', 'vduse0']) {
    it(`setStatusAsync, resetAsync and closeAsync work on ${name}, and the device opens again`, async () => {
      const chardev = labDevice(name).chardev;
      const device = VhostVdpaDevice.open(chardev);
      await device.resetAsync();
      await device.setStatusAsync(VIRTIO_CONFIG_S_ACKNOWLEDGE);
      assert.equal(device.getStatus(), VIRTIO_CONFIG_S_ACKNOWLEDGE);
      await device.resetAsync();
      assert.equal(device.getStatus(), 0);
      await device.setStatusAsync(VIRTIO_CONFIG_S_ACKNOWLEDGE);
      const { maxGapMs } = await measureLoop(() => device.closeAsync());
      console.log(`      closeAsync of ${name}: longest event-loop gap ${maxGapMs.toFixed(1)} ms`);
      assert.equal(device.closed, true);
      VhostVdpaDevice.open(chardev).close();
    });
  }
});

describe('VdpaManager.deleteDevice while another process holds the device', () => {
  const NAME = 'deltest0';
  const HOLD_MS = 1500;
  // Sent on the loop, DEV_DEL froze it for the whole hold (measured: 2175 ms gap for a 1500 ms hold).
  // Off the loop the target is < 100 ms, but the TCG lab guest on a shared host stalls by itself: with no
  // DEV_DEL at all, gaps of 243 and 392 ms were measured. So the assertion separates "blocked for the hold"
  // from "running" with margin, and the log line gives the number together with a baseline.
  const MAX_GAP_MS = 500;

  /** A process that opens `chardev` and closes it by itself after HOLD_MS (a blocked loop could not tell it to). */
  async function holdOpen(chardev: string): Promise<{ exited: Promise<unknown> }> {
    const child = spawn(
      process.execPath,
      [
        '-e',
        `const fs = require('node:fs');
         const fd = fs.openSync(${JSON.stringify(chardev)}, 'r+');
         process.stdout.write('open\\n');
         setTimeout(() => { fs.closeSync(fd); process.exit(0); }, ${HOLD_MS});`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = once(child, 'exit');
    await once(child.stdout!, 'data');
    return { exited };
  }

  it('keeps the event loop running while the kernel waits in DEV_DEL, then completes', async () => {
    const manager = await VdpaManager.open();
    try {
      if (deviceExists(NAME)) await manager.deleteDevice(NAME);
      await manager.addDevice({ name: NAME, mgmtdev: 'vdpasim_blk' });
      const chardev = await resolveCharDev(NAME);

      // The same window without DEV_DEL: a holder, open until it exits by itself.
      const idle = await holdOpen(chardev);
      const baseline = await measureLoop(() => idle.exited);
      const { exited } = await holdOpen(chardev);
      const started = performance.now();
      const { maxGapMs, ticks } = await measureLoop(() =>
        manager.deleteDevice(NAME, { checkHolders: false }),
      );
      const tookMs = performance.now() - started;
      await exited;
      console.log(
        `      DEV_DEL waited ${tookMs.toFixed(0)} ms for the holder; longest event-loop gap ` +
          `${maxGapMs.toFixed(1)} ms over ${ticks} ticks of a 10 ms interval (baseline without DEV_DEL: ` +
          `${baseline.maxGapMs.toFixed(1)} ms)`,
      );
      assert.ok(
        tookMs > HOLD_MS / 2,
        `DEV_DEL returned after ${tookMs} ms: the kernel did not wait for the holder`,
      );
      assert.ok(maxGapMs < MAX_GAP_MS, `the event loop stalled for ${maxGapMs.toFixed(1)} ms`);
      assert.equal(deviceExists(NAME), false);
    } finally {
      if (deviceExists(NAME))
        await manager.deleteDevice(NAME, { checkHolders: false }).catch(() => undefined);
      manager.close();
    }
  });
});
