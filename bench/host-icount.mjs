// Instructions per I/O of the driver on the host, counted by valgrind (callgrind), for A/B comparisons of
// hot-path changes that the lab's timing noise (±10–15 % between runs) would hide. Under the lab's TCG, time per
// I/O follows the instructions executed, so a change that removes 5 % of them here is worth measuring there.
//
//   node bench/host-icount.mjs [--repeats 3] [--config MODE:RW:QD] [--api promise|callback] TREE [TREE…]
//   node bench/host-icount.mjs --floor [--resolve buffer|undefined] [--config …]   # bench/promise-floor.mjs
//   node bench/host-icount.mjs --profile [--top 40] [--config …] [TREE]   # where the instructions go
//
// Each measurement runs bench/host-driver.mjs's child (the plain loop against the null device) twice under
// `valgrind --tool=callgrind` with `node --single-threaded` (no helper threads: the count is the main thread's
// work, JIT compilation included): 100,000 warm-up I/Os, then 100,000 or 300,000 measured ones. The difference
// divided by 200,000 is the steady state per I/O; start-up and warm-up cancel out. (A 20,000-vs-60,000 window
// still contains TurboFan compiling, and moved the count by up to 50 %.) Repeats differ by 1–5 %: V8's inlining
// and GC timing vary between processes. A TREE is a checkout built with `npx tsc -p tsconfig.test.json`.
//
// --profile does one such measurement of one tree and says where the instructions go: the same two runs, with
// callgrind's output kept and V8 writing its map of JIT code (`--perf-basic-prof`, /tmp/perf-PID.map), so that
// JavaScript functions have names. It prints the steady-state instructions per I/O of each function (its own,
// then with its callees) as the difference of the two runs: JavaScript as `JS:*name file:line` (`*` optimised;
// inlined functions count as their caller), V8, Node and libuv by their C++ names. It needs callgrind_annotate.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
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
async function instructions(o, tree, ios, outFile = '/dev/null') {
  const [mode, rw, qd] = o.config.split(':');
  const args = ['--tool=callgrind', `--callgrind-out-file=${outFile}`, process.execPath, '--single-threaded'];
  if (outFile !== '/dev/null') args.push('--perf-basic-prof');
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

const UNNAMED = 'JIT code (unnamed)';

/** V8's map of the JIT code of the run that wrote `outFile` (`--perf-basic-prof`): [start, size, name] rows by start. */
async function jitMap(outFile) {
  const pid = /^pid: (\d+)$/m.exec(await readFile(outFile, 'utf8'))?.[1];
  if (pid === undefined) throw new Error(`no pid in ${outFile}`);
  // V8 writes the map to /tmp whatever TMPDIR says.
  const file = `/tmp/perf-${pid}.map`;
  const rows = [];
  for (const line of (await readFile(file, 'utf8')).split('\n')) {
    const m = /^([0-9a-f]+) ([0-9a-f]+) (.*)$/.exec(line);
    if (m) rows.push([parseInt(m[1], 16), parseInt(m[2], 16), m[3]]);
  }
  await rm(file, { force: true });
  return rows.sort((a, b) => a[0] - b[0]);
}

/** The name of the JIT code at `addr`: the entry that starts closest below it, if it covers it. */
function jitName(rows, addr) {
  let lo = 0;
  let hi = rows.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (rows[mid][0] <= addr) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found >= 0 && addr < rows[found][0] + rows[found][1] ? rows[found][2] : UNNAMED;
}

/** Instructions per function in one callgrind output (`inclusive`: with callees), JIT code named from `rows`. */
async function perFunction(outFile, rows, inclusive) {
  const args = [`--inclusive=${inclusive ? 'yes' : 'no'}`, '--threshold=100', outFile];
  const { stdout } = await run('callgrind_annotate', args, { maxBuffer: 1 << 28 });
  const counts = new Map();
  for (const line of stdout.split('\n')) {
    const m = /^\s*([\d,]+) \([ \d.]+%\)\s+(.*)$/.exec(line);
    if (m === null || m[2].includes('PROGRAM TOTALS')) continue;
    const jit = /^\?\?\?:0x([0-9a-f]+) \[\?\?\?\]$/.exec(m[2]);
    const name = jit
      ? jitName(rows, parseInt(jit[1], 16))
      : m[2].replace(/^\?\?\?:/, '').replace(/ \[[^\]]*\]$/, '');
    // Unnamed JIT code (V8's stubs, code the map does not cover) is lumped together: its own count means
    // something, its count with callees (a sum over unrelated functions) does not.
    if (inclusive && name === UNNAMED) continue;
    counts.set(name, (counts.get(name) ?? 0) + Number(m[1].replaceAll(',', '')));
  }
  return counts;
}

/** --profile: the steady state per I/O of each function, from a short and a long run of `tree`. */
async function profile(o, tree) {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'host-icount-'));
  try {
    const files = [SHORT, LONG].map((n) => path.join(dir, `callgrind.${n}`));
    await Promise.all([SHORT, LONG].map((n, i) => instructions(o, tree, n, files[i])));
    const maps = await Promise.all(files.map(jitMap));
    for (const inclusive of [false, true]) {
      const [a, b] = await Promise.all(files.map((f, i) => perFunction(f, maps[i], inclusive)));
      const rows = [...new Set([...a.keys(), ...b.keys()])]
        .map((name) => [((b.get(name) ?? 0) - (a.get(name) ?? 0)) / (LONG - SHORT), name])
        .sort((x, y) => y[0] - x[0]);
      const total = inclusive ? rows[0][0] : rows.reduce((sum, r) => sum + r[0], 0);
      process.stdout.write(
        `\n${o.config} ${tree}: instructions per I/O by function, ${inclusive ? 'with callees' : 'own'} (total ${Math.round(total)})\n`,
      );
      for (const [perIo, name] of rows.slice(0, o.top))
        process.stdout.write(`${perIo.toFixed(0).padStart(7)}  ${name.slice(0, 150)}\n`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(argv) {
  const o = {
    repeats: 3,
    config: 'poll:randread:32',
    api: 'promise',
    trees: [],
    floor: false,
    resolve: 'buffer',
    profile: false,
    top: 40,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--repeats') o.repeats = Number(argv[++i]);
    else if (a === '--config') o.config = argv[++i];
    else if (a === '--api') o.api = argv[++i];
    else if (a === '--floor') o.floor = true;
    else if (a === '--resolve') o.resolve = argv[++i];
    else if (a === '--profile') o.profile = true;
    else if (a === '--top') o.top = Number(argv[++i]);
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else o.trees.push(path.resolve(a));
  }
  if (o.floor) o.trees = [null];
  else if (o.trees.length === 0) o.trees.push(path.resolve(here, '..'));
  if (o.profile) {
    if (o.floor || o.trees.length !== 1) throw new Error('--profile takes one TREE (and no --floor)');
    if (!Number.isInteger(o.top) || o.top < 1)
      throw new Error(`--top: expected a positive integer, got ${o.top}`);
    return profile(o, o.trees[0]);
  }
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
