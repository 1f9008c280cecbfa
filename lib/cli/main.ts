#!/usr/bin/env node
/**
 * The `vhost-vdpa` executable (package.json `bin`).
 * @module
 */
import { runCli } from './run';

void runCli(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
