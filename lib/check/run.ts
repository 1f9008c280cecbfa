/**
 * `vhost-vdpa check`: runs conformance checks against one vDPA device and
 * reports each as pass, fail or skip (a skip only where the device does not
 * offer what the check needs, and the report says which feature).
 *
 * The run opens the device once for the control-plane checks (uAPI sanity,
 * negotiation, config space, suspend/resume with vring bases, doorbell), then
 * hands it to the class driver for the data-path checks. Every check has a
 * deadline; a device that hangs fails the check instead of the run.
 */
import { existsSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { VhostVdpaDevice } from '../device';
import { VIRTIO_ID_BLOCK, VIRTIO_ID_NET } from '../uapi';
import { blkChecks } from './checks-blk';
import { deviceChecks } from './checks-device';
import { runOne } from './run-one';
import type { CheckOptions, CheckReport, CheckResult } from './types';

/** What a check returns: nothing (pass), numbers (pass, with measurements), or a skip with its reason. */
export type CheckOutcome = void | { numbers: Record<string, number> } | { skip: string };

/** One check. */
export interface Check<C> {
  id: string;
  group: string;
  title: string;
  run(context: C): CheckOutcome | Promise<CheckOutcome>;
}

/** What the checks share. */
export interface CheckContext {
  path: string;
  name: string | undefined;
  options: Required<Omit<CheckOptions, 'onResult' | 'only'>>;
}

const CLASS_NAMES: Record<number, string> = { [VIRTIO_ID_NET]: 'net', [VIRTIO_ID_BLOCK]: 'block' };

/**
 * Runs every applicable check against `path` (a `/dev/vhost-vdpa-N`).
 * Never throws for a device failure: failures are results. Exit status for
 * a CLI: 0 only when `summary.failed` is 0.
 */
export async function runChecks(path: string, options: CheckOptions = {}): Promise<CheckReport> {
  const started = performance.now();
  const report: CheckReport = {
    path,
    destructive: options.destructive ?? false,
    startedAt: new Date().toISOString(),
    durationMs: 0,
    results: [],
    summary: { passed: 0, failed: 0, skipped: 0 },
  };
  const context: CheckContext = {
    path,
    name: undefined,
    options: {
      destructive: options.destructive ?? false,
      checkTimeoutMs: options.checkTimeoutMs ?? 30000,
      perfSeconds: options.perfSeconds ?? 1,
      integrityOps: options.integrityOps ?? 2000,
    },
  };
  const record = (result: CheckResult): void => {
    report.results.push(result);
    report.summary[result.status === 'pass' ? 'passed' : result.status === 'fail' ? 'failed' : 'skipped']++;
    options.onResult?.(result);
  };
  const selected = <C>(checks: Check<C>[]): Check<C>[] =>
    options.only === undefined ? checks : checks.filter((c) => options.only?.some((p) => c.id.startsWith(p)));

  let device: VhostVdpaDevice | undefined;
  const openStart = performance.now();
  try {
    device = VhostVdpaDevice.open(path);
    record({
      id: 'uapi.open',
      group: 'uapi',
      title: 'opens (SET_OWNER, backend features)',
      status: 'pass',
      durationMs: performance.now() - openStart,
    });
  } catch (error) {
    record({
      id: 'uapi.open',
      group: 'uapi',
      title: 'opens (SET_OWNER, backend features)',
      status: 'fail',
      reason: (error as Error).message,
      durationMs: performance.now() - openStart,
    });
  }
  if (device !== undefined) {
    const deviceId = device.deviceId;
    report.deviceId = deviceId;
    report.deviceClass = CLASS_NAMES[deviceId] ?? `device ${deviceId}`;
    context.name = report.name = vdpaNameOf(path);
    try {
      for (const check of selected(deviceChecks))
        record(await runOne(check, { ...context, device }, context.options.checkTimeoutMs));
    } finally {
      device.close();
    }
    if (deviceId === VIRTIO_ID_BLOCK) {
      for (const check of selected(blkChecks))
        record(await runOne(check, context, context.options.checkTimeoutMs));
    }
  }
  report.durationMs = performance.now() - started;
  return report;
}

/** The vdpa device whose char device is `path`, from sysfs (`/sys/bus/vdpa/devices/NAME/vhost-vdpa-N`). */
function vdpaNameOf(path: string): string | undefined {
  const match = /\/dev\/(vhost-vdpa-\d+)$/.exec(path);
  if (match === null) return undefined;
  try {
    for (const name of readdirSync('/sys/bus/vdpa/devices')) {
      if (existsSync(`/sys/bus/vdpa/devices/${name}/${match[1]}`)) return name;
    }
  } catch {
    // No vdpa bus in sysfs: the netlink consistency check is skipped.
  }
  return undefined;
}
