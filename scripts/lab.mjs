#!/usr/bin/env node
// `npm run lab [-- CMD ARGS…]`: run a command inside the vDPA lab VM (see docs/lab.md).
import fs from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT, prepare, runInLab } from './lab/index.mjs';
import { createLogger } from './lab/util.mjs';

const HELP = `Usage: node scripts/lab.mjs [options] [--] [CMD ARGS...]
       npm run lab -- [options] [--] [CMD ARGS...]

Boots Debian's 6.12 kernel in QEMU with real vhost-vdpa devices (blk0: vdpa_sim_blk, vduse0: VDUSE block,
net0: vdpa_sim_net) and runs CMD as root in the project root (${PROJECT_ROOT}, mounted read-write).
Exits with CMD's status; 124 on timeout, 125 if the lab itself failed.
Without CMD: \`vhost-vdpa info --lab\` (or a device summary if the CLI is not built yet).
In the guest the project's CLI is on PATH as \`vhost-vdpa\`.

Options:
  --timeout SEC       kill the VM after SEC seconds (default 1500)
  --kernel-arg ARG    extra guest kernel command line argument (repeatable), e.g. idle=poll
  --memory MIB        guest memory (default 2048)
  --cpus N            guest vCPUs (default 2)
  --tcg-cpu MODEL     QEMU -cpu model under TCG (default max,pku=off; see docs/lab.md, "Accelerator")
  --tcg-plugin SPEC   load a QEMU TCG plugin: SPEC is QEMU's -plugin argument, FILE.so[,name=value...]
                      (e.g. bench/tcg-count: guest instructions per I/O; docs/bench.md)
  --quiet             no [lab] progress lines
  --verbose           also show the guest's serial console
  --prepare-only      only build/cache packages, kernel, modules and initramfs, then exit
  --shell             an interactive root shell in the guest (bash on this terminal), devices ready,
                      \`vhost-vdpa\` on PATH; exit or ^D powers the VM off (default timeout then 4 h)
  --help              this text

Environment: VDPA_LAB_ACCEL=kvm|tcg forces the accelerator; VHOST_VDPA_CACHE overrides ~/.cache/vhost-vdpa.`;

// Shown when the project's CLI is not built yet: the same facts, from the raw sources.
const FALLBACK_INFO = `
echo "== lab info (fallback: dist/cli/main.js is not built) =="
echo "-- kernel: $VDPA_LAB_KERNEL, idle: $VDPA_LAB_IDLE"
echo "-- /run/vdpa-lab.json"; cat /run/vdpa-lab.json
echo "-- vdpa -j dev show"; vdpa -j dev show; echo
echo "-- vdpa mgmtdev show"; vdpa mgmtdev show
echo "-- sysfs /sys/bus/vdpa/devices"
for d in /sys/bus/vdpa/devices/*; do
  echo "$(basename "$d"): driver=$(basename "$(readlink "$d/driver")") chardev=$(cd "$d" && ls -d vhost-vdpa-* 2>/dev/null) driver_override=$(cat "$d/driver_override")"
done
echo "-- char devices"; ls -l /dev/vhost-vdpa-*
`;

function parseArgs(argv) {
  const o = { kernelArgs: [], command: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    const number = () => {
      const n = Number(value());
      if (!Number.isFinite(n) || n <= 0) throw new Error(`${a} needs a positive number`);
      return n;
    };
    if (a === '--' || !a.startsWith('-')) {
      // `npm run lab -- CMD ARGS` arrives here without the `--` (npm consumes it): the first word that is
      // not an option starts the command.
      o.command = argv.slice(a === '--' ? i + 1 : i);
      break;
    } else if (a === '--help' || a === '-h') o.help = true;
    else if (a === '--timeout') o.timeoutSec = number();
    else if (a === '--kernel-arg') o.kernelArgs.push(value());
    else if (a === '--memory') o.memoryMiB = number();
    else if (a === '--cpus') o.cpus = number();
    else if (a === '--tcg-cpu') o.tcgCpu = value();
    else if (a === '--tcg-plugin') {
      // QEMU resolves FILE from its own working directory: make it absolute here.
      const [file, ...args] = value().split(',');
      o.tcgPlugin = [path.resolve(file), ...args].join(',');
    } else if (a === '--quiet') o.quiet = true;
    else if (a === '--verbose') o.verbose = true;
    else if (a === '--prepare-only') o.prepareOnly = true;
    else if (a === '--shell') o.shell = true;
    else throw new Error(`unknown option ${a} (commands go after --)`);
  }
  return o;
}

async function main() {
  let o;
  try {
    o = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`lab: ${e.message}\n\n${HELP}\n`);
    return 2;
  }
  if (o.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  if (o.prepareOnly) {
    const t0 = Date.now();
    const log = createLogger({ quiet: o.quiet, t0 });
    const assets = await prepare(log);
    log(`prepare-only: ready in ${((Date.now() - t0) / 1000).toFixed(1)}s (${assets.dir})`);
    return 0;
  }
  if (o.shell) {
    if (o.command?.length > 0) {
      process.stderr.write('lab: --shell takes no command\n');
      return 2;
    }
    o.command = ['bash', '--rcfile', path.join(PROJECT_ROOT, 'scripts', 'lab', 'shellrc.sh'), '-i'];
    o.env = { TERM: process.env.TERM || 'xterm' };
  }
  if (!o.command || o.command.length === 0) {
    o.command = fs.existsSync(path.join(PROJECT_ROOT, 'dist/cli/main.js'))
      ? ['vhost-vdpa', 'info', '--lab']
      : ['sh', '-c', FALLBACK_INFO];
  }
  const res = await runInLab(o);
  return res.exitCode;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.stderr.write(`[lab] ERROR: ${e.message}\n`);
    process.exitCode = 125;
  },
);
