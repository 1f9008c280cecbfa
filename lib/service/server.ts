/**
 * The management service: JSON-RPC 2.0 on a Unix socket. Every connection is
 * handled independently and asynchronously; limits on request size, queued
 * requests, unread responses and connections keep one bad client from
 * affecting the others.
 * @module
 */
import * as fs from 'node:fs';
import * as net from 'node:net';

import { classifyErrorCode } from '../error-categories';
import { ErrorCodes, VdpaError } from '../errors';
import {
  errorResponse,
  isResponse,
  JsonFramer,
  RpcErrorCode,
  RpcMethodError,
  validateRequest,
  type RpcResponse,
} from './jsonrpc';
import { createMethods, type MethodDefinition, type ServiceBackend } from './methods';

/** Options of {@link ManagementService.start}. */
export interface ServiceOptions {
  /** Path of the Unix socket to create. */
  socketPath: string;
  /** Permission bits of the socket (default 0o600: only the service's user may connect). */
  mode?: number;
  backend: ServiceBackend;
  /** Most simultaneous connections (default 64); more are answered with an error and closed. */
  maxConnections?: number;
  /** Largest request text in bytes (default 1 MiB); a larger one closes the connection. */
  maxRequestBytes?: number;
  /** Requests queued on one connection before reading from it pauses (default 32). */
  maxQueuedRequests?: number;
  /**
   * Unsent answer bytes past which a client is dropped (default 8 MiB). Back-pressure (no more answers
   * while the socket's write buffer is over its 16 KiB high-water mark) keeps a client that does not
   * read far below this; only one very large answer (a batch) can reach it.
   */
  maxPendingWriteBytes?: number;
  /**
   * Most requests in one batch (default 1000); a larger batch is answered with one error. Without a
   * limit, a 1 MiB batch of tiny invalid requests (`[1,1,…]`) makes ~45 MB of answers.
   */
  maxBatchRequests?: number;
  /** Longest a single method may run before the client gets a timeout error (default 60000 ms). */
  requestTimeoutMs?: number;
  /** Receives one line per notable event (connections, errors). */
  log?: (line: string) => void;
}

/** The JSON-RPC error code for a library error code (the table in lib/error-categories.ts). */
export function rpcCodeFor(code: string): number {
  return classifyErrorCode(code).jsonRpcCode;
}

function errorData(error: VdpaError): Record<string, unknown> {
  const data: Record<string, unknown> = { code: error.code };
  if (error.errno !== undefined) data.errno = error.errno;
  if (error.syscall !== undefined) data.syscall = error.syscall;
  if (error.path !== undefined) data.path = error.path;
  return data;
}

/** Refuses to replace anything but a stale socket at `socketPath`. */
async function clearStaleSocket(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    throw new VdpaError(`${socketPath} exists and is not a socket; choose another --socket path`, {
      code: 'EEXIST',
      path: socketPath,
    });
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = net.connect(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) {
    throw new VdpaError(`another service is already listening on ${socketPath}`, {
      code: 'EADDRINUSE',
      path: socketPath,
    });
  }
  fs.unlinkSync(socketPath);
}

class Connection {
  private readonly framer: JsonFramer;
  private readonly queue: string[] = [];
  private busy = false;
  private closed = false;
  /** No more requests will be read (client ended, too-large text, or shutdown). */
  private ending = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly service: ManagementService,
    private readonly options: Required<Omit<ServiceOptions, 'log' | 'backend' | 'socketPath' | 'mode'>>,
  ) {
    this.framer = new JsonFramer(options.maxRequestBytes);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('error', (error: NodeJS.ErrnoException) => {
      service.note(`connection error: ${error.code ?? error.message}`);
      this.destroy();
    });
    socket.on('close', () => {
      this.closed = true;
      service.forget(this);
    });
  }

  private onData(chunk: Buffer): void {
    for (const frame of this.framer.push(chunk)) {
      if ('tooLarge' in frame) {
        // Nothing after an oversized text can be framed reliably: answer and close.
        this.queue.length = 0;
        this.ending = true;
        this.send(
          errorResponse(
            null,
            RpcErrorCode.INVALID_REQUEST,
            `request larger than ${this.options.maxRequestBytes} bytes`,
          ),
        );
        this.socket.pause();
        if (!this.busy) this.socket.end();
        return;
      }
      this.queue.push(frame.text);
    }
    if (this.queue.length >= this.options.maxQueuedRequests || this.socket.writableNeedDrain)
      this.socket.pause();
    void this.drain();
  }

  private onEnd(): void {
    for (const frame of this.framer.end()) if ('text' in frame) this.queue.push(frame.text);
    this.ending = true;
    void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    while (this.queue.length > 0 && !this.closed) {
      if (this.socket.writableNeedDrain) {
        // Back-pressure: the client is not reading its answers. Answer nothing
        // more until it does; meanwhile the queue fills and reading pauses, so
        // the client's own writes block in its kernel buffer, not in our memory.
        this.socket.pause();
        await this.writable();
        continue;
      }
      const text = this.queue.shift() as string;
      const response = await this.service.handleText(text);
      if (response !== undefined) this.send(response);
      this.resumeIfRoom();
    }
    this.busy = false;
    if (this.ending && !this.closed) this.socket.end();
  }

  /** Reads requests again unless the queue is full, the client is ending, or it owes us a drain. */
  private resumeIfRoom(): void {
    if (
      this.queue.length < this.options.maxQueuedRequests &&
      !this.ending &&
      !this.socket.writableNeedDrain
    ) {
      this.socket.resume();
    }
  }

  /** Settles when the socket's write buffer has drained, or the socket closed. */
  private writable(): Promise<void> {
    return new Promise((resolve) => {
      const settle = (): void => {
        this.socket.off('drain', settle);
        this.socket.off('close', settle);
        resolve();
      };
      this.socket.on('drain', settle);
      this.socket.on('close', settle);
    });
  }

  send(response: RpcResponse | RpcResponse[]): void {
    if (this.closed || this.socket.destroyed) return;
    const text = JSON.stringify(response) + '\n';
    const unread = this.socket.writableLength + Buffer.byteLength(text);
    if (unread > this.options.maxPendingWriteBytes) {
      // Back-pressure stops at one answer past the high-water mark; only a
      // huge answer (a large batch) gets here. Drop rather than buffer it.
      this.service.note(
        `dropping a client: ${unread} bytes of answers unread, over maxPendingWriteBytes (${this.options.maxPendingWriteBytes})`,
      );
      this.destroy();
      return;
    }
    this.socket.write(text);
  }

  /** @internal Bytes this connection holds: queued and partial requests, unread input, unsent answers. */
  get bufferedBytes(): number {
    let queued = 0;
    for (const text of this.queue) queued += text.length;
    return queued + this.framer.bufferedLength + this.socket.readableLength + this.socket.writableLength;
  }

  /** Finishes the current request, then closes. */
  async shutdown(): Promise<void> {
    this.queue.length = 0;
    this.ending = true;
    if (!this.busy) this.socket.end();
    await new Promise<void>((resolve) => {
      if (this.closed) resolve();
      else this.socket.once('close', () => resolve());
      setTimeout(() => {
        this.destroy();
        resolve();
      }, 2000).unref();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/**
 * A running service. Start it with {@link ManagementService.start}; stop it
 * with {@link ManagementService.close} (the CLI does so on SIGTERM/SIGINT).
 */
export class ManagementService {
  private readonly connections = new Set<Connection>();
  private readonly methods: Record<string, MethodDefinition>;
  private closing = false;
  /** @internal Connections refused since the start (over `maxConnections`, or while closing). */
  refused = 0;
  private readonly limits: Required<Omit<ServiceOptions, 'log' | 'backend' | 'socketPath' | 'mode'>>;

  private constructor(
    private readonly server: net.Server,
    private readonly options: ServiceOptions,
  ) {
    this.methods = createMethods(options.backend);
    this.limits = {
      maxConnections: options.maxConnections ?? 64,
      maxRequestBytes: options.maxRequestBytes ?? 1024 * 1024,
      maxQueuedRequests: options.maxQueuedRequests ?? 32,
      maxPendingWriteBytes: options.maxPendingWriteBytes ?? 8 * 1024 * 1024,
      maxBatchRequests: options.maxBatchRequests ?? 1000,
      requestTimeoutMs: options.requestTimeoutMs ?? 60000,
    };
    server.on('connection', (socket) => this.accept(socket));
    // accept() itself can fail (EMFILE when a flood of clients uses up the descriptors): keep serving.
    server.on('error', (error: NodeJS.ErrnoException) =>
      this.note(`accept failed: ${error.code ?? error.message}`),
    );
  }

  /** The socket path. */
  get socketPath(): string {
    return this.options.socketPath;
  }

  /** Number of open connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Creates the socket (replacing only a stale one), restricts it to `mode`
   * before any client can connect, and starts serving.
   */
  static async start(options: ServiceOptions): Promise<ManagementService> {
    const mode = options.mode ?? 0o600;
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
      throw new VdpaError(`socket mode must be an octal permission such as 0600, not ${String(mode)}`, {
        code: ErrorCodes.INVALID_ARG,
      });
    }
    await clearStaleSocket(options.socketPath);
    const server = net.createServer({ pauseOnConnect: false });
    // bind() creates the socket file with the umask applied: make it private from the start, then chmod.
    const oldUmask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.socketPath, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (error) {
      const e = error as NodeJS.ErrnoException;
      throw new VdpaError(`cannot listen on ${options.socketPath}: ${e.code ?? e.message}`, {
        code: e.code ?? 'EIO',
        path: options.socketPath,
        cause: error,
      });
    } finally {
      process.umask(oldUmask);
    }
    fs.chmodSync(options.socketPath, mode);
    const service = new ManagementService(server, options);
    service.note(`listening on ${options.socketPath} (mode ${mode.toString(8).padStart(4, '0')})`);
    return service;
  }

  /** @internal */
  note(line: string): void {
    this.options.log?.(line);
  }

  /** @internal */
  forget(connection: Connection): void {
    this.connections.delete(connection);
  }

  private accept(socket: net.Socket): void {
    if (this.closing || this.connections.size >= this.limits.maxConnections) {
      this.refuse(socket);
      return;
    }
    this.connections.add(new Connection(socket, this, this.limits));
  }

  /**
   * Answers one error line and closes. The client may already be gone (it
   * reset, or closed before we accepted): the write then fails with EPIPE or
   * the read with ECONNRESET, and that must not reach `uncaughtException`.
   */
  private refuse(socket: net.Socket): void {
    const reason = this.closing
      ? 'the service is shutting down'
      : `too many connections (${this.limits.maxConnections})`;
    this.refused++;
    socket.on('error', () => socket.destroy());
    // Nothing more is read from a refused client; destroy once the answer is in its kernel buffer.
    socket.end(JSON.stringify(errorResponse(null, RpcErrorCode.UNAVAILABLE, reason)) + '\n', () =>
      socket.destroy(),
    );
  }

  /** @internal Bytes held for all connections (queued requests, unread input, unsent answers). */
  get bufferedBytes(): number {
    let total = 0;
    for (const connection of this.connections) total += connection.bufferedBytes;
    return total;
  }

  /** Answers one JSON text (a request or a batch); undefined when nothing is to be sent (notifications). */
  async handleText(text: string): Promise<RpcResponse | RpcResponse[] | undefined> {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      return errorResponse(null, RpcErrorCode.PARSE_ERROR, `parse error: ${(error as Error).message}`);
    }
    if (Array.isArray(value)) {
      if (value.length === 0)
        return errorResponse(null, RpcErrorCode.INVALID_REQUEST, 'an empty batch is not a request');
      if (value.length > this.limits.maxBatchRequests) {
        return errorResponse(
          null,
          RpcErrorCode.INVALID_REQUEST,
          `a batch of ${value.length} requests is over the limit of ${this.limits.maxBatchRequests}; split it`,
        );
      }
      const answers = await Promise.all(value.map((v) => this.handleValue(v)));
      const sent = answers.filter((a): a is RpcResponse => a !== undefined);
      return sent.length > 0 ? sent : undefined;
    }
    return this.handleValue(value);
  }

  private async handleValue(value: unknown): Promise<RpcResponse | undefined> {
    const request = validateRequest(value);
    if (isResponse(request)) return request;
    const id = request.id ?? null;
    const method = Object.prototype.hasOwnProperty.call(this.methods, request.method)
      ? this.methods[request.method]
      : undefined;
    let response: RpcResponse;
    if (method === undefined) {
      response = errorResponse(
        id,
        RpcErrorCode.METHOD_NOT_FOUND,
        `no method ${JSON.stringify(request.method)}; see list-methods`,
      );
    } else {
      response = await this.invoke(id, request.method, method, request.params);
    }
    return request.id === undefined ? undefined : response;
  }

  private async invoke(
    id: string | number | null,
    name: string,
    method: MethodDefinition,
    params: unknown,
  ): Promise<RpcResponse> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new VdpaError(`${name} did not finish within ${this.limits.requestTimeoutMs} ms`, {
              code: ErrorCodes.TIMEOUT,
            }),
          ),
        this.limits.requestTimeoutMs,
      );
    });
    try {
      const result = await Promise.race([method.handler(params), timeout]);
      return { jsonrpc: '2.0', id, result: result === undefined ? null : result };
    } catch (error) {
      if (error instanceof RpcMethodError) return errorResponse(id, error.rpcCode, error.message, error.data);
      if (error instanceof VdpaError)
        return errorResponse(id, rpcCodeFor(error.code), error.message, errorData(error));
      this.note(
        `internal error in ${name}: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
      );
      return errorResponse(id, RpcErrorCode.INTERNAL_ERROR, `internal error in ${name}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops accepting, lets in-flight requests finish (≤ 2 s), closes connections, removes the socket. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.connections].map((c) => c.shutdown()));
    await closed;
    try {
      fs.unlinkSync(this.options.socketPath);
    } catch {
      // Already gone (server.close removes it on most platforms).
    }
    this.options.backend.close();
    this.note('stopped');
  }
}
