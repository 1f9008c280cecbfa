/**
 * What a CLI command needs from the outside world, injectable for tests.
 * @module
 */
import type { VdpaManagement } from '../mgmt/vdpa';
import { SYSTEM_PATHS, type SystemPaths } from '../mgmt/sysfs';
import type { OptionSpec, ParsedArgs } from './args';

/** The CLI's environment. */
export interface CliContext {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Opens the netlink management client (the real one, or a fake in tests). */
  openManager(): Promise<VdpaManagement>;
  /** Where sysfs, /dev and /proc are. */
  paths: SystemPaths;
  env: NodeJS.ProcessEnv;
}

/** One command ("dev add"): its help and its implementation. */
export interface Command {
  /** Words after `vhost-vdpa`, e.g. 'dev add'. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** The usage line(s). */
  usage: string;
  /** Help text after the usage. */
  details: string;
  options: OptionSpec;
  /** Runs the command; resolves with the exit code. */
  run(args: ParsedArgs, ctx: CliContext): Promise<number>;
}

/** The real environment: process streams, the addon's netlink socket, the real /sys. */
export function defaultContext(): CliContext {
  return {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    // Loaded on first use: most commands never talk netlink (see run.ts on start-up cost).
    openManager: async () => (await import('../mgmt/vdpa')).VdpaManager.open(),
    paths: SYSTEM_PATHS,
    env: process.env,
  };
}

/** Runs `body` with an open manager and closes it afterwards. */
export async function withManager<T>(
  ctx: CliContext,
  body: (manager: VdpaManagement) => Promise<T>,
): Promise<T> {
  const manager = await ctx.openManager();
  try {
    return await body(manager);
  } finally {
    manager.close();
  }
}
