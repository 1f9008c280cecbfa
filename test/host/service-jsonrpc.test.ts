import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { VdpaError } from '../../lib/errors';
import type { VendorStats } from '../../lib/mgmt/vdpa';
import { JsonFramer, RpcErrorCode } from '../../lib/service/jsonrpc';
import type { CreateInterfaceParams, InterfaceInfo, ServiceBackend } from '../../lib/service/methods';
import { ManagementService } from '../../lib/service/server';

/** A backend that keeps interfaces in a Map; `slow` makes create-interface wait. */
class FakeBackend implements ServiceBackend {
  readonly interfaces = new Map<string, InterfaceInfo>();
  created: CreateInterfaceParams[] = [];
  slowMs = 0;
  closed = false;

  async listInterfaces(): Promise<InterfaceInfo[]> {
    return [...this.interfaces.values()];
  }
  async createInterface(params: CreateInterfaceParams): Promise<InterfaceInfo> {
    if (this.slowMs > 0) await new Promise((r) => setTimeout(r, this.slowMs));
    if (this.interfaces.has(params.name)) {
      throw new VdpaError(`a vdpa device named "${params.name}" already exists`, {
        code: 'EEXIST',
        errno: 17,
      });
    }
    this.created.push(params);
    const info: InterfaceInfo = {
      'device-id': params.name,
      class: 'block',
      mgmtdev: params.mgmtdev,
      driver: 'vhost_vdpa',
      chardev: `/dev/vhost-vdpa-${this.interfaces.size}`,
      'max-vqs': 1,
      'max-vq-size': 256,
    };
    this.interfaces.set(params.name, info);
    return info;
  }
  async destroyInterface(name: string): Promise<void> {
    if (!this.interfaces.delete(name))
      throw new VdpaError(`no vdpa device named "${name}"`, { code: 'ENODEV', errno: 19 });
  }
  async getStats(name: string, queue: number): Promise<VendorStats> {
    return { name, deviceId: 1, queueIndex: queue, counters: [{ name: 'received_desc', value: 3n }] };
  }
  close(): void {
    this.closed = true;
  }
}

/** A line-oriented client. */
class Client {
  private buffer = '';
  private waiters: ((line: string) => void)[] = [];
  private lines: string[] = [];
  readonly socket: net.Socket;
  closed: Promise<void>;

  constructor(socketPath: string) {
    this.socket = net.connect(socketPath);
    this.socket.setEncoding('utf8');
    this.socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let nl: number;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, nl);
        this.buffer = this.buffer.slice(nl + 1);
        const waiter = this.waiters.shift();
        if (waiter !== undefined) waiter(line);
        else this.lines.push(line);
      }
    });
    this.closed = new Promise((resolve) => this.socket.on('close', () => resolve()));
    this.socket.on('error', () => undefined);
  }

  next(): Promise<unknown> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(JSON.parse(line));
    return new Promise((resolve) => this.waiters.push((l) => resolve(JSON.parse(l))));
  }

  async call(method: string, params?: unknown, id: number | string = 1): Promise<Record<string, unknown>> {
    this.socket.write(
      JSON.stringify({ jsonrpc: '2.0', method, id, ...(params === undefined ? {} : { params }) }) + '\n',
    );
    return (await this.next()) as Record<string, unknown>;
  }

  raw(text: string): void {
    this.socket.write(text);
  }

  end(): void {
    this.socket.end();
  }
}

/**
 * Connects, then closes abruptly: at once (before the service can answer), or
 * after sending a request and half of another. The socket is paused before it
 * connects, so whatever the service sent stays unread in the kernel and closing
 * resets the service's end (ECONNRESET on its next read, EPIPE on its next
 * write): the Unix-socket equivalent of a TCP RST, which `resetAndDestroy()`
 * cannot send on a Unix socket (it throws ERR_INVALID_HANDLE_TYPE).
 */
function connectAndReset(socketPath: string, when: 'at-once' | 'after-a-request'): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    socket.pause();
    socket.on('error', () => undefined);
    socket.once('close', () => resolve());
    socket.once('connect', () => {
      if (when === 'at-once') {
        socket.destroy();
        return;
      }
      socket.write('{"jsonrpc":"2.0","method":"list-interfaces","id":1}\n{"jsonrpc":"2.0","me');
      setTimeout(() => socket.destroy(), 20);
    });
  });
}

function errorCode(response: Record<string, unknown>): number | undefined {
  return (response.error as { code?: number } | undefined)?.code;
}

describe('service: JSON framing', () => {
  it('splits newline-delimited and concatenated texts, with strings holding braces', () => {
    const framer = new JsonFramer(1000);
    const frames = [
      ...framer.push(Buffer.from('{"a":"}{"}\n{"b":[1,{"c":2}]}{"d"')),
      ...framer.push(Buffer.from(':"\\"}"} [1] 42 "s p"\n')),
    ];
    assert.deepEqual(frames, [
      { text: '{"a":"}{"}' },
      { text: '{"b":[1,{"c":2}]}' },
      { text: '{"d":"\\"}"}' },
      { text: '[1]' },
      { text: '42' },
      { text: '"s p"' },
    ]);
  });

  it('reports a text larger than the limit once, then stops', () => {
    const framer = new JsonFramer(16);
    assert.deepEqual(framer.push(Buffer.from('{"a":"' + 'x'.repeat(40))), [{ tooLarge: true }]);
    assert.deepEqual(framer.push(Buffer.from('"}')), []);
  });

  it('returns an unfinished text at end of stream (so it fails to parse)', () => {
    const framer = new JsonFramer(100);
    assert.deepEqual(framer.push(Buffer.from('{"a":')), []);
    assert.deepEqual(framer.end(), [{ text: '{"a":' }]);
  });
});

describe('service: JSON-RPC on a Unix socket', () => {
  let dir: string;
  let socketPath: string;
  let backend: FakeBackend;
  let service: ManagementService;

  beforeEach(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-svc-'));
    socketPath = path.join(dir, 'vdpa.sock');
    backend = new FakeBackend();
    service = await ManagementService.start({
      socketPath,
      backend,
      maxConnections: 8,
      maxRequestBytes: 4096,
    });
  });
  afterEach(async () => {
    await service.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates the socket with mode 0600', () => {
    assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);
  });

  it('answers version, list-methods and the uvdpad methods', async () => {
    const c = new Client(socketPath);
    assert.match(String((await c.call('version')).result), /^\d+\.\d+\.\d+/);
    assert.deepEqual((await c.call('list-methods')).result, [
      'create-interface',
      'destroy-interface',
      'get-stats',
      'list-interfaces',
      'list-methods',
      'version',
    ]);
    const created = await c.call(
      'create-interface',
      { 'device-id': 'blk9', mgmtdev: 'vdpasim_blk', driver: 'vhost' },
      7,
    );
    assert.equal(created.id, 7);
    assert.deepEqual(created.result, backend.interfaces.get('blk9'));
    assert.equal(backend.created[0]?.driver, 'vhost_vdpa');
    assert.deepEqual((await c.call('list-interfaces')).result, [backend.interfaces.get('blk9')]);
    assert.deepEqual((await c.call('get-stats', { 'device-id': 'net0', queue: 2 })).result, {
      'device-id': 'net0',
      queue: 2,
      counters: { received_desc: '3' },
    });
    assert.deepEqual((await c.call('destroy-interface', [{ 'device-id': 'blk9' }])).result, {
      'device-id': 'blk9',
      destroyed: true,
    });
    c.end();
  });

  it('maps library errors to service error codes with data', async () => {
    const c = new Client(socketPath);
    const r = await c.call('destroy-interface', { 'device-id': 'ghost' });
    assert.equal(errorCode(r), RpcErrorCode.NOT_FOUND);
    assert.deepEqual((r.error as { data: unknown }).data, { code: 'ENODEV', errno: 19 });
    await c.call('create-interface', { 'device-id': 'a', mgmtdev: 'm' });
    assert.equal(
      errorCode(await c.call('create-interface', { 'device-id': 'a', mgmtdev: 'm' })),
      RpcErrorCode.BUSY,
    );
    c.end();
  });

  it('answers malformed input with the JSON-RPC error codes and keeps the connection', async () => {
    const c = new Client(socketPath);
    c.raw('{"jsonrpc":"2.0","method":\n');
    c.raw('}\n');
    assert.equal(errorCode((await c.next()) as Record<string, unknown>), RpcErrorCode.PARSE_ERROR);
    c.raw('42\n');
    assert.equal(errorCode((await c.next()) as Record<string, unknown>), RpcErrorCode.INVALID_REQUEST);
    c.raw('{"jsonrpc":"1.0","method":"version","id":3}\n');
    const wrongVersion = (await c.next()) as Record<string, unknown>;
    assert.equal(errorCode(wrongVersion), RpcErrorCode.INVALID_REQUEST);
    assert.equal(wrongVersion.id, 3);
    c.raw('{"jsonrpc":"2.0","method":"version","id":{"x":1}}\n');
    assert.equal(errorCode((await c.next()) as Record<string, unknown>), RpcErrorCode.INVALID_REQUEST);
    c.raw('[]\n');
    assert.equal(errorCode((await c.next()) as Record<string, unknown>), RpcErrorCode.INVALID_REQUEST);
    assert.equal(errorCode(await c.call('no-such-method')), RpcErrorCode.METHOD_NOT_FOUND);
    assert.equal(errorCode(await c.call('__proto__')), RpcErrorCode.METHOD_NOT_FOUND);
    assert.equal(errorCode(await c.call('version', { extra: 1 })), RpcErrorCode.INVALID_PARAMS);
    assert.equal(errorCode(await c.call('create-interface', { mgmtdev: 'x' })), RpcErrorCode.INVALID_PARAMS);
    assert.equal(
      errorCode(await c.call('create-interface', { 'device-id': '../x', mgmtdev: 'x' })),
      RpcErrorCode.INVALID_PARAMS,
    );
    assert.equal(
      errorCode(await c.call('create-interface', { 'device-id': 'x', mgmtdev: 'm', mtu: 10 })),
      RpcErrorCode.INVALID_PARAMS,
    );
    assert.equal(
      errorCode(await c.call('create-interface', { 'device-id': 'x', mgmtdev: 'm', driver: 'vfio' })),
      RpcErrorCode.INVALID_PARAMS,
    );
    assert.equal(
      errorCode(await c.call('get-stats', { 'device-id': 'n', queue: '1' })),
      RpcErrorCode.INVALID_PARAMS,
    );
    assert.equal(errorCode(await c.call('get-stats', [1, 2])), RpcErrorCode.INVALID_PARAMS);
    assert.equal(backend.created.length, 0, 'no invalid request reached the backend');
    // Still usable afterwards.
    assert.equal(typeof (await c.call('version')).result, 'string');
    c.end();
  });

  it('answers batches and sends nothing for notifications', async () => {
    const c = new Client(socketPath);
    c.raw(
      JSON.stringify([
        { jsonrpc: '2.0', method: 'version', id: 1 },
        { jsonrpc: '2.0', method: 'version' },
        { jsonrpc: '2.0', method: 'nope', id: 2 },
      ]) + '\n',
    );
    const batch = (await c.next()) as Record<string, unknown>[];
    assert.deepEqual(
      batch.map((r) => r.id),
      [1, 2],
    );
    c.raw('{"jsonrpc":"2.0","method":"version"}\n');
    assert.equal(
      (await c.call('list-methods', undefined, 'after')).id,
      'after',
      'the notification produced no answer',
    );
    c.end();
  });

  it('serves several concurrent clients while one is slow or hostile', async () => {
    backend.slowMs = 300;
    const slow = new Client(socketPath);
    const slowAnswer = slow.call('create-interface', { 'device-id': 'slow', mgmtdev: 'm' });
    const hostile = new Client(socketPath);
    hostile.raw('{"jsonrpc":"2.0","method":"version","params":{"x":"' + 'A'.repeat(8192)); // never finished, too large
    const silent = new Client(socketPath); // connects and sends nothing
    const clients = Array.from({ length: 5 }, () => new Client(socketPath));
    const started = Date.now();
    const answers = await Promise.all(clients.map((c, i) => c.call('list-methods', undefined, i)));
    assert.ok(Date.now() - started < 250, 'fast clients did not wait for the slow one');
    answers.forEach((a, i) => assert.equal(a.id, i));
    const tooLarge = (await hostile.next()) as Record<string, unknown>;
    assert.equal(errorCode(tooLarge), RpcErrorCode.INVALID_REQUEST);
    await hostile.closed;
    assert.equal(((await slowAnswer).result as InterfaceInfo)['device-id'], 'slow');
    for (const c of [slow, silent, ...clients]) c.end();
  });

  it('refuses connections beyond the limit with an error, serving the others', async () => {
    const clients = Array.from({ length: 8 }, () => new Client(socketPath));
    await Promise.all(clients.map((c) => c.call('version')));
    const extra = new Client(socketPath);
    assert.equal(errorCode((await extra.next()) as Record<string, unknown>), RpcErrorCode.UNAVAILABLE);
    await extra.closed;
    assert.equal(typeof (await clients[0]?.call('version'))?.result, 'string');
    for (const c of clients) c.end();
  });

  it('survives 200 simultaneous connections beyond the limit that all reset; no device created or lost', async () => {
    const keeper = new Client(socketPath);
    await keeper.call('create-interface', { 'device-id': 'keep', mgmtdev: 'm' });
    const before = [...backend.interfaces.keys()];
    // Fill the other 7 of the 8 slots, so that every one of the 200 is refused.
    const holders = Array.from({ length: 7 }, () => new Client(socketPath));
    await Promise.all(holders.map((c) => c.call('version')));
    assert.equal(service.connectionCount, 8);
    await Promise.all(
      Array.from({ length: 200 }, (_, i) =>
        connectAndReset(socketPath, i % 2 === 0 ? 'at-once' : 'after-a-request'),
      ),
    );
    // A client that closed at once may still wait in the listen backlog: let the service get to it.
    for (let i = 0; i < 200 && service.refused < 200; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(service.refused, 200, 'every one of the 200 was refused');
    // Accepted connections that reset: the holders send a request and vanish without reading the answer.
    for (const holder of holders) {
      holder.socket.pause();
      holder.raw('{"jsonrpc":"2.0","method":"list-methods","id":2}\n');
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
    await Promise.all(holders.map((holder) => (holder.socket.destroy(), holder.closed)));
    // The service notices each reset on its next read or write: wait for that, not a fixed time.
    for (let i = 0; i < 200 && service.connectionCount > 1; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(service.connectionCount, 1, 'only the keeper is left');
    const after = new Client(socketPath);
    assert.equal(typeof (await after.call('version')).result, 'string');
    assert.deepEqual((await keeper.call('list-interfaces')).result, [backend.interfaces.get('keep')]);
    assert.deepEqual([...backend.interfaces.keys()], before, 'no device lost');
    assert.equal(backend.created.length, 1, 'no device created');
    keeper.end();
    after.end();
  });

  it('stops reading from a client that never reads its answers: memory stays bounded, others are served', async function () {
    this.timeout(20000);
    const hog = net.connect(socketPath);
    hog.pause(); // never reads a byte
    hog.on('error', () => undefined);
    await new Promise((resolve) => hog.once('connect', resolve));
    const request = '{"jsonrpc":"2.0","method":"list-methods","id":1}\n';
    const answerBytes = 130; // each answer is about this long
    const requests = 20000; // ~2.6 MB of answers, far more than the kernel buffers between us
    let peak = 0;
    const sample = setInterval(() => (peak = Math.max(peak, service.bufferedBytes)), 2);
    try {
      for (let i = 0; i < requests; i++) hog.write(request);
      // Wait until the service stops taking requests: the hog's own writes back up.
      let stalled = 0;
      for (let i = 0; i < 500 && stalled < 20; i++) {
        const before = hog.writableLength;
        await new Promise((r) => setTimeout(r, 10));
        stalled = hog.writableLength > 0 && hog.writableLength === before ? stalled + 1 : 0;
      }
      assert.ok(stalled >= 20, "the service stopped reading the hog's requests");
      assert.ok(
        hog.writableLength > (requests * request.length) / 2,
        `most requests still wait in the hog (${hog.writableLength} bytes unsent)`,
      );
      // Other clients are answered meanwhile.
      const other = new Client(socketPath);
      assert.equal(typeof (await other.call('version')).result, 'string');
      peak = Math.max(peak, service.bufferedBytes);
      // Bound (docs/cli.md): a full queue plus the texts of one read chunk (64 KiB), one paused
      // read chunk, the write high-water mark (16 KiB) and one answer. Without back-pressure: megabytes.
      const bound = 32 * request.length + 2 * 64 * 1024 + 16 * 1024 + answerBytes;
      assert.ok(peak <= bound, `the service held ${peak} bytes for its clients (bound ${bound})`);
      hog.destroy();
      for (let i = 0; i < 200 && service.connectionCount > 1; i++)
        await new Promise((r) => setTimeout(r, 10));
      assert.equal(service.connectionCount, 1, "the hog's connection is gone");
      assert.equal(typeof (await other.call('version')).result, 'string');
      assert.equal(backend.created.length, 0);
      other.end();
    } finally {
      clearInterval(sample);
      hog.destroy();
    }
  });

  it('keeps serving when accept() fails (EMFILE), and logs it', async () => {
    const lines: string[] = [];
    const logged = await ManagementService.start({
      socketPath: path.join(dir, 'logged.sock'),
      backend: new FakeBackend(),
      log: (line) => lines.push(line),
    });
    try {
      // net.Server emits accept() failures as 'error' events; unhandled, they would end the process.
      const server = (logged as unknown as { server: net.Server }).server;
      server.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' }));
      assert.ok(lines.includes('accept failed: EMFILE'), lines.join('\n'));
      const c = new Client(path.join(dir, 'logged.sock'));
      assert.equal(typeof (await c.call('version')).result, 'string');
      c.end();
    } finally {
      await logged.close();
    }
  });

  it('answers a batch over maxBatchRequests with one error instead of thousands of answers', async () => {
    const c = new Client(socketPath);
    c.raw(JSON.stringify(Array.from({ length: 1001 }, () => 1)) + '\n');
    const refused = (await c.next()) as Record<string, unknown>;
    assert.equal(errorCode(refused), RpcErrorCode.INVALID_REQUEST);
    assert.match(
      (refused.error as { message: string }).message,
      /batch of 1001 requests is over the limit of 1000/,
    );
    c.raw(
      JSON.stringify(Array.from({ length: 1000 }, (_, id) => ({ jsonrpc: '2.0', method: 'version', id }))) +
        '\n',
    );
    const answers = (await c.next()) as unknown[];
    assert.equal(answers.length, 1000);
    c.end();
  });

  it('refuses to start on a socket another service is listening on, and replaces a stale one', async () => {
    await assert.rejects(
      ManagementService.start({ socketPath, backend: new FakeBackend() }),
      (e: VdpaError) => e.code === 'EADDRINUSE',
    );
    const stalePath = path.join(dir, 'stale.sock');
    const stale = net.createServer().listen(stalePath);
    await new Promise((r) => stale.once('listening', r));
    // Simulate a crash: the file stays but nobody listens.
    stale.close();
    fs.writeFileSync(path.join(dir, 'plain'), 'x');
    await assert.rejects(
      ManagementService.start({ socketPath: path.join(dir, 'plain'), backend: new FakeBackend() }),
      (e: VdpaError) => e.code === 'EEXIST',
    );
    const second = await ManagementService.start({
      socketPath: stalePath,
      backend: new FakeBackend(),
      mode: 0o660,
    });
    assert.equal(fs.statSync(stalePath).mode & 0o777, 0o660);
    await second.close();
    assert.equal(fs.existsSync(stalePath), false, 'close removes the socket');
  });

  it('closes cleanly: connections end, the backend closes, the socket is removed', async () => {
    const c = new Client(socketPath);
    await c.call('version');
    await service.close();
    await c.closed;
    assert.equal(backend.closed, true);
    assert.equal(fs.existsSync(socketPath), false);
  });
});

describe('service: `vhost-vdpa serve` process', () => {
  it('starts without the vdpa module, reports it per request, and exits 0 on SIGTERM', async function () {
    this.timeout(20000);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-serve-'));
    const socketPath = path.join(dir, 's.sock');
    const main = path.join(__dirname, '..', '..', 'lib', 'cli', 'main.js');
    const child = spawn(process.execPath, [main, 'serve', '--socket', socketPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socketPath); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(fs.existsSync(socketPath), `socket created; stderr: ${stderr}`);
      const c = new Client(socketPath);
      const r = await c.call('list-interfaces');
      // This host has no vdpa module: the error says so, and the service stays up.
      assert.equal(errorCode(r), RpcErrorCode.NOT_FOUND, JSON.stringify(r));
      assert.match(
        (r.error as { message: string }).message,
        /vdpa module is not loaded|initial network namespace/,
      );
      assert.equal(typeof (await c.call('version')).result, 'string');
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      assert.equal(await exited, 0, stderr);
      assert.equal(fs.existsSync(socketPath), false, 'socket removed');
      assert.match(stderr, /SIGTERM, shutting down/);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
