/**
 * Fault injection for VDUSE devices: the `--fault` specs of
 * `vhost-vdpa vduse blk` (and the `faults` option of the API), with the
 * semantics of the C fault daemon test/fault-device/faulty-blk.c that the
 * hostile-device suite (docs/hostile.md) was written against:
 *
 * | spec | effect on request N (requests numbered from 1 over the device's life) |
 * | --- | --- |
 * | `bad-id@N` | its used entry names id `queue size + 7` ({@link badUsedId}) instead of its own; the chain itself is never completed |
 * | `not-head@N` | its used entry names the ring index of the chain's second descriptor (in flight, but not a head; {@link notHeadUsedId}); the chain itself is never completed |
 * | `dup@N` | its used entry is written twice |
 * | `bad-len@N` | its used length is its writable bytes + 4096 ({@link badUsedLength}) |
 * | `ioerr-every:N` | every Nth request (N, 2N, …) completes with VIRTIO_BLK_S_IOERR, doing no I/O |
 * | `stall@N` | it is never completed (no other fault applies to it) |
 * | `slow:MS` | every request completes MS milliseconds late |
 * | `resize@N:BYTES` | after its completion is published, the capacity becomes BYTES (a multiple of 512): VDUSE_DEV_SET_CONFIG + VDUSE_DEV_INJECT_CONFIG_IRQ |
 *
 * Specs combine: several in one string separated by commas, or several
 * strings (repeated `--fault`). Numbers are decimal or 0x-hex, as faulty-blk's
 * strtoull(…, 0) reads them.
 */
import { ErrorCodes, VdpaError } from '../errors';

/** One parsed `--fault` spec. */
export type FaultSpec =
  | { kind: 'bad-id' | 'not-head' | 'dup' | 'bad-len' | 'stall'; request: number }
  | { kind: 'ioerr-every'; every: number }
  | { kind: 'slow'; ms: number }
  | { kind: 'resize'; request: number; bytes: number };

/**
 * What the device does to one request, in the order it applies them: `stall`
 * (alone: nothing else happens), `ioerr` (status IOERR instead of the I/O),
 * `delay` (complete `ms` later), then at completion `bad-id` or else
 * `not-head` (the used entry's id) and `bad-len` (its length), written
 * through `DeviceQueue.pushRaw`, `dup` (a second identical used entry), and
 * after the flush `resize`.
 */
export type FaultAction =
  | { kind: 'stall' }
  | { kind: 'ioerr' }
  | { kind: 'delay'; ms: number }
  | { kind: 'bad-id' }
  | { kind: 'not-head' }
  | { kind: 'bad-len' }
  | { kind: 'dup' }
  | { kind: 'resize'; bytes: number };

/** The used id a `bad-id` fault writes: outside the ring, as faulty-blk does (`size + 7`). */
export const badUsedId = (queueSize: number): number => queueSize + 7;

/**
 * The used id a `not-head` fault writes, as faulty-blk does: the ring index of
 * the chain's second descriptor (split: the head's `next`; packed: the slot
 * after the head) — a descriptor in flight that is not a head. A chain that is
 * one ring descriptor (an indirect chain) has none: then `queue size`, out of
 * range, as faulty-blk writes for a one-descriptor chain.
 */
export const notHeadUsedId = (secondDescriptor: number | undefined, queueSize: number): number =>
  secondDescriptor ?? queueSize;

/** The used length a `bad-len` fault writes: 4096 bytes more than the chain can hold, as faulty-blk does. */
export const badUsedLength = (writableBytes: number): number => writableBytes + 4096;

const FORMS = 'bad-id@N, not-head@N, dup@N, bad-len@N, ioerr-every:N, stall@N, slow:MS, resize@N:BYTES';
const AT_FAULTS = new Set(['bad-id', 'not-head', 'dup', 'bad-len', 'stall']);
type AtFault = 'bad-id' | 'not-head' | 'dup' | 'bad-len' | 'stall';

function badSpec(spec: string, why: string): VdpaError {
  return new VdpaError(`--fault '${spec}': ${why} (one of ${FORMS}; N ≥ 1)`, {
    code: ErrorCodes.INVALID_ARG,
  });
}

/** A positive safe integer, decimal or 0x-hex, or throws naming the spec. */
function positive(text: string, spec: string, what: string): number {
  const value = /^(0x[0-9a-f]+|[0-9]+)$/i.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(value) || value < 1)
    throw badSpec(spec, `${what} must be a positive integer, got '${text}'`);
  return value;
}

/** Parses one spec (no commas). */
function parseOne(spec: string): FaultSpec {
  const at = /^([a-z-]+)@([^:]+)(?::(.*))?$/.exec(spec);
  if (at !== null) {
    const [, kind, n, bytes] = at;
    if (kind === 'resize') {
      if (bytes === undefined) throw badSpec(spec, 'resize needs the new size: resize@N:BYTES');
      const size = positive(bytes, spec, 'BYTES');
      if (size % 512 !== 0) throw badSpec(spec, `BYTES must be a multiple of 512, got ${size}`);
      return { kind, request: positive(n, spec, 'N'), bytes: size };
    }
    if (AT_FAULTS.has(kind) && bytes === undefined) {
      return { kind: kind as AtFault, request: positive(n, spec, 'N') };
    }
  }
  const colon = /^([a-z-]+):(.+)$/.exec(spec);
  if (colon !== null) {
    const [, kind, n] = colon;
    if (kind === 'ioerr-every') return { kind, every: positive(n, spec, 'N') };
    if (kind === 'slow') return { kind, ms: positive(n, spec, 'MS') };
  }
  throw badSpec(spec, 'unknown fault');
}

/**
 * Parses `--fault` values: one string (specs separated by commas) or several.
 * @throws VdpaError `ERR_INVALID_ARG` naming the first bad spec and the valid
 *   forms; also for `slow` given twice (one delay applies to every request).
 */
export function parseFaults(spec: string | readonly string[]): FaultSpec[] {
  const texts = (typeof spec === 'string' ? [spec] : spec).flatMap((s) => s.split(','));
  const faults: FaultSpec[] = [];
  for (const raw of texts) {
    const text = raw.trim();
    if (text === '') throw badSpec(raw, 'empty fault');
    const fault = parseOne(text);
    if (fault.kind === 'slow' && faults.some((f) => f.kind === 'slow')) {
      throw badSpec(text, 'slow given twice; one delay applies to every request');
    }
    faults.push(fault);
  }
  return faults;
}

/** The spec as `--fault` spells it (for logs). */
export function formatFault(fault: FaultSpec): string {
  switch (fault.kind) {
    case 'ioerr-every':
      return `ioerr-every:${fault.every}`;
    case 'slow':
      return `slow:${fault.ms}`;
    case 'resize':
      return `resize@${fault.request}:${fault.bytes}`;
    default:
      return `${fault.kind}@${fault.request}`;
  }
}

const NONE: readonly FaultAction[] = Object.freeze([]);

/**
 * The faults of a device, asked once per request: deterministic (a function
 * of the request number only), so a test can name the request it hits.
 */
export class FaultPlan {
  /** The parsed specs. */
  readonly faults: readonly FaultSpec[];

  /**
   * @param faults Parsed specs, or `--fault` text for {@link parseFaults}.
   * @throws VdpaError `ERR_INVALID_ARG` for a bad spec.
   */
  constructor(faults: readonly FaultSpec[] | string | readonly string[] = []) {
    const parsed =
      typeof faults === 'string' || faults.some((f) => typeof f === 'string')
        ? parseFaults(faults as string | readonly string[])
        : (faults as readonly FaultSpec[]);
    this.faults = Object.freeze([...parsed]);
  }

  /** True when no fault is planned (the device can skip asking). */
  get empty(): boolean {
    return this.faults.length === 0;
  }

  /**
   * What to do to request number `request` (counted from 1 over the device's
   * life, across resets): actions in the order they apply (see
   * {@link FaultAction}); an empty array for none (shared, no allocation).
   * @throws VdpaError `ERR_INVALID_ARG` unless `request` is an integer ≥ 1.
   */
  next(request: number): readonly FaultAction[] {
    if (!Number.isSafeInteger(request) || request < 1) {
      throw new VdpaError(`request numbers start at 1, got ${String(request)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    if (this.faults.length === 0) return NONE;
    const hits = (kind: FaultSpec['kind']): boolean =>
      this.faults.some((f) => f.kind === kind && 'request' in f && f.request === request);
    if (hits('stall')) return [{ kind: 'stall' }];
    const actions: FaultAction[] = [];
    if (this.faults.some((f) => f.kind === 'ioerr-every' && request % f.every === 0))
      actions.push({ kind: 'ioerr' });
    for (const f of this.faults) if (f.kind === 'slow') actions.push({ kind: 'delay', ms: f.ms });
    // One used id per completion: bad-id wins over not-head, as in faulty-blk.
    if (hits('bad-id')) actions.push({ kind: 'bad-id' });
    else if (hits('not-head')) actions.push({ kind: 'not-head' });
    if (hits('bad-len')) actions.push({ kind: 'bad-len' });
    if (hits('dup')) actions.push({ kind: 'dup' });
    for (const f of this.faults) {
      if (f.kind === 'resize' && f.request === request) actions.push({ kind: 'resize', bytes: f.bytes });
    }
    return actions.length === 0 ? NONE : actions;
  }
}
