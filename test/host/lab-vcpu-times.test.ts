import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { evalModule, LAB_DIR } from './lab-module';

const MODULE = JSON.stringify(path.join(LAB_DIR, 'vcpu-times.mjs'));

describe('lab: host CPU time of the vCPUs on the guest’s request', () => {
  it('finds QEMU’s vCPU threads by name and reads their CPU time', () => {
    // A stand-in for QEMU: a shell that names itself like a vCPU thread and burns a little CPU.
    const times = evalModule(
      `import { spawn } from 'node:child_process';
       import { vcpuThreadTimes } from ${MODULE};
       const child = spawn('sh', ['-c', 'printf "CPU 1/TCG" > /proc/$$/comm; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 5'], { stdio: 'ignore' });
       await new Promise((r) => setTimeout(r, 300));
       const t = vcpuThreadTimes(child.pid);
       const mine = vcpuThreadTimes(process.pid);
       child.kill();
       console.log(JSON.stringify({ cpus: [...t.keys()], ns: t.get(1), mine: mine.size }));`,
    ) as { cpus: number[]; ns: number; mine: number };
    assert.deepEqual(times.cpus, [1]);
    assert.ok(times.ns > 0, `CPU time ${times.ns} ns`);
    assert.equal(times.mine, 0, 'a process without vCPU threads has none');
  });

  it('answers each new label once, with a line the guest can parse', () => {
    const lines = evalModule(
      `import fs from 'node:fs';
       import os from 'node:os';
       import path from 'node:path';
       import { watchVcpuMarks } from ${MODULE};
       const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vcpu-times-'));
       const stop = watchVcpuMarks(dir, process.pid);
       const wait = () => new Promise((r) => setTimeout(r, 100));
       const keepAlive = setInterval(() => {}, 1000); // the watcher's timer is unref'ed
       fs.writeFileSync(path.join(dir, 'vcpu-mark'), 'run1-start\\n');
       await wait();
       fs.writeFileSync(path.join(dir, 'vcpu-mark'), 'run1-start\\n');
       await wait();
       fs.writeFileSync(path.join(dir, 'vcpu-mark'), 'run1-end\\n');
       await wait();
       stop();
       clearInterval(keepAlive);
       const text = fs.readFileSync(path.join(dir, 'vcpu-times'), 'utf8');
       fs.rmSync(dir, { recursive: true });
       console.log(JSON.stringify(text.trim().split('\\n')));`,
    ) as string[];
    assert.equal(lines.length, 2, lines.join('\n'));
    assert.match(lines[0], /^run1-start \d+$/);
    assert.match(lines[1], /^run1-end \d+$/);
    assert.ok(BigInt(lines[1].split(' ')[1]) > BigInt(lines[0].split(' ')[1]));
  });

  it('formats vCPU times in vCPU order', () => {
    const line = evalModule(
      `import { vcpuTimesLine } from ${MODULE};
       console.log(JSON.stringify(vcpuTimesLine('x', 5n, new Map([[1, 20], [0, 10]]))));`,
    );
    assert.equal(line, 'x 5 cpu0=10 cpu1=20\n');
  });
});
