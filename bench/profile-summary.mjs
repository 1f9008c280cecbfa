#!/usr/bin/env node
// Summarises a V8 CPU profile (node --cpu-prof, or `npm run bench -- --cpu-prof`): self time per function,
// largest first, so "where does the time go" has a short answer.
//
//   node bench/profile-summary.mjs FILE.cpuprofile [--top 25] [--window]
//
// --window: only the samples from the first to the last one whose stack is inside the load loop (blk-bench's
// #loop, a poll round or an interrupt callback), so Node's start-up — seconds under TCG — is left out.
import fs from 'node:fs';
import path from 'node:path';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--'));
const topIdx = args.indexOf('--top');
const top = topIdx >= 0 ? Number(args[topIdx + 1]) : 25;
if (!file) {
  process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [--top N]\n');
  process.exit(2);
}

const profile = JSON.parse(fs.readFileSync(file, 'utf8'));
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const LOOP = new Set(['#loop', '#round', 'onCall']);
const inLoop = (id) => {
  for (let x = id; x !== undefined; x = parent.get(x))
    if (LOOP.has(nodes.get(x).callFrame.functionName)) return true;
  return false;
};
let first = 0;
let last = profile.samples.length - 1;
if (args.includes('--window')) {
  first = profile.samples.findIndex(inLoop);
  while (last > first && !inLoop(profile.samples[last])) last--;
  if (first < 0) {
    process.stderr.write('no sample inside the load loop\n');
    process.exit(1);
  }
}
// Sample intervals: timeDeltas[i] is the time before samples[i].
const selfUs = new Map();
for (let i = first; i <= last; i++) {
  const id = profile.samples[i];
  // timeDeltas[i + 1] is the time from sample i to the next: the time attributed to sample i.
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
}
const byFunction = new Map();
let total = 0;
for (const [id, us] of selfUs) {
  const cf = nodes.get(id).callFrame;
  const where = cf.url ? `${path.basename(cf.url)}:${cf.lineNumber + 1}` : '';
  const key = `${cf.functionName || '(anonymous)'} ${where}`.trim();
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
  total += us;
}
const rows = [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top);
process.stdout.write(`${path.basename(file)}: ${(total / 1000).toFixed(0)} ms sampled\n`);
for (const [key, us] of rows) {
  process.stdout.write(
    `${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${key}\n`,
  );
}
