/**
 * The service's JSON-RPC methods (those of the userspace-vdpa daemon —
 * list-interfaces, create-interface, destroy-interface, list-methods,
 * version — plus get-stats), their parameter validation, and the backend
 * they drive.
 * @module
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { ErrorCodes, VdpaError } from '../errors';
import type { VendorStats } from '../mgmt/vdpa';
import {
  parseFeatures,
  parseInteger,
  parseMac,
  parseMgmtdevHandle,
  validateDeviceName,
} from '../mgmt/validate';
import { RpcErrorCode, RpcMethodError } from './jsonrpc';

/** An "interface" as the service reports it: a vdpa device and what it is bound to. */
export interface InterfaceInfo {
  /** The vdpa device name (the key uvdpad's clients use). */
  'device-id': string;
  class: string;
  mgmtdev: string;
  /** vhost_vdpa, virtio_vdpa, or null when unbound. */
  driver: string | null;
  /** /dev/vhost-vdpa-N when bound to vhost_vdpa. */
  chardev?: string;
  'max-vqs': number;
  'max-vq-size': number;
}

/** Validated create-interface parameters. */
export interface CreateInterfaceParams {
  name: string;
  mgmtdev: string;
  mac?: string;
  mtu?: number;
  maxVqPairs?: number;
  deviceFeatures?: bigint;
  driver?: 'vhost_vdpa' | 'virtio_vdpa';
}

/** What the methods need; the real one is built from VdpaManager and sysfs (service/backend.ts). */
export interface ServiceBackend {
  listInterfaces(): Promise<InterfaceInfo[]>;
  createInterface(params: CreateInterfaceParams): Promise<InterfaceInfo>;
  destroyInterface(name: string): Promise<void>;
  getStats(name: string, queue: number): Promise<VendorStats>;
  close(): void;
}

/** The package version (from the nearest package.json named vhost-vdpa). */
export function packageVersion(): string {
  let dir = __dirname;
  for (let i = 0; i < 6; i++) {
    const file = path.join(dir, 'package.json');
    try {
      const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'vhost-vdpa' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // Not here; go up.
    }
    dir = path.dirname(dir);
  }
  return 'unknown';
}

type Params = Record<string, unknown>;

function invalidParams(message: string): RpcMethodError {
  return new RpcMethodError(RpcErrorCode.INVALID_PARAMS, message);
}

/**
 * Normalizes params to an object: absent → {}, an object as is, and (for
 * Go's net/rpc/jsonrpc, which wraps arguments in an array) [object] or [].
 */
function paramsObject(params: unknown, allowed: string[], required: string[]): Params {
  let object: Params;
  if (params === undefined) object = {};
  else if (Array.isArray(params)) {
    if (params.length === 0) object = {};
    else if (
      params.length === 1 &&
      typeof params[0] === 'object' &&
      params[0] !== null &&
      !Array.isArray(params[0])
    ) {
      object = params[0] as Params;
    } else throw invalidParams('params must be an object (or an array holding one object)');
  } else object = params as Params;
  const unknown = Object.keys(object).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) {
    throw invalidParams(
      `unknown parameter${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => JSON.stringify(k)).join(', ')}; ` +
        (allowed.length > 0 ? `accepted: ${allowed.join(', ')}` : 'this method takes none'),
    );
  }
  const missing = required.filter((k) => object[k] === undefined);
  if (missing.length > 0)
    throw invalidParams(`missing parameter${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
  return object;
}

/** Runs a validator, turning its VdpaError into an invalid-params error. */
function validated<T>(fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    if (error instanceof VdpaError) throw invalidParams(error.message);
    throw error;
  }
}

function parseDriverParam(value: unknown): 'vhost_vdpa' | 'virtio_vdpa' {
  if (value === 'vhost' || value === 'vhost_vdpa') return 'vhost_vdpa';
  if (value === 'virtio' || value === 'virtio_vdpa') return 'virtio_vdpa';
  throw invalidParams(`driver must be "vhost_vdpa" or "virtio_vdpa", not ${JSON.stringify(value)}`);
}

/** Parses create-interface parameters. */
export function parseCreateParams(params: unknown): CreateInterfaceParams {
  const p = paramsObject(
    params,
    ['device-id', 'mgmtdev', 'mac', 'mtu', 'max-vqp', 'device-features', 'driver'],
    ['device-id', 'mgmtdev'],
  );
  return validated(() => {
    const out: CreateInterfaceParams = {
      name: validateDeviceName(p['device-id'], 'device-id'),
      mgmtdev: p.mgmtdev as string,
    };
    parseMgmtdevHandle(p.mgmtdev);
    if (p.mac !== undefined) {
      parseMac(p.mac);
      out.mac = p.mac as string;
    }
    if (p.mtu !== undefined) out.mtu = parseInteger(p.mtu, 'mtu', 68, 0xffff);
    if (p['max-vqp'] !== undefined) out.maxVqPairs = parseInteger(p['max-vqp'], 'max-vqp', 1, 0x8000);
    if (p['device-features'] !== undefined) {
      if (typeof p['device-features'] !== 'string' && typeof p['device-features'] !== 'number') {
        throw new VdpaError('device-features must be a "0x…" string or a number', {
          code: ErrorCodes.INVALID_ARG,
        });
      }
      out.deviceFeatures = parseFeatures(p['device-features'], 'device-features');
    }
    if (p.driver !== undefined) out.driver = parseDriverParam(p.driver);
    return out;
  });
}

/** A method: its handler and one line of documentation (list-methods shows both). */
export interface MethodDefinition {
  description: string;
  params: string;
  handler(params: unknown): Promise<unknown>;
}

/** The method table over a backend. */
export function createMethods(backend: ServiceBackend): Record<string, MethodDefinition> {
  const methods: Record<string, MethodDefinition> = {
    'list-interfaces': {
      description: 'every vdpa device, with class, management device, bus driver and char device',
      params: '(none)',
      handler: async (params) => {
        paramsObject(params, [], []);
        return backend.listInterfaces();
      },
    },
    'create-interface': {
      description: 'create a vdpa device (and bind it); returns the new interface',
      params:
        '{"device-id", "mgmtdev", "mac"?, "mtu"?, "max-vqp"?, "device-features"?, "driver"?: "vhost_vdpa"|"virtio_vdpa"}',
      handler: async (params) => backend.createInterface(parseCreateParams(params)),
    },
    'destroy-interface': {
      description: 'delete a vdpa device (refused while its char device is open)',
      params: '{"device-id"}',
      handler: async (params) => {
        const p = paramsObject(params, ['device-id'], ['device-id']);
        const name = validated(() => validateDeviceName(p['device-id'], 'device-id'));
        await backend.destroyInterface(name);
        return { 'device-id': name, destroyed: true };
      },
    },
    'get-stats': {
      description: 'vendor statistics of one queue of a device (net devices whose parent has them)',
      params: '{"device-id", "queue"?: number (default 0)}',
      handler: async (params) => {
        const p = paramsObject(params, ['device-id', 'queue'], ['device-id']);
        const name = validated(() => validateDeviceName(p['device-id'], 'device-id'));
        if (p.queue !== undefined && typeof p.queue !== 'number')
          throw invalidParams('queue must be a number');
        const queue = validated(() =>
          p.queue === undefined ? 0 : parseInteger(p.queue, 'queue', 0, 0xffffffff),
        );
        const stats = await backend.getStats(name, queue);
        return {
          'device-id': stats.name,
          queue: stats.queueIndex,
          ...(stats.maxVqPairs === undefined ? {} : { 'max-vqp': stats.maxVqPairs }),
          ...(stats.negotiatedFeatures === undefined
            ? {}
            : { 'negotiated-features': `0x${stats.negotiatedFeatures.toString(16)}` }),
          counters: Object.fromEntries(stats.counters.map((c) => [c.name, c.value.toString()])),
        };
      },
    },
    version: {
      description: 'the service version',
      params: '(none)',
      handler: async (params) => {
        paramsObject(params, [], []);
        return packageVersion();
      },
    },
  };
  methods['list-methods'] = {
    description: 'the methods this service implements',
    params: '(none)',
    handler: async (params) => {
      paramsObject(params, [], []);
      return Object.keys(methods).sort();
    },
  };
  return methods;
}
