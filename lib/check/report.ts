/** Renderings of a {@link CheckReport}: a human table and JUnit XML for CI dashboards. */
import type { CheckReport } from './types';

const MARK = { pass: 'PASS', fail: 'FAIL', skip: 'skip' } as const;

/** A plain-text table, one line per check, with the reason or numbers after it. */
export function formatCheckTable(report: CheckReport): string {
  const lines = [
    `vhost-vdpa check ${report.path}${report.name === undefined ? '' : ` (${report.name})`}: ` +
      `${report.deviceClass ?? 'unknown device'}${report.destructive ? ', destructive' : ''}`,
  ];
  const width = Math.max(...report.results.map((r) => r.id.length), 10);
  for (const r of report.results) {
    const numbers =
      r.numbers === undefined
        ? ''
        : Object.entries(r.numbers)
            .map(([k, v]) => `${k}=${Number.isInteger(v) ? v : v.toFixed(1)}`)
            .join(' ');
    const detail = [r.reason, numbers].filter((s) => s !== undefined && s !== '').join('; ');
    lines.push(`${MARK[r.status]}  ${r.id.padEnd(width)}  ${r.title}${detail === '' ? '' : ` — ${detail}`}`);
  }
  const s = report.summary;
  lines.push(
    `${s.passed} passed, ${s.failed} failed, ${s.skipped} skipped in ${(report.durationMs / 1000).toFixed(1)} s`,
  );
  return lines.join('\n') + '\n';
}

function xml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** JUnit XML (one testsuite, one testcase per check; skips as `<skipped>`), as Jenkins and GitLab read it. */
export function formatJUnit(report: CheckReport): string {
  const s = report.summary;
  const suite = `vhost-vdpa check ${report.name ?? report.path}`;
  const cases = report.results.map((r) => {
    const head = `    <testcase classname="${xml(`vhost-vdpa.${r.group}`)}" name="${xml(r.id)}" time="${(r.durationMs / 1000).toFixed(3)}">`;
    const numbers =
      r.numbers === undefined ? '' : `\n      <system-out>${xml(JSON.stringify(r.numbers))}</system-out>`;
    if (r.status === 'fail') {
      return `${head}\n      <failure message="${xml(r.reason ?? 'failed')}">${xml(r.title)}</failure>${numbers}\n    </testcase>`;
    }
    if (r.status === 'skip')
      return `${head}\n      <skipped message="${xml(r.reason ?? '')}"/>\n    </testcase>`;
    return `${head}${numbers}\n    </testcase>`;
  });
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<testsuites tests="${report.results.length}" failures="${s.failed}" skipped="${s.skipped}">\n` +
    `  <testsuite name="${xml(suite)}" tests="${report.results.length}" failures="${s.failed}" skipped="${s.skipped}" ` +
    `timestamp="${xml(report.startedAt)}" time="${(report.durationMs / 1000).toFixed(3)}">\n` +
    cases.join('\n') +
    '\n  </testsuite>\n</testsuites>\n'
  );
}
