/** Types of `vhost-vdpa check`: a conformance run of one vDPA device. */

/** The outcome of one check. */
export type CheckStatus = 'pass' | 'fail' | 'skip';

/** One check's result. */
export interface CheckResult {
  /** Stable identifier, e.g. `uapi.features.version1`. */
  id: string;
  /** Group: `uapi`, `negotiation`, `config`, `suspend`, `doorbell`, `blk`, `net`, `perf`. */
  group: string;
  /** One line saying what is checked. */
  title: string;
  status: CheckStatus;
  /** Why it failed or was skipped (a skip only where the device does not offer the feature). */
  reason?: string;
  /** Measured values (IOPS, latencies, sizes …). */
  numbers?: Record<string, number>;
  durationMs: number;
}

/** The whole report, as `--json` prints it. */
export interface CheckReport {
  /** The char device checked. */
  path: string;
  /** The vdpa device name, when it could be found in sysfs. */
  name?: string;
  deviceId?: number;
  /** `'block'`, `'net'` or `'device N'`. */
  deviceClass?: string;
  /** Whether destructive checks (writes) ran. */
  destructive: boolean;
  startedAt: string;
  durationMs: number;
  results: CheckResult[];
  summary: { passed: number; failed: number; skipped: number };
}

/** Options of {@link runChecks}. */
export interface CheckOptions {
  /** Run checks that write to the device (blk integrity, discard, write-zeroes). Default false. */
  destructive?: boolean;
  /** Longest time one check may take, in ms (default 30000); a check over it fails. */
  checkTimeoutMs?: number;
  /** Seconds per performance smoke run (default 1; 0 skips them). */
  perfSeconds?: number;
  /** Random operations of the blk integrity check (default 2000). */
  integrityOps?: number;
  /** Only checks whose id starts with one of these. */
  only?: string[];
  /** Called as each check finishes (for progress output). */
  onResult?: (result: CheckResult) => void;
}
