// Small helpers shared by the lab scripts: progress logging, child processes, cache files, locking.
// Plain Node ESM without npm dependencies so the lab works before `npm install` has run.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Returns a `[lab] <seconds>s message` logger writing to stderr; silent when `quiet`. */
export function createLogger({ quiet = false, t0 = Date.now() } = {}) {
  const log = (msg) => {
    if (!quiet) process.stderr.write(`[lab] ${((Date.now() - t0) / 1000).toFixed(1)}s ${msg}\n`);
  };
  // Errors and warnings must stay visible even in quiet mode: a missing device or a fallback changes results.
  log.warn = (msg) =>
    process.stderr.write(`[lab] ${((Date.now() - t0) / 1000).toFixed(1)}s WARNING: ${msg}\n`);
  log.quiet = quiet;
  log.t0 = t0;
  return log;
}

export class CommandError extends Error {
  constructor(cmd, args, code, stdout, stderr) {
    const tail = (stderr || stdout).trim().split('\n').slice(-20).join('\n');
    super(`\`${[cmd, ...args].join(' ')}\` exited with ${code}${tail ? `:\n${tail}` : ''}`);
    this.code = code;
    this.stdout = stdout;
    this.stderr = stderr;
  }
}

/**
 * Runs a command to completion and captures its output (rejecting with the output's tail on failure), so
 * that a successful preparation prints only our own progress lines.
 */
export function run(cmd, args = [], { cwd, env, input, allowFail = false } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd,
      env: env ? { ...process.env, ...env } : process.env,
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out = [];
    const err = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    if (input !== undefined) child.stdin.end(input);
    child.on('error', (e) => reject(new Error(`cannot run ${cmd}: ${e.message}`)));
    child.on('close', (code, signal) => {
      const stdout = Buffer.concat(out).toString();
      const stderr = Buffer.concat(err).toString();
      const status = code ?? 128;
      if (status !== 0 && !allowFail) reject(new CommandError(cmd, args, signal ?? status, stdout, stderr));
      else resolve({ code: status, stdout, stderr });
    });
  });
}

/** Runs `sh -c script` (for pipelines); same contract as run(). */
export function sh(script, opts) {
  return run('sh', ['-c', `set -e\n${script}`], opts);
}

export function sha256(...parts) {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('hex');
}

/** Writes via a temporary file + rename so a reader (or a crash) never sees a half-written file. */
export function writeFileAtomic(file, data) {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data);
  fs.renameSync(tmp, file);
}

export function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * Holds an exclusive flock(1) on `lockFile` while `fn` runs. The lock belongs to a helper process that
 * waits on a pipe from us, so it is released however this process ends (even SIGKILL) — a crashed
 * preparation can never leave a stale lock behind.
 */
export async function withLock(lockFile, log, fn) {
  fs.mkdirSync(path.dirname(lockFile), { recursive: true });
  const holder = spawn('flock', [lockFile, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const waitingNote = setTimeout(() => log(`waiting for ${lockFile} (another lab run is preparing)`), 1000);
  try {
    await new Promise((resolve, reject) => {
      holder.on('error', (e) => reject(new Error(`cannot run flock: ${e.message}`)));
      holder.on('exit', (code) => reject(new Error(`flock ${lockFile} exited with ${code}`)));
      holder.stdout.once('data', resolve);
    });
  } finally {
    clearTimeout(waitingNote);
  }
  holder.removeAllListeners('exit');
  try {
    return await fn();
  } finally {
    holder.stdin.end();
  }
}

/** Single-quotes a string for POSIX sh. */
export function shQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}
