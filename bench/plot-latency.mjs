#!/usr/bin/env node
// Latency plots for docs/bench.md, drawn as plain SVG from a results file (no plotting dependency): one chart per
// configuration, one line per engine — the latency (log scale) at which each percentile of the requests completed.
// Every engine reports the same percentile list (fio's default: 1 … 99.9). With several rounds the round with the
// median p50 is drawn.
//
//   node bench/plot-latency.mjs RESULTS.json OUT_DIR [--configs randread-qd1,randread-qd32]
import fs from 'node:fs';
import path from 'node:path';

const [file, outDir, ...rest] = process.argv.slice(2);
if (!file || !outDir) {
  process.stderr.write('usage: node bench/plot-latency.mjs RESULTS.json OUT_DIR [--configs a,b]\n');
  process.exit(2);
}
const ci = rest.indexOf('--configs');
const doc = JSON.parse(fs.readFileSync(file, 'utf8'));
const configs = ci >= 0 ? rest[ci + 1].split(',') : [...new Set(doc.results.map((r) => r.config))];
const ENGINES = [
  ['ours-irq', 'ours, interrupt', '#d62728'],
  ['ours-poll', 'ours, poll', '#ff7f0e'],
  ['c-event', 'C, event', '#1f77b4'],
  ['c-poll', 'C, poll', '#17becf'],
  ['kernel', 'kernel virtio-blk (fio)', '#2ca02c'],
];
const W = 640;
const H = 360;
const M = { left: 56, right: 170, top: 34, bottom: 44 };
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

/** The run of `engine` in `config` whose p50 is the median of its rounds. */
function medianRun(config, engine) {
  const runs = doc.results.filter(
    (r) => r.config === config && r.engine === engine && !r.error && r.percentiles_us,
  );
  if (runs.length === 0) return undefined;
  runs.sort((a, b) => a.p50_us - b.p50_us);
  return runs[(runs.length - 1) >> 1];
}

function chart(config) {
  const series = ENGINES.map(([e, label, color]) => ({ e, label, color, run: medianRun(config, e) })).filter(
    (s) => s.run,
  );
  if (series.length === 0) return undefined;
  const points = (s) =>
    Object.entries(s.run.percentiles_us)
      .map(([p, us]) => [Number(p), Math.max(us, 1)])
      .sort((a, b) => a[0] - b[0]);
  const all = series.flatMap((s) => points(s).map(([, us]) => us));
  const lo = 10 ** Math.floor(Math.log10(Math.min(...all)));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(...all)));
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const x = (us) => M.left + (pw * Math.log10(us / lo)) / Math.log10(hi / lo);
  const y = (p) => M.top + ph * (1 - p / 100);
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  const env = doc.environment;
  out.push(
    `<text x="${M.left}" y="18" font-size="13">${esc(`${config}: latency percentiles (${env.idle === 'default' ? 'default idle' : `idle=${env.idle}`}, ${env.pinning ? 'pinned' : 'unpinned'}, commit ${String(env.commit ?? '?').slice(0, 10)})`)}</text>`,
  );
  for (let d = lo; d <= hi; d *= 10) {
    out.push(`<line x1="${x(d)}" y1="${M.top}" x2="${x(d)}" y2="${M.top + ph}" stroke="#ddd"/>`);
    const label = d >= 1000 ? `${d / 1000} ms` : `${d} µs`;
    out.push(`<text x="${x(d)}" y="${M.top + ph + 14}" text-anchor="middle">${label}</text>`);
  }
  for (const p of [0, 25, 50, 75, 90, 99, 100]) {
    out.push(`<line x1="${M.left}" y1="${y(p)}" x2="${M.left + pw}" y2="${y(p)}" stroke="#eee"/>`);
    out.push(`<text x="${M.left - 6}" y="${y(p) + 4}" text-anchor="end">${p}%</text>`);
  }
  out.push(`<text x="${M.left + pw / 2}" y="${H - 8}" text-anchor="middle">latency (log scale)</text>`);
  out.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`);
  series.forEach((s, i) => {
    const pts = points(s)
      .map(([p, us]) => `${x(us).toFixed(1)},${y(p).toFixed(1)}`)
      .join(' ');
    out.push(`<polyline points="${pts}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
    const ly = M.top + 10 + i * 18;
    const lx = M.left + pw + 12;
    out.push(`<line x1="${lx}" y1="${ly}" x2="${lx + 18}" y2="${ly}" stroke="${s.color}" stroke-width="2"/>`);
    out.push(
      `<text x="${lx + 24}" y="${ly + 4}">${esc(s.label)}</text>`,
      `<text x="${lx + 24}" y="${ly + 15}" fill="#666" font-size="9">p50 ${s.run.p50_us.toFixed(0)} µs, ${Math.round(s.run.iops)} IOPS</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

fs.mkdirSync(outDir, { recursive: true });
for (const config of configs) {
  const svg = chart(config);
  if (svg === undefined) continue;
  const f = path.join(outDir, `latency-${config}.svg`);
  fs.writeFileSync(f, svg);
  process.stdout.write(`${f}\n`);
}
