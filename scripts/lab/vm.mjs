// Boots the lab guest in QEMU and follows it: console markers become progress lines, the command's stdout and
// stderr (files in the shared run directory, written by the guest over 9p) are streamed to ours as they grow.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { CACHE_ROOT } from './prepare.mjs';
import { readJson, writeFileAtomic } from './util.mjs';
import { VCPU_MARK, VCPU_TIMES, watchVcpuMarks } from './vcpu-times.mjs';

const POLL_MS = 100;
const CONSOLE_TAIL_LINES = 40;
/** Under a broken KVM the guest either kills QEMU at once or hangs before /init; TCG reaches /init in ~7 s. */
const KVM_INIT_DEADLINE_MS = 45_000;
const KVM_FAILURE_RE =
  /KVM internal error|failed to set MSR|kvm_.*: Assertion|KVM_[A-Z_]+ failed|emulation failure/;

// ---------------------------------------------------------------------------------------------------------
// Accelerator choice

const ACCEL_FILE = path.join(CACHE_ROOT, 'accel.json');

function bootId() {
  try {
    return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

function kvmUsable() {
  try {
    fs.closeSync(fs.openSync('/dev/kvm', 'r+'));
    return true;
  } catch {
    return false;
  }
}

/**
 * KVM first when /dev/kvm opens, unless this host (this boot) already proved KVM broken. VDPA_LAB_ACCEL=kvm|tcg
 * forces a choice (no fallback when forced).
 */
export function chooseAccel() {
  const forced = process.env.VDPA_LAB_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return { accel: forced, forced: true };
  if (!kvmUsable()) return { accel: 'tcg', forced: false, why: '/dev/kvm not usable' };
  const verdict = readJson(ACCEL_FILE);
  if (verdict?.bootId === bootId() && verdict.accel === 'tcg')
    return { accel: 'tcg', forced: false, why: `KVM failed earlier on this host: ${verdict.reason}` };
  return { accel: 'kvm', forced: false };
}

export function recordAccel(accel, reason = '') {
  try {
    fs.mkdirSync(CACHE_ROOT, { recursive: true });
    writeFileAtomic(
      ACCEL_FILE,
      JSON.stringify({ accel, reason, bootId: bootId(), at: new Date().toISOString() }),
    );
  } catch {
    // Only an optimisation for the next run.
  }
}

// ---------------------------------------------------------------------------------------------------------
// Following files the guest writes

/** Reads whatever was appended to `file` since the last call. */
class FileFollower {
  constructor(file, onData) {
    this.file = file;
    this.onData = onData;
    this.fd = undefined;
    this.pos = 0;
    this.buf = Buffer.alloc(64 * 1024);
  }

  poll() {
    if (this.fd === undefined) {
      try {
        this.fd = fs.openSync(this.file, 'r');
      } catch {
        return;
      }
    }
    for (;;) {
      const n = fs.readSync(this.fd, this.buf, 0, this.buf.length, this.pos);
      if (n <= 0) break;
      this.pos += n;
      this.onData(Buffer.from(this.buf.subarray(0, n)));
    }
  }

  close() {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Splits the serial console into lines, keeps the last ones, and reports markers and kernel panics. */
class ConsoleWatcher {
  constructor({ onMarker, onInfo, onWarn, verbose }) {
    this.partial = '';
    this.tail = [];
    this.panic = false;
    this.onMarker = onMarker;
    this.onInfo = onInfo;
    this.onWarn = onWarn;
    this.verbose = verbose;
  }

  feed(chunk) {
    const lines = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = lines.pop();
    for (const raw of lines) this.line(raw.replace(/\r$/, ''));
  }

  flush() {
    if (this.partial) this.line(this.partial.replace(/\r$/, ''));
    this.partial = '';
  }

  line(line) {
    this.tail.push(line);
    if (this.tail.length > CONSOLE_TAIL_LINES) this.tail.shift();
    if (this.verbose) process.stderr.write(`[console] ${line}\n`);
    let m;
    if ((m = /LAB-MARK (.*)$/.exec(line))) this.onMarker(m[1].trim());
    else if ((m = /LAB-INFO (.*)$/.exec(line))) this.onInfo(m[1].trim());
    else if ((m = /LAB-(WARN|FAIL) (.*)$/.exec(line))) this.onWarn(m[2].trim(), m[1]);
    if (/Kernel panic - not syncing/.test(line)) this.panic = true;
  }
}

// ---------------------------------------------------------------------------------------------------------
// QEMU

/** QEMU option values use ',' as separator; a literal comma is written twice. */
const qemuEscape = (s) => s.replaceAll(',', ',,');

/**
 * The CPU model under TCG. `max` without protection keys: with PKU the guest kernel writes PKRU whenever it
 * switches between a thread whose PKRU differs from the default and one whose does not, and Node's threads
 * differ (Node allocates a protection key at start-up). TCG checks protection keys when it fills its software
 * TLB, so each PKRU write flushes that vCPU's whole TLB and jump cache; a real CPU's WRPKRU flushes nothing. A
 * Node process that blocks and wakes per I/O then refills both after every switch: measured on 2026-11-30,
 * 6,125 full TLB flushes in 3 s (about 1.3 per I/O) for Node at QD1 in interrupt mode and none for the C driver;
 * without PKU (the guest kernel's `nopku` in that experiment) none, and Node went from 1,165–1,540 to 2,960 IOPS
 * while the C driver stayed where it was (docs/lab.md).
 */
export const DEFAULT_TCG_CPU = 'max,pku=off';

/** QEMU's command line for one boot (exported for tests). */
export function qemuArgs({
  accel,
  assets,
  runDir,
  projectRoot,
  memoryMiB,
  cpus,
  tcgCpu,
  tcgPlugin,
  kernelArgs,
  shell,
}) {
  // no_timer_check: under TCG on a busy host the IO-APIC timer check can miss its window and panic the boot
  // ("IO-APIC + timer doesn't work!"); the check only guards against broken chipsets, which QEMU's is not.
  const cmdline = [
    'console=ttyS0',
    'panic=-1',
    'quiet',
    'no_timer_check',
    'rdinit=/init',
    ...kernelArgs,
  ].join(' ');
  // prettier-ignore
  return [
    ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', tcgCpu]),
    // A TCG plugin (bench/tcg-count: guest instruction counts); KVM runs no plugins.
    ...(accel === 'tcg' && tcgPlugin ? ['-plugin', tcgPlugin] : []),
    '-m', String(memoryMiB),
    '-smp', String(cpus),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none',
    // Thread names ("CPU 0/TCG", …) for host-side profiles and bench/tcg-count's vCPU CPU times.
    '-name', 'debug-threads=on',
    '-serial', `file:${path.join(runDir, 'console.log')}`,
    // --shell: ttyS1 is our terminal (raw while QEMU runs; signal=off sends ^C to the guest, not to QEMU).
    ...(shell ? ['-chardev', 'stdio,id=shell,signal=off', '-serial', 'chardev:shell'] : []),
    '-kernel', assets.vmlinuz,
    '-initrd', assets.initramfs,
    '-append', cmdline,
    // The host's root, read-only; the guest puts a tmpfs overlay on top. remap: / spans several filesystems.
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${qemuEscape(projectRoot)},mount_tag=project,security_model=none,multidevs=remap`,
    '-virtfs', `local,path=${qemuEscape(runDir)},mount_tag=labrun,security_model=none`,
  ];
}

/** QEMU processes of this Node process, killed on exit and on SIGINT/SIGTERM. */
const liveVms = new Set();
/** Run directories to delete if a signal ends us mid-run (process.exit skips the callers' finally blocks). */
export const liveRunDirs = new Set();
let handlersInstalled = false;

function installCleanupHandlers() {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const cleanup = () => {
    for (const vm of liveVms) vm.kill('SIGKILL');
    for (const dir of liveRunDirs) fs.rmSync(dir, { recursive: true, force: true });
  };
  // Also covers dying of an uncaught error, e.g. EPIPE when our stdout is piped into `head`.
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      cleanup();
      process.stderr.write(`[lab] ${sig}: QEMU killed\n`);
      process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 }[sig] ?? 0));
    });
  }
}

/**
 * Boots the guest once and follows it to the end.
 * @returns {Promise<{outcome: 'done'|'timeout'|'kvm-broken'|'guest-failed', reason?: string,
 *   exitCode?: number, bootMs: number, commandMs: number, consoleTail: string[], panic: boolean,
 *   commandStarted: boolean}>}
 */
export function bootOnce({ accel, allowKvmFallback, assets, runDir, projectRoot, opts, log }) {
  installCleanupHandlers();
  for (const f of ['console.log', 'stdout', 'stderr', 'status', VCPU_MARK, VCPU_TIMES])
    fs.rmSync(path.join(runDir, f), { force: true });
  for (const f of ['console.log', 'stdout', 'stderr']) fs.writeFileSync(path.join(runDir, f), '');

  const args = qemuArgs({ accel, assets, runDir, projectRoot, ...opts });
  const t0 = Date.now();
  // setpriv --pdeathsig: QEMU dies with us even if we are SIGKILLed and no handler runs.
  const qemu = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'qemu-system-x86_64', ...args], {
    stdio: opts.shell ? ['inherit', 'inherit', 'pipe'] : ['ignore', 'pipe', 'pipe'],
  });
  liveVms.add(qemu);

  return new Promise((resolve) => {
    const marks = {};
    let qemuStderr = '';
    let finished = false;
    let kvmBroken = '';
    let failure = '';

    const console_ = new ConsoleWatcher({
      verbose: opts.verbose,
      onMarker: (m) => {
        const word = m.split(' ')[0];
        marks[word] ??= Date.now();
        if (word === 'init')
          log(`guest /init running (${accel}, ${((Date.now() - t0) / 1000).toFixed(1)}s after QEMU start)`);
        else if (word === 'chroot') log('host root mounted, entering chroot');
        else if (word === 'devices' && m === 'devices') log('creating vDPA devices');
        else if (m === 'devices ready') log('devices ready');
        else if (m.startsWith('devices FAILED'))
          log.warn(`device creation failed for${m.slice('devices FAILED:'.length)} (see stderr above)`);
        else if (word === 'command-start')
          log(`running command (boot took ${((Date.now() - t0) / 1000).toFixed(1)}s)`);
        else if (word === 'command-exit') log(`command exited with ${m.split(' ')[1]}`);
      },
      onInfo: (msg) => log(msg),
      onWarn: (msg, kind) => {
        if (kind === 'FAIL') failure = msg;
        log.warn(msg);
      },
    });
    const followers = [
      new FileFollower(path.join(runDir, 'console.log'), (d) => console_.feed(d)),
      new FileFollower(path.join(runDir, 'stdout'), (d) => process.stdout.write(d)),
      new FileFollower(path.join(runDir, 'stderr'), (d) => process.stderr.write(d)),
    ];
    const pollAll = () => followers.forEach((f) => f.poll());
    const poller = setInterval(pollAll, POLL_MS);
    // setpriv execs QEMU: this pid is QEMU's.
    const stopVcpuMarks = watchVcpuMarks(runDir, qemu.pid);

    let timedOut = false;
    const timeout = setTimeout(() => {
      timedOut = true;
      qemu.kill('SIGKILL');
    }, opts.timeoutSec * 1000);

    const kvmWatch =
      accel === 'kvm' && allowKvmFallback
        ? setTimeout(() => {
            if (!marks.init) {
              kvmBroken = `no /init marker within ${KVM_INIT_DEADLINE_MS / 1000}s`;
              qemu.kill('SIGKILL');
            }
          }, KVM_INIT_DEADLINE_MS)
        : undefined;

    qemu.stdout?.on('data', (d) => (qemuStderr += d));
    qemu.stderr.on('data', (d) => {
      qemuStderr += d;
      // A broken KVM hangs the guest rather than crashing it: kill now. Before the command started the
      // caller retries under TCG; after, the run is reported as failed (never silently re-run).
      if (accel === 'kvm' && !kvmBroken && KVM_FAILURE_RE.test(qemuStderr)) {
        kvmBroken = KVM_FAILURE_RE.exec(qemuStderr)[0];
        qemu.kill('SIGKILL');
      }
    });

    // 'error' (QEMU or setpriv missing) is not always followed by 'close'.
    qemu.on('error', (e) => {
      qemuStderr += `cannot start QEMU: ${e.message}\n`;
      finish(127, null);
    });
    qemu.on('close', (code, signal) => finish(code, signal));

    function finish(code, signal) {
      if (finished) return;
      finished = true;
      liveVms.delete(qemu);
      clearInterval(poller);
      stopVcpuMarks();
      clearTimeout(timeout);
      clearTimeout(kvmWatch);
      pollAll(); // whatever the guest wrote just before powering off
      console_.flush();
      followers.forEach((f) => f.close());

      const end = Date.now();
      const bootMs = (marks['command-start'] ?? end) - t0;
      const commandMs = marks['command-start'] ? (marks['command-exit'] ?? end) - marks['command-start'] : 0;
      const base = {
        bootMs,
        commandMs,
        consoleTail: console_.tail,
        qemuStderr,
        kvmBroken,
        panic: console_.panic,
        commandStarted: Boolean(marks['command-start']),
      };
      const status = fs.existsSync(path.join(runDir, 'status'))
        ? Number.parseInt(fs.readFileSync(path.join(runDir, 'status'), 'utf8'), 10)
        : undefined;

      if (timedOut) return resolve({ ...base, outcome: 'timeout' });
      if (Number.isInteger(status)) return resolve({ ...base, outcome: 'done', exitCode: status });
      // Blame KVM only for what KVM does: a QEMU-reported KVM error, or a guest that never reached /init
      // without panicking. A guest that booted and then failed fails the same way under TCG.
      const blameKvm = kvmBroken || (!marks.init && !console_.panic);
      if (accel === 'kvm' && allowKvmFallback && !marks['command-start'] && blameKvm) {
        const reason = kvmBroken || `QEMU exited (${signal ?? code}) before the guest reached /init`;
        return resolve({ ...base, kvmBroken: reason, outcome: 'kvm-broken', reason });
      }
      let reason = failure || `QEMU exited (${signal ?? code}) without a command status`;
      if (kvmBroken) reason = `KVM failed: ${kvmBroken}`;
      if (console_.panic) reason = 'guest kernel panic';
      resolve({ ...base, outcome: 'guest-failed', reason });
    }
  });
}

/**
 * Whether a boot that ended with `res` is booted again: only a guest kernel panic before the command
 * started (nothing ran, so nothing is re-run), and only `retriesLeft` times. Under TCG the 6.12 kernel
 * panics now and then while patching its own text at boot ("Oops: int3" in an interrupt), which has
 * nothing to do with the command.
 */
export function retryAfterBootPanic(res, retriesLeft) {
  return retriesLeft > 0 && res.outcome === 'guest-failed' && res.panic === true && !res.commandStarted;
}
