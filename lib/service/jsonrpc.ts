/**
 * JSON-RPC 2.0 over a byte stream: a framer that splits the stream into JSON
 * texts (newline-delimited or simply concatenated, as Go's json.Encoder and
 * most clients write them), request validation, and error objects.
 * @module
 */
import { StringDecoder } from 'node:string_decoder';

import { ERROR_CATEGORIES } from '../error-categories';

/**
 * JSON-RPC 2.0 error codes (spec §5.1) and the service's own (-32000…-32099).
 * The codes for library errors come from the shared table in
 * lib/error-categories.ts, which the CLI's exit statuses use too.
 */
export const RpcErrorCode = {
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: ERROR_CATEGORIES.usage.jsonRpcCode,
  INTERNAL_ERROR: ERROR_CATEGORIES.internal.jsonRpcCode,
  /** A failure with no more specific code below. */
  FAILED: ERROR_CATEGORIES.failure.jsonRpcCode,
  /** The device, management device or driver does not exist. */
  NOT_FOUND: ERROR_CATEGORIES['not-found'].jsonRpcCode,
  /** Busy or already exists. */
  BUSY: ERROR_CATEGORIES.busy.jsonRpcCode,
  /** The service lacks the privileges (CAP_NET_ADMIN). */
  PERMISSION: ERROR_CATEGORIES.permission.jsonRpcCode,
  /** The kernel did not answer in time. */
  TIMEOUT: ERROR_CATEGORIES.timeout.jsonRpcCode,
  /** Not supported by the kernel or the device. */
  UNSUPPORTED: ERROR_CATEGORIES.unsupported.jsonRpcCode,
  /** The service is overloaded or shutting down. */
  UNAVAILABLE: -32006,
  /** The device misbehaved or failed. */
  DEVICE: ERROR_CATEGORIES.device.jsonRpcCode,
  /** Interrupted by a device reset; safe to retry. */
  RETRY: ERROR_CATEGORIES.retry.jsonRpcCode,
} as const;

/** A JSON-RPC id. */
export type RpcId = string | number | null;

/** A JSON-RPC error object. */
export interface RpcError {
  code: number;
  message: string;
  data?: unknown;
}

/** A response. */
export type RpcResponse =
  | { jsonrpc: '2.0'; id: RpcId; result: unknown }
  | { jsonrpc: '2.0'; id: RpcId; error: RpcError };

/** A validated request. `id` is absent for notifications (no response is sent). */
export interface RpcRequest {
  method: string;
  params?: unknown[] | Record<string, unknown>;
  id?: RpcId;
}

/** An error a method throws to answer with a specific JSON-RPC error. */
export class RpcMethodError extends Error {
  constructor(
    readonly rpcCode: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
    this.name = 'RpcMethodError';
  }
}

/** Builds an error response. */
export function errorResponse(id: RpcId, code: number, message: string, data?: unknown): RpcResponse {
  return { jsonrpc: '2.0', id, error: data === undefined ? { code, message } : { code, message, data } };
}

/**
 * Checks one parsed value against the Request object rules (spec §4).
 * Returns the request, or the error response to send.
 */
export function validateRequest(value: unknown): RpcRequest | RpcResponse {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return errorResponse(null, RpcErrorCode.INVALID_REQUEST, 'a request must be a JSON object');
  }
  const v = value as Record<string, unknown>;
  const idValid =
    !('id' in v) ||
    typeof v.id === 'string' ||
    v.id === null ||
    (typeof v.id === 'number' && Number.isFinite(v.id));
  const id: RpcId = idValid && 'id' in v ? (v.id as RpcId) : null;
  if (!idValid)
    return errorResponse(null, RpcErrorCode.INVALID_REQUEST, 'id must be a string, a number or null');
  if (v.jsonrpc !== '2.0')
    return errorResponse(id, RpcErrorCode.INVALID_REQUEST, 'jsonrpc must be exactly "2.0"');
  if (typeof v.method !== 'string' || v.method.length === 0) {
    return errorResponse(id, RpcErrorCode.INVALID_REQUEST, 'method must be a non-empty string');
  }
  if ('params' in v && (typeof v.params !== 'object' || v.params === null)) {
    return errorResponse(
      id,
      RpcErrorCode.INVALID_REQUEST,
      'params must be an object or an array when present',
    );
  }
  const request: RpcRequest = { method: v.method };
  if ('params' in v) request.params = v.params as RpcRequest['params'];
  if ('id' in v) request.id = id;
  return request;
}

/** True for a response (as returned by validateRequest on failure). */
export function isResponse(value: RpcRequest | RpcResponse): value is RpcResponse {
  return 'jsonrpc' in value;
}

/** What the framer produced: a JSON text, or an oversized one it gave up on. */
export type Frame = { text: string } | { tooLarge: true };

/**
 * Splits a byte stream into JSON texts: objects and arrays by bracket
 * matching (strings and escapes respected), anything else up to the next
 * whitespace. At most `maxBytes` are buffered for one text; past that the
 * framer reports `tooLarge` and must not be used further.
 */
export class JsonFramer {
  private readonly decoder = new StringDecoder('utf8');
  private buffer = '';
  private scanned = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private start = -1;
  private scalar = false;
  private failed = false;

  constructor(private readonly maxBytes: number) {}

  /** Characters held for the text being framed (at most `maxBytes` worth). */
  get bufferedLength(): number {
    return this.buffer.length;
  }

  /** Feeds a chunk; returns the complete texts it finished. */
  push(chunk: Buffer): Frame[] {
    if (this.failed) return [];
    this.buffer += this.decoder.write(chunk);
    const frames: Frame[] = [];
    for (let i = this.scanned; i < this.buffer.length; i++) {
      const ch = this.buffer[i] as string;
      if (this.start < 0) {
        if (ch === ' ' || ch === '\n' || ch === '\r' || ch === '\t') continue;
        this.start = i;
        if (ch === '{' || ch === '[') this.depth = 1;
        else if (ch === '"')
          this.inString = true; // a top-level string: ends at its closing quote
        else this.scalar = true;
        continue;
      }
      if (this.scalar) {
        if (ch === ' ' || ch === '\n' || ch === '\r' || ch === '\t') frames.push(this.take(i));
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === '\\') this.escaped = true;
        else if (ch === '"') {
          this.inString = false;
          if (this.depth === 0) frames.push(this.take(i + 1));
        }
        continue;
      }
      if (ch === '"') this.inString = true;
      else if (ch === '{' || ch === '[') this.depth++;
      else if (ch === '}' || ch === ']') {
        this.depth--;
        if (this.depth === 0) frames.push(this.take(i + 1));
      }
    }
    // Drop what was consumed, keep the unfinished text.
    const keepFrom = this.start < 0 ? this.buffer.length : this.start;
    this.buffer = this.buffer.slice(keepFrom);
    if (this.start >= 0) this.start -= keepFrom;
    this.scanned = this.buffer.length;
    if (Buffer.byteLength(this.buffer) > this.maxBytes) {
      this.failed = true;
      this.buffer = '';
      frames.push({ tooLarge: true });
    }
    return frames;
  }

  /** At end of stream: a trailing scalar, or an unfinished text (as is, so it fails to parse). */
  end(): Frame[] {
    if (this.failed) return [];
    this.buffer += this.decoder.end();
    const rest = this.buffer.trim();
    this.buffer = '';
    return rest.length > 0 ? [{ text: rest }] : [];
  }

  private take(end: number): Frame {
    const text = this.buffer.slice(this.start, end);
    this.start = -1;
    this.scalar = false;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
    return { text };
  }
}
