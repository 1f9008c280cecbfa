/**
 * `vhost-vdpa check DEV`: the conformance run of lib/check (docs/check.md),
 * as a table, `--json` or `--junit FILE`; exit status 0 only if every check
 * that ran passed.
 * @module
 */
import { writeFileSync } from 'node:fs';
import { expectPositionals, JSON_OPTION, stringOption } from './args';
import type { Command } from './context';
import { devicePath, intOption } from './device-arg';
import { toJson } from './output';

export const checkCommand: Command = {
  name: 'check',
  summary: 'conformance checks of one vDPA device (pass/fail/skip, JUnit for CI)',
  usage: 'vhost-vdpa check DEV [--destructive] [--junit FILE] [--timeout MS] [--perf-seconds N] [--json]',
  details:
    'DEV is /dev/vhost-vdpa-N or a vdpa device name. Runs uAPI, negotiation, config (against netlink),\n' +
    'suspend/resume, doorbell and data-path checks; a check is skipped only when the device does not offer\n' +
    'what it needs, and the reason says which feature. Exit status 0 only if every check that ran passed.\n' +
    'See docs/check.md.',
  options: {
    destructive: {
      type: 'boolean',
      description: 'also run the checks that write to the device (blk integrity, write-zeroes, discard)',
    },
    junit: { type: 'string', value: 'FILE', description: 'write a JUnit XML report (Jenkins, GitLab)' },
    timeout: {
      type: 'string',
      value: 'MS',
      description: 'longest time one check may take',
      default: '30000',
    },
    'perf-seconds': {
      type: 'string',
      value: 'N',
      description: 'seconds per performance smoke run (0 skips them)',
      default: '1',
    },
    ...JSON_OPTION,
  },
  async run(args, ctx) {
    const [dev] = expectPositionals(args, ['DEV']) as [string];
    // Loaded here, not at the top: the CLI loads every command module to dispatch (see run.ts).
    const { formatCheckTable, formatJUnit, runChecks } = await import('../check');
    const report = await runChecks(devicePath(dev, ctx), {
      destructive: args.options.destructive === true,
      checkTimeoutMs: intOption(args, 'timeout', 30000, 100, 3_600_000),
      perfSeconds: intOption(args, 'perf-seconds', 1, 0, 3600),
    });
    const junit = stringOption(args, 'junit');
    if (junit !== undefined) writeFileSync(junit, formatJUnit(report));
    ctx.stdout(args.options.json === true ? toJson(report) + '\n' : formatCheckTable(report));
    return report.summary.failed === 0 ? 0 : 1;
  },
};
