import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { KernelBackend } from '../../lib/service/backend';
import { RpcErrorCode } from '../../lib/service/jsonrpc';
import { ManagementService } from '../../lib/service/server';
import { iproute2, requireLab } from './mgmt-helpers';

function call(socketPath: string, requests: object[]): Promise<Record<string, unknown>[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(socketPath);
    let buffer = '';
    const answers: Record<string, unknown>[] = [];
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const line of lines) answers.push(JSON.parse(line) as Record<string, unknown>);
      if (answers.length === requests.length) socket.end();
    });
    socket.on('close', () => resolve(answers));
    socket.on('error', reject);
    socket.write(requests.map((r) => JSON.stringify({ jsonrpc: '2.0', ...r })).join('\n') + '\n');
  });
}

describe('service (lab): JSON-RPC against the real kernel', function () {
  let dir: string;
  let socketPath: string;
  let service: ManagementService;

  before(async () => {
    requireLab();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-svc-'));
    socketPath = path.join(dir, 'vdpa.sock');
    service = await ManagementService.start({ socketPath, backend: new KernelBackend() });
  });
  after(async () => {
    await service?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('lists the interfaces iproute2 shows, with their char devices', async () => {
    const [r] = await call(socketPath, [{ method: 'list-interfaces', id: 1 }]);
    const list = r?.result as { 'device-id': string; chardev?: string; driver: string }[];
    assert.deepEqual(
      list.map((i) => i['device-id']).sort(),
      Object.keys(iproute2<{ dev: object }>('dev', 'show').dev).sort(),
    );
    assert.ok(
      list.every((i) => i.driver === 'vhost_vdpa' && /^\/dev\/vhost-vdpa-\d+$/.test(i.chardev ?? '')),
    );
  });

  it('creates and destroys devices for several concurrent clients, with bad requests mixed in', async () => {
    const names = ['svc0', 'svc1', 'svc2', 'svc3'];
    const created = await Promise.all(
      names.map((name, i) =>
        call(socketPath, [
          {
            method: 'create-interface',
            params: { 'device-id': name, mgmtdev: i % 2 ? 'vdpasim_net' : 'vdpasim_blk' },
            id: 1,
          },
          { method: 'create-interface', params: { 'device-id': name, mgmtdev: 'vdpasim_blk' }, id: 2 },
          {
            method: 'create-interface',
            params: { 'device-id': name, mgmtdev: 'vdpasim_blk', bogus: 1 },
            id: 3,
          },
          { method: 'nope', id: 4 },
        ]),
      ),
    );
    try {
      for (const [i, answers] of created.entries()) {
        const byId = new Map(answers.map((a) => [a.id, a]));
        const ok = byId.get(1)?.result as { 'device-id': string; chardev: string };
        assert.equal(ok['device-id'], names[i]);
        assert.match(ok.chardev, /^\/dev\/vhost-vdpa-\d+$/);
        assert.equal((byId.get(2)?.error as { code: number }).code, RpcErrorCode.BUSY);
        assert.equal((byId.get(3)?.error as { code: number }).code, RpcErrorCode.INVALID_PARAMS);
        assert.equal((byId.get(4)?.error as { code: number }).code, RpcErrorCode.METHOD_NOT_FOUND);
      }
      assert.ok(names.every((n) => fs.existsSync(`/sys/bus/vdpa/devices/${n}`)));
    } finally {
      const destroyed = await Promise.all(
        names.map((n) =>
          call(socketPath, [{ method: 'destroy-interface', params: { 'device-id': n }, id: 9 }]),
        ),
      );
      for (const [answer] of destroyed)
        assert.deepEqual((answer?.result as { destroyed: boolean }).destroyed, true);
    }
    assert.ok(names.every((n) => !fs.existsSync(`/sys/bus/vdpa/devices/${n}`)));
    const [gone] = await call(socketPath, [
      { method: 'destroy-interface', params: { 'device-id': 'svc0' }, id: 1 },
    ]);
    assert.equal((gone?.error as { code: number }).code, RpcErrorCode.NOT_FOUND);
  });

  it('answers get-stats with the kernel explanation when features are not negotiated', async () => {
    const [r] = await call(socketPath, [{ method: 'get-stats', params: { 'device-id': 'net0' }, id: 1 }]);
    const error = r?.error as { code: number; message: string; data: { code: string } };
    assert.equal(error.data.code, 'EAGAIN');
    assert.match(error.message, /feature negotiation not complete/);
  });
});
