import { strict as assert } from 'node:assert';
import { readSync } from 'node:fs';
import {
  BackendDevice,
  bit,
  EventFd,
  GuestMemory,
  IotlbMapping,
  MapRequest,
  parseDeviceState,
  QueueSetup,
  serializeDeviceState,
  VdpaBackend,
  VdpaError,
  VhostBackendF,
  VirtioF,
  VringAddresses,
  VIRTIO_CONFIG_S_DRIVER_OK,
  VIRTIO_CONFIG_S_FEATURES_OK,
} from '../../lib';
import { rejects } from '../assertions';

const GPA = 0x40000000n;
const OFFERED = bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM) | bit(9);
const SUSPENDABLE =
  bit(VhostBackendF.SUSPEND) | bit(VhostBackendF.RESUME) | bit(VhostBackendF.ENABLE_AFTER_DRIVER_OK);

/**
 * The vhost-vdpa ioctls a VdpaBackend makes, on a fake: a call log, the status
 * byte, per-queue bases (GET returns what SET stored, moved by `advance`).
 */
class FakeBackendDevice implements BackendDevice {
  readonly path: string;
  readonly deviceId: number;
  ackedBackendFeatures: bigint;
  features = OFFERED;
  vqs = 2;
  config = Buffer.from('0123456789abcdef');
  status = 0;
  log: string[] = [];
  bases = new Map<number, number>();
  closed = false;

  constructor(options: { path?: string; deviceId?: number; backend?: bigint } = {}) {
    this.path = options.path ?? '/dev/vhost-vdpa-9';
    this.deviceId = options.deviceId ?? 2;
    this.ackedBackendFeatures = options.backend ?? SUSPENDABLE;
  }

  getFeatures(): bigint {
    return this.features;
  }
  setFeatures(f: bigint): void {
    this.log.push(`features ${f.toString(16)}`);
  }
  getStatus(): number {
    return this.status;
  }
  setStatus(s: number): void {
    this.log.push(`status ${s}`);
    this.status = s;
  }
  async resetAsync(): Promise<void> {
    this.setStatus(0);
  }
  getConfigSize(): number {
    return this.config.length;
  }
  getConfig(offset: number, length: number): Buffer {
    return Buffer.from(this.config.subarray(offset, offset + length));
  }
  setConfig(offset: number, data: Uint8Array): void {
    this.config.set(data, offset);
  }
  setConfigCall(fd: number): void {
    this.log.push(`config-call ${fd}`);
  }
  getVqsCount(): number {
    return this.vqs;
  }
  getVringNum(): number {
    return 256;
  }
  setVringNum(i: number, n: number): void {
    this.log.push(`num ${i} ${n}`);
  }
  setVringAddr(i: number, a: VringAddresses): void {
    this.log.push(`addr ${i} ${a.desc.toString(16)}`);
  }
  setVringBase(i: number, b: number): void {
    this.log.push(`base ${i} ${b}`);
    this.bases.set(i, b);
  }
  getVringBase(i: number): number {
    return this.bases.get(i) ?? 0;
  }
  setVringKick(i: number, fd: number): void {
    this.log.push(`kick ${i} ${fd}`);
  }
  setVringCall(i: number, fd: number): void {
    this.log.push(`call ${i} ${fd}`);
  }
  setVringEnable(i: number, e: boolean): void {
    this.log.push(`enable ${i} ${e}`);
  }
  suspend(): void {
    this.log.push('suspend');
  }
  resume(): void {
    this.log.push('resume');
  }
  mapBatch(entries: readonly MapRequest[]): IotlbMapping[] {
    this.log.push(`map ${entries.map((e) => (e.iova as bigint).toString(16)).join(',')}`);
    return entries.map((e) => ({ iova: e.iova as bigint, size: 0n, uaddr: 0n, asid: 0, access: 'rw' }));
  }
  unmapBatch(): void {
    this.log.push('unmap');
  }
  resendMappings(): void {
    this.log.push('resend');
  }
  async closeAsync(): Promise<void> {
    this.closed = true;
  }
}

/** Two split queues of 64 entries at the start of guest RAM. */
function queues(kick: EventFd, call: EventFd, extra: Partial<QueueSetup> = {}): QueueSetup[] {
  return [0, 1].map((i) => ({
    size: 64,
    descGpa: GPA + BigInt(i * 0x4000),
    availGpa: GPA + BigInt(i * 0x4000 + 0x1000),
    usedGpa: GPA + BigInt(i * 0x4000 + 0x2000),
    kickFd: kick.fd,
    callFd: call.fd,
    ...extra,
  }));
}

describe('vmm: VdpaBackend', () => {
  let memory: GuestMemory;
  let kick: EventFd;
  let call: EventFd;
  const features = bit(VirtioF.VERSION_1) | bit(VirtioF.ACCESS_PLATFORM);

  beforeEach(() => {
    memory = new GuestMemory();
    memory.addRegion({ gpa: GPA, size: 1024 * 1024 });
    kick = new EventFd();
    call = new EventFd();
  });
  afterEach(() => {
    kick.close();
    call.close();
    memory.free();
  });

  function active(device = new FakeBackendDevice()): { backend: VdpaBackend; device: FakeBackendDevice } {
    const backend = new VdpaBackend(device, { path: device.path, numQueues: 2, id: 'vdpa0' });
    backend.activate({ memory, features, queues: queues(kick, call) });
    return { backend, device };
  }

  it('activates in the kernel order: features OK, memory in one batch, NUM/ADDR/BASE/KICK/CALL/ENABLE, then DRIVER_OK', () => {
    const { backend, device } = active();
    assert.equal(backend.phase, 'active');
    const log = device.log;
    const at = (entry: string): number => {
      const i = log.indexOf(entry);
      assert.ok(i >= 0, `${entry} in ${log.join('; ')}`);
      return i;
    };
    assert.ok(at('status 11') < at('map 40000000'));
    assert.ok(at('base 0 0') < at('enable 0 true'));
    assert.ok(at('enable 1 true') < at('status 15'), 'every enable before DRIVER_OK (VDUSE needs it)');
    assert.equal(device.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FEATURES_OK), 12);
  });

  it('refuses a second activate with ERR_INVALID_STATE', () => {
    const { backend } = active();
    assert.throws(() => backend.activate({ memory, features, queues: queues(kick, call) }), {
      code: 'ERR_INVALID_STATE',
      message: /activate\(\) needs a backend that is idle, but it is active/,
    });
  });

  it('refuses ring addresses outside guest memory, misaligned, or the wrong queue count', () => {
    const backend = new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 2 });
    const outside = queues(kick, call);
    outside[1] = { ...outside[1], usedGpa: GPA + 1024n * 1024n - 8n };
    assert.throws(() => backend.activate({ memory, features, queues: outside }), {
      code: 'ERR_OUT_OF_RANGE',
      message: /queue 1: the used ring .* is outside guest memory/,
    });
    const misaligned = queues(kick, call);
    misaligned[0] = { ...misaligned[0], descGpa: GPA + 8n };
    assert.throws(() => backend.activate({ memory, features, queues: misaligned }), {
      code: 'ERR_MISALIGNED',
    });
    assert.throws(() => backend.activate({ memory, features, queues: queues(kick, call).slice(1) }), {
      code: 'ERR_INVALID_ARG',
    });
    assert.throws(() => backend.activate({ memory, features, queues: queues(kick, call, { size: 512 }) }), {
      code: 'ERR_OUT_OF_RANGE',
    });
    assert.throws(() => backend.activate({ memory, features, queues: queues(kick, call, { kickFd: -1 }) }), {
      code: 'ERR_INVALID_ARG',
    });
    assert.equal(backend.phase, 'idle');
  });

  it('refuses features the device does not offer, and features without VERSION_1', () => {
    const backend = new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 2 });
    assert.throws(() => backend.ackFeatures(features | bit(VirtioF.RING_PACKED)), {
      code: 'ERR_UNSUPPORTED',
    });
    assert.throws(() => backend.ackFeatures(bit(VirtioF.ACCESS_PLATFORM)), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => backend.activate({ memory, queues: queues(kick, call) }), {
      code: 'ERR_INVALID_ARG',
      message: /ackFeatures/,
    });
  });

  it('refuses num_queues beyond the device and iommu mismatches', () => {
    assert.throws(() => new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 3 }), {
      code: 'ERR_OUT_OF_RANGE',
    });
    const backend = new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 2, iommu: true });
    assert.throws(() => backend.activate({ memory, features, queues: queues(kick, call) }), {
      code: 'ERR_INVALID_ARG',
      message: /iommu=on/,
    });
  });

  it('in iommu mode checks ring IOVAs against the guest IOMMU mappings', () => {
    const device = new FakeBackendDevice();
    const backend = new VdpaBackend(device, { path: '/dev/x', numQueues: 2, iommu: true });
    const iommuMappings = [{ iova: 0x10000n, gpa: GPA, size: 0x8000 }];
    const qs = queues(kick, call).map((q) => ({
      ...q,
      descGpa: q.descGpa - GPA + 0x10000n,
      availGpa: q.availGpa - GPA + 0x10000n,
      usedGpa: q.usedGpa - GPA + 0x10000n,
    }));
    backend.activate({ memory, features, queues: qs, iommuMappings });
    assert.ok(device.log.includes('map 10000'));
    const other = new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 2, iommu: true });
    assert.throws(
      () =>
        other.activate({
          memory,
          features,
          queues: qs,
          iommuMappings: [{ iova: 0x10000n, gpa: GPA, size: 0x4000 }],
        }),
      { code: 'ERR_OUT_OF_RANGE', message: /not covered by the guest IOMMU/ },
    );
  });

  it('pauses with SUSPEND then GET_VRING_BASE, into a state that survives JSON', async () => {
    const { backend, device } = active();
    device.bases.set(0, 17);
    device.bases.set(1, 3);
    memory.view(GPA + 0x1002n, 2).writeUInt16LE(20); // queue 0 avail.idx
    memory.view(GPA + 0x2002n, 2).writeUInt16LE(15); // queue 0 used.idx
    const state = await backend.pause();
    assert.equal(backend.phase, 'paused');
    assert.ok(device.log.indexOf('suspend') >= 0);
    assert.equal(state.method, 'suspend');
    assert.deepEqual(
      state.queues.map((q) => q.base.availIdx),
      [17, 3],
    );
    assert.deepEqual(state.inFlightAtPause, [5, 0]);
    assert.equal(state.config, device.config.toString('hex'));
    assert.deepEqual(parseDeviceState(serializeDeviceState(state)), state);
    backend.resume();
    assert.equal(backend.phase, 'active');
    assert.ok(device.log.includes('resume'));
  });

  it('refuses pause when not active and resume when not paused', async () => {
    const backend = new VdpaBackend(new FakeBackendDevice(), { path: '/dev/x', numQueues: 2 });
    await rejects(
      backend.pause(),
      'ERR_INVALID_STATE',
      /pause\(\) needs a backend that is active, but it is idle/,
    );
    assert.throws(() => backend.resume(), { code: 'ERR_INVALID_STATE' });
  });

  it('refuses to pause a device that cannot suspend unless the reset fallback is allowed', async () => {
    const { backend } = active(new FakeBackendDevice({ backend: 0n }));
    await rejects(backend.pause(), 'ERR_UNSUPPORTED', /cannot suspend .* allowReset/);
    assert.equal(backend.phase, 'active');
  });

  it('reset-and-rewind: unbinds kicks, resets after the used index is quiet, bases = guest used index', async () => {
    const { backend, device } = active(new FakeBackendDevice({ backend: 0n }));
    memory.view(GPA + 0x1002n, 2).writeUInt16LE(9);
    memory.view(GPA + 0x2002n, 2).writeUInt16LE(5);
    device.log.length = 0;
    const state = await backend.pause({ allowReset: true, quiesceMs: 5 });
    assert.equal(state.method, 'reset-and-rewind');
    assert.deepEqual(
      state.queues.map((q) => q.base.raw),
      [5, 0],
    );
    assert.deepEqual(state.inFlightAtPause, [4, 0]);
    assert.ok(device.log.indexOf('kick 0 -1') < device.log.indexOf('status 0'), device.log.join('; '));
    assert.equal(backend.phase, 'idle');
    assert.throws(() => backend.resume(), { code: 'ERR_INVALID_STATE', message: /restore\(state\)/ });
    // The same device continues from the state: base before enable, mappings resent, not remapped.
    device.log.length = 0;
    backend.restore(state, { memory, queues: [kick, kick].map((k) => ({ kickFd: k.fd, callFd: call.fd })) });
    assert.ok(device.log.includes('resend'));
    assert.ok(device.log.indexOf('base 0 5') < device.log.indexOf('enable 0 true'));
  });

  it('restores onto another device: SET_VRING_BASE before enable, then one kick per queue', async () => {
    const { backend } = active();
    const state = await backend.pause();
    const target = new FakeBackendDevice({ path: '/dev/vhost-vdpa-7' });
    target.bases.clear();
    const other = new VdpaBackend(target, { path: target.path, numQueues: 2 });
    const kicks = [new EventFd(), new EventFd()];
    try {
      state.queues[0].base.raw = 42;
      other.restore(state, { memory, queues: kicks.map((k) => ({ kickFd: k.fd, callFd: call.fd })) });
      assert.ok(target.log.indexOf('base 0 42') < target.log.indexOf('enable 0 true'));
      const counter = Buffer.alloc(8);
      readSync(kicks[0].fd, counter);
      assert.equal(counter.readBigUInt64LE(), 1n, 'restore kicked queue 0 once');
      assert.throws(
        () => other.restore(state, { memory, queues: kicks.map((k) => ({ kickFd: k.fd, callFd: call.fd })) }),
        { code: 'ERR_INVALID_STATE' },
      );
    } finally {
      kicks.forEach((k) => k.close());
    }
  });

  it('refuses to restore onto a device with other features, queues, type or config (ERR_STATE_MISMATCH)', async () => {
    const { backend } = active();
    const state = await backend.pause();
    const fds = [0, 1].map(() => ({ kickFd: kick.fd, callFd: call.fd }));
    const lessFeatures = new FakeBackendDevice();
    lessFeatures.features = bit(VirtioF.VERSION_1);
    const cases: [FakeBackendDevice, number, RegExp][] = [
      [lessFeatures, 2, /does not offer/],
      [new FakeBackendDevice({ deviceId: 1 }), 2, /device type 2 saved, 1 here/],
      [new FakeBackendDevice(), 1, /2 queue\(s\) saved, num_queues=1/],
    ];
    const otherConfig = new FakeBackendDevice();
    otherConfig.config = Buffer.from('0123456789abcdeX');
    cases.push([otherConfig, 2, /first difference at offset 15/]);
    for (const [device, numQueues, message] of cases) {
      const target = new VdpaBackend(device, { path: device.path, numQueues });
      assert.throws(
        () => target.restore(state, { memory, queues: fds }),
        (error: unknown) => {
          assert.ok(error instanceof VdpaError);
          assert.equal(error.code, 'ERR_STATE_MISMATCH');
          assert.match(error.message, message);
          return true;
        },
      );
      assert.equal(target.phase, 'idle');
    }
    new VdpaBackend(otherConfig, { path: otherConfig.path, numQueues: 2 }).restore(state, {
      memory,
      queues: fds,
      checkConfig: false,
    });
  });

  it('enables a queue after DRIVER_OK only where ENABLE_AFTER_DRIVER_OK is offered', () => {
    const device = new FakeBackendDevice({ backend: 0n });
    const backend = new VdpaBackend(device, { path: device.path, numQueues: 2 });
    backend.activate({ memory, features, queues: queues(kick, call, { enabled: false }) });
    assert.ok(!device.log.some((l) => l.startsWith('enable')));
    assert.throws(() => backend.enableQueue(1), { code: 'ERR_UNSUPPORTED', message: /VDUSE/ });
    const { backend: able, device: ableDevice } = active();
    able.enableQueue(1);
    assert.ok(ableDevice.log.filter((l) => l === 'enable 1 true').length === 2);
    assert.throws(() => able.enableQueue(5), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('refuses everything after close with ERR_CLOSED', async () => {
    const { backend, device } = active();
    await backend.close();
    assert.ok(device.closed);
    assert.throws(() => backend.readConfig(0, 4), { code: 'ERR_CLOSED' });
    await rejects(backend.pause(), 'ERR_CLOSED');
  });

  it('refuses a state file that is not a saved state, naming the field', () => {
    assert.throws(() => parseDeviceState('{'), { code: 'ERR_INVALID_ARG', message: /invalid JSON/ });
    assert.throws(() => parseDeviceState({ version: 2 }), { code: 'ERR_INVALID_ARG', message: /version 2/ });
  });
});
