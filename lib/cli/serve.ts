/**
 * `vhost-vdpa serve --socket PATH`: the JSON-RPC management service.
 * @module
 */
import { parseInteger } from '../mgmt/validate';
import { expectPositionals, stringOption, UsageError } from './args';
import type { Command } from './context';

function parseMode(text: string | undefined): number {
  if (text === undefined) return 0o600;
  if (!/^0?[0-7]{3}$/.test(text))
    throw new UsageError(`--mode must be octal permissions such as 0600 or 0660, not ${text}`);
  return parseInt(text, 8);
}

export const serve: Command = {
  name: 'serve',
  summary: 'run the JSON-RPC 2.0 management service on a Unix socket',
  usage: 'vhost-vdpa serve --socket PATH [--mode 0600] [--max-connections N]',
  details:
    'Methods: list-interfaces, create-interface, destroy-interface, get-stats, list-methods, version.\n' +
    'Requests are JSON texts, newline-delimited or concatenated; each response is one line. The socket is\n' +
    'created with --mode (default 0600). Stops cleanly on SIGTERM/SIGINT (exit 0). See docs/cli.md.',
  options: {
    socket: { type: 'string', value: 'PATH', description: 'the Unix socket to listen on (required)' },
    mode: { type: 'string', value: 'OCTAL', default: '0600', description: "the socket file's permissions" },
    'max-connections': {
      type: 'string',
      value: 'N',
      default: '64',
      description: 'clients served at once; more are refused',
    },
  },
  async run(args, ctx) {
    expectPositionals(args, []);
    const socketPath = stringOption(args, 'socket');
    if (socketPath === undefined) throw new UsageError('missing --socket PATH');
    const maxText = stringOption(args, 'max-connections');
    // Loaded here, not at the top: the CLI loads every command module to dispatch (see run.ts).
    const [{ KernelBackend }, { ManagementService }] = await Promise.all([
      import('../service/backend'),
      import('../service/server'),
    ]);
    const service = await ManagementService.start({
      socketPath,
      mode: parseMode(stringOption(args, 'mode')),
      backend: new KernelBackend({ paths: ctx.paths }),
      ...(maxText === undefined
        ? {}
        : { maxConnections: parseInteger(maxText, '--max-connections', 1, 100000) }),
      log: (line) => ctx.stderr(`vhost-vdpa serve: ${line}\n`),
    });
    await new Promise<void>((resolve) => {
      const stop = (signal: string): void => {
        process.off('SIGTERM', onTerm);
        process.off('SIGINT', onInt);
        ctx.stderr(`vhost-vdpa serve: ${signal}, shutting down\n`);
        void service.close().then(resolve);
      };
      const onTerm = (): void => stop('SIGTERM');
      const onInt = (): void => stop('SIGINT');
      process.on('SIGTERM', onTerm);
      process.on('SIGINT', onInt);
    });
    return 0;
  },
};
