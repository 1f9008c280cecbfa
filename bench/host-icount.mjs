// Instructions per I/O of the driver on the host, counted by valgrind (callgrind), for A/B comparisons of
// hot-path changes that the lab's timing noise (±10–15 % between runs) would hide. Under the lab's TCG, time per
// I/O follows the instructions executed, so a change that removes 5 % of them here is worth measuring there.
//
//   node bench/host-icount.mjs [--repeats 3] [--config MODE:RW:QD] [--api promise|callback] TREE [TREE…]
//   node bench/host-icount.mjs --floor [--resolve buffer|undefined] [--config …]   # bench/promise-floor.mjs
//
// Each measurement runs bench/host-driver.mjs's child (the plain loop against the null device) twice under
// `valgrind --tool=callgrind` with `node --single-threaded` (no helper threads: the count is the main thread's
// work, JIT compilation included): 100,000 warm-up I/Os, then 100,000 or 300,000 measured ones. The difference
// divided by 200,000 is the steady state per I/O; start-up and warm-up cancel out. (A 20,000-vs-60,000 window
// still contains TurboFan compiling, and moved the count by up to 50 %.) Repeats differ by 1–5 %: V8's inlining
// and GC timing vary between processes. A TREE is a checkout built with `npx tsc -p tsconfig.test.json`.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const DRIVER = path.join(here, 'host-driver.mjs');
const FLOOR = path.join(here, 'promise-floor.mjs');
const WARMUP = 100000;
const [SHORT, LONG] = [100000, 300000];

/**
 * Instructions callgrind counted for one run of `ios` measured I/Os: the driver of `tree`, or (`tree` null) the
 * floor with no driver, resolving with `resolve`.
 */
async function instructions(o, tree, ios) {
  const [mode, rw, qd] = o.config.split(':');
  const args = ['--tool=callgrind', '--callgrind-out-file=/dev/null', process.execPath, '--single-threaded'];
  if (tree === null) {
    args.push(FLOOR, '--qd', qd, '--ios', String(ios), '--warmup', String(WARMUP), '--resolve', o.resolve);
  } else {
    args.push(DRIVER, '--child', tree, qd, mode, rw, String(ios), String(WARMUP), o.api);
  }
  const { stderr } = await run('valgrind', args, { maxBuffer: 1 << 24 });
  const match = /Collected : (\d+)/.exec(stderr);
  if (match === null)
    throw new Error(`no instruction count from valgrind for ${tree ?? FLOOR}:\n${stderr.slice(-2000)}`);
  return Number(match[1]);
}

async function main(argv) {
  const o = {
    repeats: 3,
    config: 'poll:randread:32',
    api: 'promise',
    trees: [],
    floor: false,
    resolve: 'buffer',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--repeats') o.repeats = Number(argv[++i]);
    else if (a === '--config') o.config = argv[++i];
    else if (a === '--api') o.api = argv[++i];
    else if (a === '--floor') o.floor = true;
    else if (a === '--resolve') o.resolve = argv[++i];
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else o.trees.push(path.resolve(a));
  }
  if (o.floor) o.trees = [null];
  else if (o.trees.length === 0) o.trees.push(path.resolve(here, '..'));
  for (let r = 0; r < o.repeats; r++) {
    for (const tree of o.trees) {
      // The two runs of one measurement go in parallel (one per core).
      const [a, b] = await Promise.all([SHORT, LONG].map((n) => instructions(o, tree, n)));
      const perIo = Math.round((b - a) / (LONG - SHORT));
      const what = tree === null ? `floor, resolve ${o.resolve}` : `${o.api} ${tree}`;
      process.stdout.write(`${o.config} ${what}: ${perIo} instructions/IO (repeat ${r + 1})\n`);
    }
  }
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`host-icount: ${error.message}\n`);
  process.exit(1);
});
