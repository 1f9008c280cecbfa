/**
 * A small command-line parser: `--flag`, `--opt value`, `--opt=value`,
 * positionals, and iproute2-style `keyword value` pairs where a command
 * accepts them. Failures are UsageErrors (exit code 2).
 * @module
 */
import { ErrorCodes, VdpaError } from '../errors';

/** A command-line mistake: exit code 2 and the command's usage line. */
export class UsageError extends VdpaError {
  constructor(message: string) {
    super(message, { code: ErrorCodes.USAGE });
    this.name = 'VdpaError';
  }
}

/** Option kinds a command declares. */
export type OptionSpec = Record<string, 'boolean' | 'string'>;

/** The parsed command line. */
export interface ParsedArgs {
  options: Record<string, string | boolean>;
  positionals: string[];
}

/** Options every command accepts. */
export const COMMON_OPTIONS: OptionSpec = { json: 'boolean', help: 'boolean' };

/** Parses argv against `spec` (plus --json/--help; -h and -j are short forms). */
export function parseArgs(argv: readonly string[], spec: OptionSpec): ParsedArgs {
  const all: OptionSpec = { ...COMMON_OPTIONS, ...spec };
  const options: Record<string, string | boolean> = {};
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '-h') {
      options.help = true;
      continue;
    }
    if (arg === '-j') {
      options.json = true;
      continue;
    }
    if (!arg.startsWith('--')) {
      if (arg.startsWith('-') && arg.length > 1 && !/^-\d/.test(arg))
        throw new UsageError(`unknown option ${arg}`);
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const kind = all[name];
    if (kind === undefined) throw new UsageError(`unknown option --${name}`);
    if (kind === 'boolean') {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      options[name] = true;
      continue;
    }
    let value: string | undefined;
    if (eq >= 0) value = arg.slice(eq + 1);
    else {
      value = argv[i + 1];
      i++;
    }
    if (value === undefined || value === '') throw new UsageError(`--${name} needs a value`);
    options[name] = value;
  }
  return { options, positionals };
}

/**
 * Moves iproute2-style `keyword value` pairs (e.g. `mgmtdev vdpasim_net mac …`)
 * from positionals into options, mapping keywords to option names.
 * Positionals that are not keywords stay, in order.
 */
export function takeKeywordPairs(parsed: ParsedArgs, keywords: Record<string, string>): ParsedArgs {
  const rest: string[] = [];
  const options = { ...parsed.options };
  for (let i = 0; i < parsed.positionals.length; i++) {
    const word = parsed.positionals[i] as string;
    const option = keywords[word];
    if (option === undefined) {
      rest.push(word);
      continue;
    }
    const value = parsed.positionals[i + 1];
    if (value === undefined) throw new UsageError(`${word} needs a value`);
    if (options[option] !== undefined) throw new UsageError(`${word} given twice`);
    options[option] = value;
    i++;
  }
  return { options, positionals: rest };
}

/** The string value of an option, or undefined. */
export function stringOption(parsed: ParsedArgs, name: string): string | undefined {
  const v = parsed.options[name];
  return typeof v === 'string' ? v : undefined;
}

/** Exactly `count` positionals (named in `what` for the error). */
export function expectPositionals(parsed: ParsedArgs, what: string[], optional = 0): string[] {
  const n = parsed.positionals.length;
  if (n < what.length - optional) throw new UsageError(`missing ${what.slice(n).join(' ')}`);
  if (n > what.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[what.length])}`);
  return parsed.positionals;
}
