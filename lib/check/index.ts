/** `vhost-vdpa check`: conformance checks of one vDPA device. See docs/check.md. */
export { runChecks } from './run';
export { formatCheckTable, formatJUnit } from './report';
export type { CheckOptions, CheckReport, CheckResult, CheckStatus } from './types';
