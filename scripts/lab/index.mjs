// The lab: runs a command inside a QEMU guest (Debian's 6.12 kernel) that has real vhost-vdpa devices —
// vdpa_sim_blk, a VDUSE block device and vdpa_sim_net — with the project root mounted read-write at its host
// path. See docs/lab.md.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { prepare } from './prepare.mjs';
import { createLogger, shQuote } from './util.mjs';
import {
  bootOnce,
  chooseAccel,
  DEFAULT_TCG_CPU,
  liveRunDirs,
  recordAccel,
  retryAfterBootPanic,
} from './vm.mjs';

const LAB_DIR = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (holds package.json): mounted read-write in the guest at the same path. */
export const PROJECT_ROOT = path.resolve(LAB_DIR, '..', '..');

/** Exit code when the lab itself failed (guest panic, QEMU error), as `docker run` uses it. */
export const LAB_FAILURE_EXIT = 125;
export const TIMEOUT_EXIT = 124;

const STD_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
/** In the guest: the run directory's bin/, first on PATH, with the project's CLI as `vhost-vdpa`. */
const GUEST_BIN = '/run/lab/bin';
/** An interactive shell has no natural end; the VM still gets one (4 hours) unless --timeout says otherwise. */
const SHELL_TIMEOUT_SEC = 4 * 3600;

export { prepare } from './prepare.mjs';

/**
 * Runs `command` as root in the project root inside the lab guest, streaming its stdout/stderr live.
 *
 * @param {object} opts
 * @param {string[]|string} opts.command argv (run with exec), or a string run with `sh -c`
 * @param {Record<string,string>} [opts.env] extra environment for the command
 * @param {number} [opts.timeoutSec=1500] bound on the VM run (boot + devices + command), not on preparation
 * @param {string[]} [opts.kernelArgs] extra guest kernel command line, e.g. ['idle=poll']
 * @param {boolean} [opts.quiet] no `[lab]` progress lines (warnings and errors are still printed)
 * @param {boolean} [opts.verbose] also echo the guest's serial console (`[console] …`) to stderr
 * @param {number} [opts.memoryMiB=2048]
 * @param {number} [opts.cpus=2]
 * @param {string} [opts.tcgCpu] QEMU `-cpu` model under TCG (default {@link DEFAULT_TCG_CPU}: `max` without PKU)
 * @param {string} [opts.tcgPlugin] QEMU `-plugin` argument under TCG (`FILE.so[,name=value…]`), e.g. the
 *   counting plugin of bench/tcg-count; ignored under KVM
 * @param {boolean} [opts.shell] connect the command's stdin/stdout/stderr to this terminal (a second serial
 *   port on QEMU's stdio, the guest's /dev/ttyS1, its controlling terminal): for `--shell`
 * @returns {Promise<{exitCode: number, accel: 'kvm'|'tcg',
 *   timings: {prepareMs: number, bootMs: number, commandMs: number, totalMs: number}}>}
 *   exitCode is the command's status, 124 on timeout, 125 when the guest failed before reporting one.
 */
export async function runInLab(opts) {
  const t0 = Date.now();
  const o = normalizeOptions(opts);
  const log = createLogger({ quiet: o.quiet, t0 });

  const assets = await prepare(log);
  const prepareMs = Date.now() - t0;
  log(`prepared (${(prepareMs / 1000).toFixed(1)}s): kernel ${assets.kver}`);

  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-lab-'));
  liveRunDirs.add(runDir);
  let keepRunDir = false;
  try {
    writeRunFiles(runDir, assets, o);
    let choice = chooseAccel();
    if (choice.why) log(`using TCG: ${choice.why}`);
    let res;
    let bootPanicRetries = 1;
    for (;;) {
      log(
        `booting QEMU (${choice.accel}${choice.accel === 'tcg' ? ` -cpu ${o.tcgCpu}` : ''}, ${o.cpus} vCPUs, ${o.memoryMiB} MiB)`,
      );
      res = await bootOnce({
        accel: choice.accel,
        allowKvmFallback: choice.accel === 'kvm' && !choice.forced,
        assets,
        runDir,
        projectRoot: PROJECT_ROOT,
        opts: o,
        log,
      });
      if (retryAfterBootPanic(res, bootPanicRetries)) {
        bootPanicRetries--;
        log.warn('the guest kernel panicked while booting, before the command started; booting again');
        printTail(res.consoleTail.slice(-8));
        continue;
      }
      if (res.outcome !== 'kvm-broken') break;
      log.warn(
        `KVM does not work here (${res.reason}); falling back to TCG (cached for this boot of the host)`,
      );
      recordAccel('tcg', res.reason);
      choice = { accel: 'tcg', forced: false };
    }
    if (res.kvmBroken) recordAccel('tcg', res.kvmBroken);
    else if (choice.accel === 'kvm' && res.outcome === 'done') recordAccel('kvm');

    let exitCode = res.exitCode;
    if (res.outcome === 'timeout') {
      exitCode = TIMEOUT_EXIT;
      process.stderr.write(`[lab] TIMEOUT after ${o.timeoutSec}s: QEMU killed. Last console lines:\n`);
      printTail(res.consoleTail);
    } else if (res.outcome === 'guest-failed') {
      exitCode = LAB_FAILURE_EXIT;
      keepRunDir = true;
      process.stderr.write(`[lab] ERROR: ${res.reason}. Last console lines:\n`);
      printTail(res.consoleTail);
      if (res.qemuStderr.trim()) process.stderr.write(`[lab] QEMU said:\n${res.qemuStderr.trim()}\n`);
      process.stderr.write(`[lab] run directory kept for inspection: ${runDir}\n`);
    }
    const totalMs = Date.now() - t0;
    log(
      `done in ${(totalMs / 1000).toFixed(1)}s (prepare ${(prepareMs / 1000).toFixed(1)}s, boot ${(res.bootMs / 1000).toFixed(1)}s, command ${(res.commandMs / 1000).toFixed(1)}s), exit ${exitCode}`,
    );
    return {
      exitCode,
      accel: choice.accel,
      timings: { prepareMs, bootMs: res.bootMs, commandMs: res.commandMs, totalMs },
    };
  } finally {
    liveRunDirs.delete(runDir);
    if (!keepRunDir) fs.rmSync(runDir, { recursive: true, force: true });
  }
}

/** Fills in defaults and checks `opts` (exported for tests). */
export function normalizeOptions(opts) {
  if (!opts || (typeof opts.command !== 'string' && !Array.isArray(opts.command)))
    throw new TypeError('runInLab: opts.command must be an argv array or a shell string');
  const command = typeof opts.command === 'string' ? ['sh', '-c', opts.command] : opts.command.map(String);
  if (command.length === 0) throw new TypeError('runInLab: opts.command is empty');
  const env = opts.env ?? {};
  for (const k of Object.keys(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k))
      throw new TypeError(`runInLab: invalid environment variable name ${k}`);
  }
  const kernelArgs = (opts.kernelArgs ?? []).map(String);
  for (const a of kernelArgs)
    if (/\s/.test(a)) throw new TypeError(`runInLab: kernel argument contains a space: ${a}`);
  return {
    command,
    env,
    kernelArgs,
    timeoutSec: opts.timeoutSec ?? (opts.shell ? SHELL_TIMEOUT_SEC : 1500),
    quiet: !!opts.quiet,
    verbose: !!opts.verbose,
    memoryMiB: opts.memoryMiB ?? 2048,
    cpus: opts.cpus ?? 2,
    tcgCpu: opts.tcgCpu ?? DEFAULT_TCG_CPU,
    tcgPlugin: opts.tcgPlugin,
    shell: !!opts.shell,
  };
}

/** The run directory is the guest's /run/lab: configuration in, output and status out. */
function writeRunFiles(runDir, assets, o) {
  const assign = (k, v) => `${k}=${shQuote(v)}\n`;
  fs.writeFileSync(
    path.join(runDir, 'config.sh'),
    assign('LAB_KVER', assets.kver) +
      assign('LAB_PROJECT', PROJECT_ROOT) +
      assign('LAB_SCRIPTS', LAB_DIR) +
      assign('LAB_MODULE_TREE', assets.moduleTree) +
      assign('LAB_DEVTOOL', o.env.VDPA_LAB_DEVTOOL || process.env.VDPA_LAB_DEVTOOL || 'cli') +
      assign('LAB_ROOT_CACHE', process.env.VDPA_LAB_ROOT_CACHE || 'loose') +
      assign('LAB_PROJECT_CACHE', process.env.VDPA_LAB_PROJECT_CACHE || 'loose') +
      // The host's node first, wherever it is installed (nvm, /usr/local, /usr/bin).
      assign('LAB_PATH', [...new Set([GUEST_BIN, path.dirname(process.execPath), ...STD_PATH])].join(':')),
  );
  writeGuestBin(path.join(runDir, 'bin'));
  fs.writeFileSync(
    path.join(runDir, 'env.sh'),
    Object.entries(o.env)
      .map(([k, v]) => `export ${assign(k, v)}`)
      .join(''),
  );
  const exec = `exec ${o.command.map(shQuote).join(' ')}`;
  fs.writeFileSync(
    path.join(runDir, 'command.sh'),
    // --shell: the guest's /dev/ttyS1 is this terminal; setsid -c makes it the shell's controlling terminal
    // (job control, ^C to the foreground job), -w passes the shell's exit status on.
    o.shell
      ? `stty rows ${process.stdout.rows || 24} cols ${process.stdout.columns || 80} </dev/ttyS1\n` +
          `exec setsid -c -w sh -c ${shQuote(exec)} <>/dev/ttyS1 >&0 2>&0\n`
      : `${exec}\n`,
  );
}

/** `vhost-vdpa` in the guest: the project's CLI, so that the docs' commands work as written in the lab. */
function writeGuestBin(dir) {
  const main = path.join(PROJECT_ROOT, 'dist', 'cli', 'main.js');
  fs.mkdirSync(dir);
  fs.writeFileSync(
    path.join(dir, 'vhost-vdpa'),
    `#!/bin/sh
if [ ! -f ${shQuote(main)} ]; then
  echo "vhost-vdpa: ${main} is not built: run npm install (or npm run build) on the host" >&2
  exit 127
fi
exec node ${shQuote(main)} "$@"
`,
    { mode: 0o755 },
  );
}

function printTail(lines) {
  for (const l of lines) process.stderr.write(`  | ${l}\n`);
}
