#!/usr/bin/env node
// Per-I/O guest counts from the counting plugin's output (tcgcount.c) and count-in-guest.sh's IOPS:
//   node bench/tcg-count/per-io.mjs DIR        (DIR holds out.txt and results.txt)
// For each engine: (counter at end − at start) ÷ (IOPS × seconds between the labels). Poll-mode engines spin,
// so their user counts include the spinning; interrupt-mode counts are the work itself.
import fs from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: per-io.mjs DIR');
  process.exit(2);
}
const snapshots = new Map();
for (const line of fs.readFileSync(path.join(dir, 'out.txt'), 'utf8').trim().split('\n')) {
  const [label, ns, ...pairs] = line.split(' ');
  snapshots.set(label, {
    ns: Number(ns),
    ...Object.fromEntries(pairs.map((p) => p.split('=')).map(([k, v]) => [k, Number(v)])),
  });
}
const KEYS = ['insns', 'tbs', 'mems', 'rets', 'indirect', 'trans'];
const rows = [];
for (const line of fs.readFileSync(path.join(dir, 'results.txt'), 'utf8').trim().split('\n')) {
  const [name, iops] = line.split(' ');
  const a = snapshots.get(`start-${name}`);
  const b = snapshots.get(`end-${name}`);
  if (!a || !b || !(Number(iops) > 0)) {
    console.error(`${name}: no labels or no IOPS, skipped`);
    continue;
  }
  const ios = Number(iops) * ((b.ns - a.ns) / 1e9);
  const per = (k) => (b[k] - a[k]) / ios;
  const row = { engine: name, iops: Number(iops) };
  for (const side of ['u', 'k']) for (const k of KEYS) row[`${side}_${k}`] = per(`${side}_${k}`);
  for (const k of Object.keys(b)) if (/^(cpu\d+_|host\d+_ns)/.test(k) && k in a) row[k] = per(k);
  rows.push(row);
}
const cols = ['engine', 'iops', ...['u', 'k'].flatMap((s) => KEYS.map((k) => `${s}_${k}`))];
console.log(`| ${cols.join(' | ')} |`);
console.log(`|${cols.map(() => '---').join('|')}|`);
for (const r of rows)
  console.log(
    `| ${cols.map((c) => (typeof r[c] === 'string' ? r[c] : c.endsWith('trans') ? r[c].toFixed(3) : Math.round(r[c]).toLocaleString('en-US'))).join(' | ')} |`,
  );
// percpu=on: instructions per I/O by vCPU (with PIN=1, CPU 0 is the simulator's worker, CPU 1 the driver).
const cpus = [
  ...new Set(
    rows.flatMap((r) =>
      Object.keys(r)
        .filter((k) => /^cpu\d+_/.test(k))
        .map((k) => k.split('_')[0]),
    ),
  ),
];
if (cpus.length > 0) {
  console.log(`\n| engine | ${cpus.map((c) => `${c} user insns | ${c} kernel insns`).join(' | ')} |`);
  console.log(`|---|${cpus.map(() => '---|---').join('|')}|`);
  for (const r of rows)
    console.log(
      `| ${r.engine} | ${cpus.map((c) => [`${c}_u_insns`, `${c}_k_insns`].map((k) => Math.round(r[k] ?? 0).toLocaleString('en-US')).join(' | ')).join(' | ')} |`,
    );
}
// Host CPU time of each vCPU thread per I/O (µs): what emulating the guest's work cost the host.
const hosts = [...new Set(rows.flatMap((r) => Object.keys(r).filter((k) => /^host\d+_ns$/.test(k))))].sort();
if (hosts.length > 0) {
  console.log(
    `\n| engine | iops | ${hosts.map((h) => `${h.replace('_ns', '')} µs/IO`).join(' | ')} | sum µs/IO |`,
  );
  console.log(`|---|---|${hosts.map(() => '---').join('|')}|---|`);
  for (const r of rows) {
    const us = hosts.map((h) => r[h] / 1000);
    console.log(
      `| ${r.engine} | ${Math.round(r.iops).toLocaleString('en-US')} | ${us.map((u) => u.toFixed(1)).join(' | ')} | ${us.reduce((a, b) => a + b, 0).toFixed(1)} |`,
    );
  }
}
fs.writeFileSync(path.join(dir, 'per-io.json'), `${JSON.stringify(rows, null, 2)}\n`);
