#!/usr/bin/env node
// Per-I/O guest counts from the counting plugin's output (tcgcount.c), host CPU per I/O from the lab's
// vcpu-times (scripts/lab/vcpu-times.mjs) and count-in-guest.sh's IOPS:
//   node bench/tcg-count/per-io.mjs DIR        (DIR holds results.txt, vcpu-times and, with the plugin, out.txt)
// For each engine: (counter at end − at start) ÷ (IOPS × seconds between the labels). Poll-mode engines spin,
// so their user counts include the spinning; interrupt-mode counts are the work itself.
import fs from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
if (!dir) {
  console.error('usage: per-io.mjs DIR');
  process.exit(2);
}
/** `LABEL NS name=value…` lines → Map(label → {ns, name: value…}); none when the file is absent. */
function readLabelled(file, rename = (k) => k) {
  const map = new Map();
  if (!fs.existsSync(file)) return map;
  for (const line of fs.readFileSync(file, 'utf8').trim().split('\n')) {
    const [label, ns, ...pairs] = line.split(' ');
    map.set(label, {
      ns: Number(ns),
      ...Object.fromEntries(pairs.map((p) => p.split('=')).map(([k, v]) => [rename(k), Number(v)])),
    });
  }
  return map;
}
// The plugin's counters (when it was loaded) and the lab's vCPU host CPU times (cpuN → hostN_ns), by label.
const counts = readLabelled(path.join(dir, 'out.txt'));
const hostTimes = readLabelled(path.join(dir, 'vcpu-times'), (k) => k.replace(/^cpu(\d+)$/, 'host$1_ns'));
const KEYS = ['insns', 'tbs', 'mems', 'rets', 'indirect', 'trans'];
const rows = [];
for (const line of fs.readFileSync(path.join(dir, 'results.txt'), 'utf8').trim().split('\n')) {
  const [name, iops] = line.split(' ');
  const row = { engine: name, iops: Number(iops) };
  // Each source over its own span between the two labels (the plugin and the lab's runner see them apart).
  for (const source of [counts, hostTimes]) {
    const a = source.get(`start-${name}`);
    const b = source.get(`end-${name}`);
    if (!a || !b || !(row.iops > 0)) continue;
    const ios = row.iops * ((b.ns - a.ns) / 1e9);
    for (const k of Object.keys(b)) if (k !== 'ns' && k in a) row[k] = (b[k] - a[k]) / ios;
  }
  if (Object.keys(row).length === 2) {
    console.error(`${name}: no labels or no IOPS, skipped`);
    continue;
  }
  rows.push(row);
}
const cols = ['engine', 'iops', ...['u', 'k'].flatMap((s) => KEYS.map((k) => `${s}_${k}`))];
if (counts.size > 0) {
  console.log(`| ${cols.join(' | ')} |`);
  console.log(`|${cols.map(() => '---').join('|')}|`);
  for (const r of rows)
    console.log(
      `| ${cols.map((c) => (typeof r[c] === 'string' ? r[c] : c.endsWith('trans') ? r[c].toFixed(3) : Math.round(r[c]).toLocaleString('en-US'))).join(' | ')} |`,
    );
}
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
