// Live move of a running block workload from one vDPA device to another, the way a VMM migrates a guest.
// Run in the lab: npm run lab -- node examples/vmm-move.js [--backend sim|vduse|both] [--requests N] [--json]
//
// This process plays the guest and VMM A: guest RAM in memfds (GuestMemory), a guest "driver" (our own
// split-virtqueue code writing into guest RAM, standing in for a guest kernel) running random 4 KiB reads and
// writes at queue depth 16, verified against a model. VMM A drives device A with the guest's rings. Mid-run it
// pauses A (SUSPEND, or reset-and-rewind where the device cannot suspend), saves the state to a file, and a
// second process, VMM B, started beforehand with the guest's memfds and eventfds, restores the state onto
// device B (a second device over the same disk) and resumes. The guest never stops submitting; every request
// must complete exactly once. Device B is created here and deleted at the end. docs/vmm.md shows the output.
'use strict';
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { performance } = require('node:perf_hooks');
const {
  bit,
  EventFd,
  GuestMemory,
  parseDeviceState,
  resolveCharDev,
  serializeDeviceState,
  splitRingLayout,
  SplitVirtqueue,
  VdpaBackend,
  VdpaManager,
  VirtioF,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} = require('..');

const RAM_GPA = 0x40000000n; // rings, request headers, status bytes
const DATA_GPA = 0x100000000n; // data buffers: a second region above a hole, as in a real guest
const QUEUE_SIZE = 64;
const DEPTH = 16;
const BLOCK = 4096;
const BLOCKS = 256; // the workload's working set: 1 MiB …
const FIRST_SECTOR = 8192n; // … 4 MiB into the disk
const quiet = process.argv.includes('--quiet');
const progress = (message) =>
  quiet || process.stderr.write(`[vmm-move ${process.argv.includes('--vmm-b') ? 'B' : 'A'}] ${message}\n`);
const HEADERS = 0x10000; // offset of the request headers in region 0
const STATUS = HEADERS + QUEUE_SIZE * 16;

// ---- VMM B: the second process ---------------------------------------------------------------------------------

/** argv: --vmm-b DEVICE REGIONS-JSON. fds 3…: the region memfds, then kick, then call. */
async function vmmB(devicePath, regionsJson) {
  const shared = JSON.parse(regionsJson);
  shared.regions.forEach((r, i) => (r.path = `/proc/self/fd/${3 + i}`));
  const kickFd = 3 + shared.regions.length;
  const callFd = kickFd + 1;
  const memory = GuestMemory.attach(shared);
  const backend = VdpaBackend.open({ path: devicePath, numQueues: 1, id: 'disk0' });
  progress(`guest RAM attached (${shared.regions.length} regions), ${devicePath} open`);
  const send = (line) => process.stdout.write(line + '\n');
  send('ready');
  for await (const line of readline.createInterface({ input: process.stdin })) {
    const [command, arg] = line.split(' ');
    if (command === 'go') {
      const t0 = performance.now();
      const state = parseDeviceState(fs.readFileSync(arg, 'utf8'));
      backend.restore(state, { memory, queues: [{ kickFd, callFd }] });
      progress(
        `restored ${state.id} from ${state.source} (${state.method}, base ${state.queues[0].base.raw})`,
      );
      send(`resumed ${(performance.now() - t0).toFixed(2)}`);
    } else if (command === 'stop') {
      await backend.close();
      memory.free();
      send('stopped');
      process.stdin.destroy();
      return;
    }
  }
}

// ---- the guest: a virtio-blk driver in guest RAM ---------------------------------------------------------------

/** 4 KiB that only `block` at `version` has. */
function pattern(block, version) {
  const data = Buffer.alloc(BLOCK);
  let x = (block * 2654435761 + version * 40503 + 1) >>> 0;
  for (let i = 0; i < BLOCK; i += 4) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    data.writeUInt32LE(x, i);
  }
  return data;
}

class Guest {
  constructor(memory, kick, requests) {
    this.memory = memory;
    this.requests = requests;
    const ram = memory.translate(RAM_GPA, splitRingLayout(QUEUE_SIZE).bytes).region.memory;
    this.vq = new SplitVirtqueue({
      index: 0,
      size: QUEUE_SIZE,
      memory: ram.buffer,
      byteOffset: 0,
      iova: Number(RAM_GPA),
      notify: () => kick.signal(1),
    });
    this.model = new Map(); // block → its content (a Buffer)
    this.versions = new Map();
    this.busy = new Set(); // blocks with a request in flight: never two at once, so the model is exact
    this.records = []; // per request: { op, block, slot, expected?, done }
    this.completions = new Uint16Array(0);
    this.errors = [];
    this.verifyQueue = undefined;
    this.done = false;
  }

  /** The main phase: `requests` random reads and writes; then one verifying read of every block written. */
  start(onProgress) {
    this.onProgress = onProgress;
    this.completions = new Uint16Array(this.requests + BLOCKS);
    this.submitted = 0;
    this.completed = 0;
    this.fill();
    return new Promise((resolve) => (this.finished = resolve));
  }

  fill() {
    if (this.done) return;
    while (this.vq.inFlight < DEPTH && this.submitted < this.requests) this.submit(this.randomRequest());
    if (this.completed >= this.requests) {
      // Main phase over: read every block once more (on device B by now) and compare with the model.
      if (this.verifyQueue === undefined) {
        this.verifyQueue = [...this.model.keys()];
        this.phase2 = this.verifyQueue.length;
      }
      while (this.vq.inFlight < DEPTH && this.verifyQueue.length > 0) {
        this.submit({ op: 'read', block: this.verifyQueue.pop() });
      }
    }
    this.vq.publish();
    if (
      this.verifyQueue !== undefined &&
      this.verifyQueue.length === 0 &&
      this.completed === this.submitted
    ) {
      this.done = true;
      this.finished();
    }
  }

  randomRequest() {
    let block;
    do block = Math.floor(Math.random() * BLOCKS);
    while (this.busy.has(block));
    return { op: Math.random() < 0.5 || !this.model.has(block) ? 'write' : 'read', block };
  }

  submit({ op, block }) {
    const id = this.submitted++;
    const slot = this.vq.begin(3);
    const header = RAM_GPA + BigInt(HEADERS + slot * 16);
    const status = RAM_GPA + BigInt(STATUS + slot);
    const data = DATA_GPA + BigInt(slot * BLOCK);
    const h = this.memory.view(header, 16);
    h.writeUInt32LE(op === 'write' ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0);
    h.writeUInt32LE(0, 4);
    h.writeBigUInt64LE(FIRST_SECTOR + BigInt(block * (BLOCK / 512)), 8);
    this.memory.view(status, 1)[0] = 0xff;
    const record = { op, block, slot };
    if (op === 'write') {
      const version = (this.versions.get(block) ?? 0) + 1;
      this.versions.set(block, version);
      record.expected = pattern(block, version);
      this.memory.write(data, record.expected);
    } else {
      record.expected = this.model.get(block);
    }
    this.records[id] = record;
    this.busy.add(block);
    this.vq.push(Number(header), 16, false);
    this.vq.push(Number(data), BLOCK, op === 'read');
    this.vq.push(Number(status), 1, true);
    this.vq.end(id);
  }

  /** Collects completions (on a call-eventfd signal or the fallback timer) and refills the queue. */
  collect() {
    if (this.done) return;
    try {
      this.vq.collect((id) => this.complete(id));
    } catch (error) {
      // ERR_QUEUE_CORRUPT: a used entry for a chain not in flight, i.e. a duplicate completion.
      this.errors.push(`used ring: ${error.message}`);
      this.done = true;
      this.finished();
      return;
    }
    this.fill();
  }

  complete(id) {
    const r = this.records[id];
    this.completions[id]++;
    this.completed++;
    this.busy.delete(r.block);
    const status = this.memory.view(RAM_GPA + BigInt(STATUS + r.slot), 1)[0];
    if (status !== 0) this.errors.push(`request ${id} (${r.op} block ${r.block}): status ${status}`);
    const data = this.memory.read(DATA_GPA + BigInt(r.slot * BLOCK), BLOCK);
    if (r.op === 'write') this.model.set(r.block, r.expected);
    else if (r.expected !== undefined && !data.equals(r.expected)) {
      this.errors.push(`request ${id}: read of block ${r.block} returned other data than last written`);
    }
    this.onProgress(this.completed);
  }

  /** Submitted requests with no completion, and requests completed more than once. */
  tally() {
    let lost = 0;
    let duplicated = 0;
    for (let id = 0; id < this.submitted; id++) {
      if (this.completions[id] === 0) lost++;
      if (this.completions[id] > 1) duplicated++;
    }
    return { submitted: this.submitted, completed: this.completed, lost, duplicated };
  }
}

// ---- VMM A and the move ----------------------------------------------------------------------------------------

function lines(stream) {
  const queue = [];
  const waiters = [];
  readline.createInterface({ input: stream }).on('line', (line) => {
    const w = waiters.shift();
    if (w) w(line);
    else queue.push(line);
  });
  return () => (queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)));
}

async function expectLine(next, prefix, child, timeoutMs = 60000) {
  let timer;
  const line = await Promise.race([
    next(),
    new Promise((_, reject) => child.once('exit', (code) => reject(new Error(`VMM B exited (${code})`)))),
    new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`VMM B did not say "${prefix}" within ${timeoutMs} ms`)),
        timeoutMs,
      );
    }),
  ]).finally(() => clearTimeout(timer));
  if (!line.startsWith(prefix)) throw new Error(`VMM B said "${line}", expected "${prefix}…"`);
  return line.slice(prefix.length).trim();
}

/** Moves a running guest from device A to device B; returns the measurements. */
async function move({ pathA, pathB, requests, label }) {
  const memory = new GuestMemory();
  memory.addRegion({ gpa: RAM_GPA, size: 1024 * 1024 });
  memory.addRegion({ gpa: DATA_GPA, size: QUEUE_SIZE * BLOCK });
  const kick = new EventFd();
  const call = new EventFd();
  const stateFile = path.join(os.tmpdir(), `vmm-move-${process.pid}.json`);
  const child = spawn(
    process.execPath,
    [require.resolve('./vmm-move.js'), '--vmm-b', pathB, JSON.stringify(memory.share())],
    {
      stdio: ['pipe', 'pipe', 'inherit', ...memory.fds, kick.fd, call.fd],
    },
  );
  child.stdin.on('error', () => undefined); // VMM B gone: its exit status says why
  const next = lines(child.stdout);
  const backendA = VdpaBackend.open({ path: pathA, numQueues: 1, id: 'disk0' });
  let timer;
  try {
    progress(`${label}: A=${pathA} B=${pathB}, waiting for VMM B`);
    await expectLine(next, 'ready', child);
    progress('VMM B ready; guest starts');
    const wanted = bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM);
    const features = backendA.deviceFeatures & wanted;
    const guest = new Guest(memory, kick, requests);
    const vq = guest.vq;
    backendA.activate({
      memory,
      features,
      queues: [
        {
          size: QUEUE_SIZE,
          descGpa: BigInt(vq.addresses.desc),
          availGpa: vq.addresses.avail,
          usedGpa: vq.addresses.used,
          kickFd: kick.fd,
          callFd: call.fd,
        },
      ],
    });
    call.watch(() => guest.collect());
    timer = setInterval(() => guest.collect(), 5); // a missed interrupt must not stall the run
    let moved;
    const result = {
      label,
      deviceA: pathA,
      deviceB: pathB,
      method: backendA.canSuspend ? 'suspend' : 'reset-and-rewind',
    };
    const done = guest.start((completed) => {
      if (moved !== undefined || completed < Math.floor(requests * 0.4)) return;
      // Not from inside the completion callback: let the guest refill its queue first (fill() publishes right
      // after collect), so the pause finds requests in flight, some of them not yet taken by the device.
      moved = (async () => {
        await Promise.resolve();
        const t0 = performance.now();
        result.inFlightAtPause = vq.inFlight; // guest's view: submitted, not yet seen completed
        progress(`pausing A at ${completed} completions, ${vq.inFlight} in flight`);
        const state = await backendA.pause({ allowReset: true });
        const tPaused = performance.now();
        result.availNotUsedAtPause = state.inFlightAtPause[0]; // in the rings: made available, not used
        result.base = state.queues[0].base.raw;
        result.requeuedAtReset = state.requeued?.[0];
        const fd = fs.openSync(stateFile, 'w');
        fs.writeSync(fd, serializeDeviceState(state));
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        await backendA.deactivate(); // A must never touch the rings again
        const tSaved = performance.now();
        child.stdin.write(`go ${stateFile}\n`);
        result.restoreMs = Number(await expectLine(next, 'resumed', child));
        const t1 = performance.now();
        result.pauseMs = +(tPaused - t0).toFixed(2);
        result.saveMs = +(tSaved - tPaused).toFixed(2);
        result.pauseToResumeMs = +(t1 - t0).toFixed(2);
        result.completedAtPause = completed;
        progress(`resumed on B: pause-to-resume ${result.pauseToResumeMs} ms`);
      })();
      moved.catch((error) => guest.errors.push(`move: ${error.stack}`));
    });
    const deadline = setTimeout(() => {
      guest.errors.push(`timed out: ${guest.completed} of ${guest.submitted} completed`);
      guest.done = true;
      guest.finished();
    }, 120000);
    await done;
    clearTimeout(deadline);
    progress(`guest done: ${guest.completed}/${guest.submitted}`);
    if (moved !== undefined) await moved.catch(() => undefined);
    Object.assign(result, guest.tally(), {
      verifiedBlocks: guest.phase2 ?? 0,
      errors: guest.errors,
      dataOk: guest.errors.length === 0,
      moved: moved !== undefined,
    });
    return result;
  } finally {
    clearInterval(timer);
    call.close();
    child.stdin.end('stop\n'); // and EOF: VMM B's stdin must not keep it alive
    await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', resolve)));
    await backendA.close();
    kick.close();
    memory.free();
    fs.rmSync(stateFile, { force: true });
  }
}

// ---- the lab's devices, and a device B for each ----------------------------------------------------------------

function labDevices() {
  return JSON.parse(fs.readFileSync(process.env.VDPA_LAB_DEVICES_FILE ?? '/run/vdpa-lab.json', 'utf8'));
}

async function withSimDeviceB(manager, body) {
  const name = 'vmm-move-b';
  if (fs.existsSync(`/sys/bus/vdpa/devices/${name}`)) await manager.deleteDevice(name);
  progress(`creating ${name} (vdpasim_blk)`);
  await manager.addDevice({ name, mgmtdev: 'vdpasim_blk' });
  try {
    return await body(await resolveCharDev(name));
  } finally {
    await manager.deleteDevice(name);
  }
}

/** A second qemu-storage-daemon VDUSE export over vduse0's image (locking off: the first daemon holds it). */
async function withVduseDeviceB(manager, image, body) {
  const name = 'vduse-move';
  const qsd = spawn(
    'qemu-storage-daemon',
    [
      '--blockdev',
      `driver=file,node-name=f,filename=${image},locking=off`,
      '--export',
      `type=vduse-blk,id=e,node-name=f,name=${name},writable=on,num-queues=1,queue-size=256`,
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  try {
    for (let i = 0; !fs.existsSync(`/dev/vduse/${name}`); i++) {
      if (i > 300 || qsd.exitCode !== null)
        throw new Error(`qemu-storage-daemon did not create /dev/vduse/${name}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await manager.addDevice({ name, mgmtdev: 'vduse' });
    try {
      return await body(await resolveCharDev(name));
    } finally {
      await manager.deleteDevice(name);
    }
  } finally {
    qsd.kill('SIGTERM');
    await new Promise((resolve) => (qsd.exitCode !== null ? resolve() : qsd.once('exit', resolve)));
  }
}

function print(r) {
  console.log(`${r.label}: ${r.deviceA} -> ${r.deviceB} (${r.method})`);
  console.log(
    `  requests: ${r.submitted} submitted, ${r.completed} completed, lost ${r.lost}, duplicated ${r.duplicated}`,
  );
  console.log(
    `  at the pause: ${r.inFlightAtPause} in flight (guest), ${r.availNotUsedAtPause} available-not-used in the ring, base ${r.base}`,
  );
  if (r.requeuedAtReset !== undefined)
    console.log(
      `  reset-and-rewind: ${r.requeuedAtReset} request(s) between used and avail at the reset, executed by B`,
    );
  console.log(
    `  pause ${r.pauseMs} ms, save + release A ${r.saveMs} ms, restore on B ${r.restoreMs} ms: pause-to-resume ${r.pauseToResumeMs} ms`,
  );
  console.log(
    `  data: ${r.dataOk ? 'verified against the model' : 'ERRORS'} (${r.verifiedBlocks} blocks re-read on B)`,
  );
  for (const e of r.errors.slice(0, 10)) console.log(`  error: ${e}`);
}

async function main() {
  const args = process.argv.slice(2);
  if (args[0] === '--vmm-b') return vmmB(args[1], args[2]);
  const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
  const which = option('--backend', 'both');
  const requests = Number(option('--requests', '3000'));
  const json = args.includes('--json');
  const devices = labDevices();
  const manager = await VdpaManager.open();
  const results = [];
  try {
    if (which === 'sim' || which === 'both') {
      const a = devices.find((d) => d.mgmtdev === 'vdpasim_blk');
      results.push(
        await withSimDeviceB(manager, (pathB) =>
          move({ pathA: a.chardev, pathB, requests, label: 'vdpa_sim_blk' }),
        ),
      );
    }
    if (which === 'vduse' || which === 'both') {
      const a = devices.find((d) => d.name === 'vduse0');
      results.push(
        await withVduseDeviceB(manager, a.backingFile, (pathB) =>
          move({ pathA: a.chardev, pathB, requests, label: 'VDUSE' }),
        ),
      );
    }
  } finally {
    await manager.close();
  }
  if (json) console.log(JSON.stringify(results));
  else results.forEach(print);
  const ok = results.every((r) => r.moved && r.lost === 0 && r.duplicated === 0 && r.dataOk);
  process.exitCode = ok ? 0 : 1;
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
