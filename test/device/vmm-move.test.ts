import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bit, EventFd, GuestMemory, VdpaBackend, VirtioF } from '../../lib';
import { rejects } from '../assertions';
import { testDevices } from './helpers';

/** What examples/vmm-move.js --json reports per move. */
interface MoveResult {
  label: string;
  method: string;
  moved: boolean;
  submitted: number;
  completed: number;
  lost: number;
  duplicated: number;
  dataOk: boolean;
  errors: string[];
  inFlightAtPause: number;
  availNotUsedAtPause: number;
  pauseToResumeMs: number;
  verifiedBlocks: number;
}

const EXAMPLE = path.join(__dirname, '..', '..', '..', 'examples', 'vmm-move.js');

/** Runs the example (a second process plays VMM B); returns its JSON report. */
function runMove(backend: 'sim' | 'vduse', requests: number): MoveResult {
  const r = spawnSync(
    process.execPath,
    [EXAMPLE, '--backend', backend, '--requests', String(requests), '--json'],
    {
      encoding: 'utf8',
      timeout: 240_000,
    },
  );
  assert.equal(r.status, 0, `vmm-move exited ${String(r.status)}:\n${r.stdout}\n${r.stderr}`);
  const last = r.stdout.trim().split('\n').pop() ?? '';
  const [result] = JSON.parse(last) as MoveResult[];
  process.stdout.write(`      ${JSON.stringify(result)}\n`);
  return result;
}

function assertExactlyOnce(r: MoveResult): void {
  assert.ok(r.moved, 'the move happened mid-run');
  assert.deepEqual(r.errors, []);
  assert.equal(r.lost, 0, 'no request lost');
  assert.equal(r.duplicated, 0, 'no request completed twice');
  assert.equal(r.completed, r.submitted);
  assert.ok(r.dataOk);
  assert.ok(r.verifiedBlocks > 0, 'the blocks written were read back on device B');
}

describe('vmm: live move of a running guest between two devices', function () {
  this.timeout(300_000);
  const devices = testDevices();
  const blk0 = devices.find((d) => d.mgmtdev === 'vdpasim_blk');
  const vduse0 = devices.find((d) => d.name === 'vduse0');

  it('the lab loads vdpa_sim_blk with shared_backend=1', () => {
    assert.ok(blk0, 'the lab has a vdpa_sim_blk device');
    assert.equal(fs.readFileSync('/sys/module/vdpa_sim_blk/parameters/shared_backend', 'utf8').trim(), 'Y');
  });

  it('vdpa_sim_blk: SUSPEND on A, state file, second process restores on B; 0 lost, 0 duplicated, data verified', () => {
    assert.ok(blk0, 'the lab has a vdpa_sim_blk device');
    const r = runMove('sim', 3000);
    assert.equal(r.method, 'suspend');
    assertExactlyOnce(r);
  });

  it('VDUSE: no SUSPEND, reset-and-rewind onto a second VDUSE device over the same image; exactly once', () => {
    assert.ok(vduse0, 'the lab has vduse0');
    const r = runMove('vduse', 2000);
    assert.equal(r.method, 'reset-and-rewind');
    assertExactlyOnce(r);
  });

  it('VDUSE refuses pause() without allowReset (no VHOST_BACKEND_F_SUSPEND) and stays active', async () => {
    assert.ok(vduse0, 'the lab has vduse0');
    const backend = VdpaBackend.open({ path: vduse0.chardev, numQueues: 1 });
    const memory = new GuestMemory();
    const kick = new EventFd();
    const call = new EventFd();
    try {
      memory.addRegion({ gpa: 0x40000000, size: 1024 * 1024 });
      assert.equal(backend.canSuspend, false);
      const features = backend.deviceFeatures & (bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM));
      backend.activate({
        memory,
        features,
        queues: [
          {
            size: 64,
            descGpa: 0x40000000n,
            availGpa: 0x40001000n,
            usedGpa: 0x40002000n,
            kickFd: kick.fd,
            callFd: call.fd,
          },
        ],
      });
      await rejects(backend.pause(), 'ERR_UNSUPPORTED', /cannot suspend/);
      assert.equal(backend.phase, 'active');
    } finally {
      await backend.close();
      kick.close();
      call.close();
      memory.free();
    }
  });
});
