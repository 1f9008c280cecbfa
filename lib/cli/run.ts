/**
 * The CLI dispatcher: finds the command, prints help, runs it, and turns
 * errors into a message on stderr (plus a JSON error with --json) and an exit
 * code scripts can test.
 * @module
 */
import { ErrorCodes, VdpaError } from '../errors';
import { packageVersion } from '../service/methods';
import { HELP_OPTION, parseArgs, UsageError, type OptionSpec } from './args';
import { completionCommand } from './completion';
import { defaultContext, type CliContext, type Command } from './context';
import { devAdd, devBind, devConfig, devDel, devList, devSet, devShow, devStats } from './dev';
import { info } from './info';
import { mgmtdevList, mgmtdevShow } from './mgmtdev';
import { checkCommand } from './check';
import { netCapture, netLoopbackTest, netSend } from './net';
import { exitCodeFor, ExitCode, toJson } from './output';
import { serve } from './serve';
import { vduseBlk } from './vduse';

/**
 * Every command, in help order. Dispatch needs each command's name and
 * options, so every command module is loaded at start-up: they keep their
 * heavy dependencies (the driver, the device side, the check suite, the
 * service, netlink) out of their top-level imports and load them when the
 * command runs. Under TCG each module costs ~0.1 s to load.
 */
export const COMMANDS: readonly Command[] = [
  mgmtdevList,
  mgmtdevShow,
  devList,
  devShow,
  devAdd,
  devDel,
  devConfig,
  devStats,
  devSet,
  devBind,
  info,
  serve,
  netSend,
  netCapture,
  netLoopbackTest,
  checkCommand,
  vduseBlk,
  completionCommand(() => COMMANDS),
];

const EXIT_CODES_HELP = `Exit codes: 0 ok, 1 failure, 2 usage error, 3 not found, 4 permission denied (run as root),
5 busy or already exists, 6 timeout, 7 not supported, 8 the device failed, 9 reset by recovery (retry).`;

function topHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return (
    'Usage: vhost-vdpa COMMAND [ARGS] [OPTIONS]\n\n' +
    "Manage vDPA devices through the kernel's vdpa netlink interface and inspect /dev/vhost-vdpa-N.\n\n" +
    'Commands:\n' +
    COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n') +
    '\n\nOptions:\n' +
    '  -h, --help     this text; `vhost-vdpa COMMAND --help` describes a command and its options\n' +
    '  -V, --version  print the package version and exit\n' +
    '  -j, --json     (most commands) machine-readable output\n\n' +
    EXIT_CODES_HELP +
    '\n'
  );
}

function groupHelp(group: string): string {
  const commands = COMMANDS.filter((c) => c.name.startsWith(`${group} `));
  const width = Math.max(...commands.map((c) => c.name.length));
  return (
    `Usage: vhost-vdpa ${group} SUBCOMMAND [ARGS] [--json] [--help]\n\nSubcommands:\n` +
    commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n') +
    '\n'
  );
}

/** `  --mgmtdev MGMTDEV   what it is (default: x)`, one line per option, aligned. */
function optionLines(spec: OptionSpec): string {
  const entries = Object.entries(spec).map(([name, def]) => {
    const short = def.short === undefined ? '    ' : `-${def.short}, `;
    const flag = `${short}--${name}${def.type === 'string' ? ` ${def.value ?? 'VALUE'}` : ''}`;
    const text = def.description + (def.default === undefined ? '' : ` (default: ${def.default})`);
    return [flag, text] as const;
  });
  const width = Math.max(...entries.map(([flag]) => flag.length));
  return entries.map(([flag, text]) => `  ${flag.padEnd(width)}  ${text}`).join('\n') + '\n';
}

function commandHelp(command: Command): string {
  return (
    `Usage: ${command.usage}\n\n${command.summary}.\n\n${command.details}\n\n` +
    `Options:\n${optionLines({ ...command.options, ...HELP_OPTION })}\n` +
    EXIT_CODES_HELP +
    '\n'
  );
}

const GROUPS = ['mgmtdev', 'dev', 'net', 'vduse'];
const ALIASES: Record<string, string> = {
  'dev vstats': 'dev stats',
  'mgmtdev ls': 'mgmtdev list',
  'dev ls': 'dev list',
};

/** Runs the CLI with `argv` (without node and script); resolves with the exit code. */
export async function runCli(argv: readonly string[], ctx: CliContext = defaultContext()): Promise<number> {
  let json = argv.includes('--json') || argv.includes('-j');
  try {
    const [first, second] = argv;
    if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
      ctx.stdout(topHelp());
      return first === undefined ? ExitCode.USAGE : ExitCode.OK;
    }
    if (first === '--version' || first === '-V') {
      ctx.stdout(`${packageVersion()}\n`);
      return ExitCode.OK;
    }
    let command: Command | undefined;
    let rest: readonly string[];
    if (GROUPS.includes(first)) {
      if (second === undefined || second === '--help' || second === '-h') {
        ctx.stdout(groupHelp(first));
        return second === undefined ? ExitCode.USAGE : ExitCode.OK;
      }
      const name = ALIASES[`${first} ${second}`] ?? `${first} ${second}`;
      command = COMMANDS.find((c) => c.name === name);
      if (command === undefined)
        throw new UsageError(`unknown command "${first} ${second}"; see \`vhost-vdpa ${first} --help\``);
      rest = argv.slice(2);
    } else {
      command = COMMANDS.find((c) => c.name === first);
      if (command === undefined)
        throw new UsageError(`unknown command "${first}"; see \`vhost-vdpa --help\``);
      rest = argv.slice(1);
    }
    // --json applies to the commands that have it; `serve --json` is a usage error, answered in text.
    json &&= 'json' in command.options;
    try {
      const parsed = parseArgs(rest, command.options);
      if (parsed.options.help === true) {
        ctx.stdout(commandHelp(command));
        return ExitCode.OK;
      }
      return await command.run(parsed, ctx);
    } catch (error) {
      if (error instanceof UsageError) error.message += `\nusage: ${command.usage.split('\n')[0] as string}`;
      throw error;
    }
  } catch (error) {
    const code = error instanceof VdpaError ? error.code : undefined;
    const message = error instanceof Error ? error.message : String(error);
    ctx.stderr(`vhost-vdpa: ${message}\n`);
    if (json) {
      const details =
        error instanceof VdpaError ? { errno: error.errno, syscall: error.syscall, path: error.path } : {};
      ctx.stdout(toJson({ error: { code: code ?? ErrorCodes.UNEXPECTED, message, ...details } }) + '\n');
    }
    return exitCodeFor(code);
  }
}
