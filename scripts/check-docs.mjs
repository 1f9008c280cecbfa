#!/usr/bin/env node
// `npm run docs:check` (CI, with lint): the API reference in docs/api/ is what `npm run docs` generates from
// the current TSDoc (typedoc with treatValidationWarningsAsErrors: a {@link} to nothing, or a public type that
// references an unexported one, fails), and every relative link in README.md, CHANGELOG.md and docs/**/*.md
// points at a file that exists — and, with a #fragment, at a heading in it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const problems = [];

function listFiles(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? listFiles(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

function checkApiReferenceIsCurrent() {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-vdpa-docs-'));
  try {
    const typedoc = path.join(ROOT, 'node_modules', 'typedoc', 'bin', 'typedoc');
    const res = spawnSync(process.execPath, [typedoc, '--out', out, '--logLevel', 'Warn'], {
      cwd: ROOT,
      encoding: 'utf8',
    });
    if (res.status !== 0) {
      problems.push(`typedoc failed (exit ${res.status}):\n${res.stdout}${res.stderr}`);
      return;
    }
    const generated = listFiles(out).map((f) => path.relative(out, f));
    const apiDir = path.join(ROOT, 'docs', 'api');
    const checkedIn = fs.existsSync(apiDir) ? listFiles(apiDir).map((f) => path.relative(apiDir, f)) : [];
    const stale = [
      ...generated.filter(
        (f) =>
          !checkedIn.includes(f) ||
          fs.readFileSync(path.join(out, f), 'utf8') !== fs.readFileSync(path.join(apiDir, f), 'utf8'),
      ),
      ...checkedIn.filter((f) => !generated.includes(f)),
    ];
    if (stale.length > 0)
      problems.push(
        `docs/api/ is not what the TSDoc generates (${stale.slice(0, 5).join(', ')}${stale.length > 5 ? ', …' : ''}): run \`npm run docs\``,
      );
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading) {
  return heading
    .trim()
    .toLowerCase()
    .replace(/`/g, '')
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

const anchorsCache = new Map();
function anchorsOf(file) {
  if (!anchorsCache.has(file)) {
    const text = fs.readFileSync(file, 'utf8').replace(/```[\s\S]*?```/g, '');
    const anchors = new Set();
    for (const m of text.matchAll(/^#{1,6}\s+(.*)$/gm)) {
      let s = slug(m[1]);
      for (let i = 1; anchors.has(s); i++) s = `${slug(m[1])}-${i}`;
      anchors.add(s);
    }
    anchorsCache.set(file, anchors);
  }
  return anchorsCache.get(file);
}

function checkLinks() {
  const files = [
    path.join(ROOT, 'README.md'),
    path.join(ROOT, 'CHANGELOG.md'),
    ...listFiles(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')),
  ];
  for (const file of files) {
    const text = fs
      .readFileSync(file, 'utf8')
      .replace(/```[\s\S]*?```/g, '')
      .replace(/`[^`\n]*`/g, '');
    for (const m of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1];
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
      const [rel, fragment] = target.split('#');
      const resolved = rel === '' ? file : path.resolve(path.dirname(file), decodeURIComponent(rel));
      const where = path.relative(ROOT, file);
      if (!fs.existsSync(resolved)) problems.push(`${where}: broken link ${target}`);
      else if (fragment && resolved.endsWith('.md') && !anchorsOf(resolved).has(fragment.toLowerCase()))
        problems.push(`${where}: ${target}: no heading #${fragment} in ${path.relative(ROOT, resolved)}`);
    }
  }
  return files.length;
}

const linksOnly = process.argv.includes('--links-only');
if (!linksOnly) checkApiReferenceIsCurrent();
const checked = checkLinks();
if (problems.length > 0) {
  process.stderr.write(`docs: ${problems.length} problem(s):\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
  process.exit(1);
}
process.stdout.write(
  `docs: ${linksOnly ? '' : 'docs/api/ is current; '}links in ${checked} Markdown files resolve\n`,
);
