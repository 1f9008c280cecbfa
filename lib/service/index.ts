/**
 * The management service (JSON-RPC 2.0 on a Unix socket).
 * @module
 */
export { ManagementService, rpcCodeFor, type ServiceOptions } from './server';
export { KernelBackend, type KernelBackendOptions } from './backend';
export {
  createMethods,
  packageVersion,
  parseCreateParams,
  type CreateInterfaceParams,
  type InterfaceInfo,
  type MethodDefinition,
  type ServiceBackend,
} from './methods';
export {
  JsonFramer,
  RpcErrorCode,
  RpcMethodError,
  validateRequest,
  type RpcRequest,
  type RpcResponse,
} from './jsonrpc';
