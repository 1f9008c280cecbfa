/**
 * Command-line parsing: Node's `util.parseArgs` for the options, plus the one
 * thing it cannot do — iproute2-style `keyword value` pairs among the
 * positionals (`dev add name blk0 mgmtdev vdpasim_blk`, as `vdpa` takes them),
 * which {@link takeKeywordPairs} moves into options afterwards. Failures are
 * UsageErrors (exit code 2).
 * @module
 */
import { parseArgs as nodeParseArgs } from 'node:util';

import { ErrorCodes, VdpaError } from '../errors';

/** A command-line mistake: exit code 2 and the command's usage line. */
export class UsageError extends VdpaError {
  constructor(message: string) {
    super(message, { code: ErrorCodes.USAGE });
    this.name = 'VdpaError';
  }
}

/** One option a command accepts, with what `--help` says about it. */
export interface OptionDef {
  type: 'boolean' | 'string';
  /** One line for `--help`. */
  description: string;
  /** The value's placeholder in `--help` (string options), e.g. `MGMTDEV`. */
  value?: string;
  /** The default `--help` shows, when leaving the option out means a particular value. */
  default?: string;
  /** A one-letter alias, e.g. `j` for `--json`. */
  short?: string;
  /** A string option that may be given several times (`--fault A --fault B`); read it with {@link listOption}. */
  multiple?: boolean;
}

/** The options a command declares, by long name (without `--`). */
export type OptionSpec = Record<string, OptionDef>;

/** The parsed command line. */
export interface ParsedArgs {
  options: Record<string, string | boolean | string[]>;
  positionals: string[];
}

/** `--json`, for the commands whose output has a machine-readable form (not `serve`). */
export const JSON_OPTION: OptionSpec = {
  json: { type: 'boolean', short: 'j', description: 'print JSON on stdout (errors too: {"error": {...}})' },
};

/** `--help`, which every command accepts. */
export const HELP_OPTION: OptionSpec = {
  help: { type: 'boolean', short: 'h', description: 'print this help and exit' },
};

/** The option named in one of util.parseArgs's messages ("Option '-j, --json' does not take…"). */
function optionIn(message: string): string {
  const long = /'(?:-\w, )?(--[^' <]+)/.exec(message);
  if (long !== null) return long[1] as string;
  return /'(-[^' ]+)'/.exec(message)?.[1] ?? 'an option';
}

/** util.parseArgs's errors, reworded as ours (they name the option once, and say what to do). */
function usageErrorFrom(error: unknown): UsageError {
  const e = error as { code?: string; message?: string };
  const message = e.message ?? String(error);
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return new UsageError(`unknown option ${optionIn(message)}`);
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return new UsageError(
        /does not take an argument/.test(message)
          ? `${optionIn(message)} takes no value`
          : `${optionIn(message)} needs a value`,
      );
    default:
      return new UsageError(message);
  }
}

/** Parses argv against `spec` plus `--help`, with Node's util.parseArgs (strict: unknown options fail). */
export function parseArgs(argv: readonly string[], spec: OptionSpec): ParsedArgs {
  const all: OptionSpec = { ...spec, ...HELP_OPTION };
  const config = Object.fromEntries(
    Object.entries(all).map(([name, def]) => [
      name,
      {
        type: def.type,
        ...(def.short === undefined ? {} : { short: def.short }),
        ...(def.multiple === true ? { multiple: true } : {}),
      },
    ]),
  );
  let parsed: ReturnType<typeof nodeParseArgs>;
  try {
    parsed = nodeParseArgs({ args: [...argv], options: config, allowPositionals: true, strict: true });
  } catch (error) {
    throw usageErrorFrom(error);
  }
  const options: Record<string, string | boolean | string[]> = {};
  for (const [name, value] of Object.entries(parsed.values)) {
    if (value === '' || (Array.isArray(value) && value.includes('')))
      throw new UsageError(`--${name} needs a value`);
    if (typeof value === 'string' || typeof value === 'boolean') options[name] = value;
    else if (Array.isArray(value)) options[name] = value.filter((v): v is string => typeof v === 'string');
  }
  return { options, positionals: parsed.positionals };
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

/** Every value of a repeatable option (`multiple`), in order; [] when absent. */
export function listOption(parsed: ParsedArgs, name: string): string[] {
  const v = parsed.options[name];
  return Array.isArray(v) ? v : typeof v === 'string' ? [v] : [];
}

/** Exactly `count` positionals (named in `what` for the error). */
export function expectPositionals(parsed: ParsedArgs, what: string[], optional = 0): string[] {
  const n = parsed.positionals.length;
  if (n < what.length - optional) throw new UsageError(`missing ${what.slice(n).join(' ')}`);
  if (n > what.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[what.length])}`);
  return parsed.positionals;
}
