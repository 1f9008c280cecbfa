import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { VdpaError } from '../../lib/errors';
import type { CliContext } from '../../lib/cli/context';
import { COMMANDS, runCli } from '../../lib/cli/run';
import type { AddDeviceOptions, VdpaDeviceInfo, VdpaManagement } from '../../lib/mgmt/vdpa';
import { FakeSysfs } from './mgmt-fakes';

const BLK0: VdpaDeviceInfo = {
  name: 'blk0',
  mgmtdev: 'vdpasim_blk',
  deviceId: 2,
  deviceClass: 'block',
  vendorId: 0,
  maxVqs: 1,
  maxVqSize: 256,
  minVqSize: 1,
};

function fakeManager(
  overrides: Partial<VdpaManagement> = {},
): VdpaManagement & { added: AddDeviceOptions[]; closed: number } {
  const added: AddDeviceOptions[] = [];
  const m = {
    added,
    closed: 0,
    listMgmtDevices: async () => [
      {
        handle: 'vdpasim_net',
        name: 'vdpasim_net',
        supportedClasses: ['net'],
        classMask: 2n,
        maxSupportedVqs: 3,
        supportedFeatures: 0x308830028n,
      },
    ],
    getMgmtDevice: async () => {
      throw new VdpaError('no management device "x"', { code: 'ENODEV' });
    },
    listDevices: async () => [BLK0],
    getDevice: async (name: string) => {
      if (name !== 'blk0')
        throw new VdpaError(`no vdpa device named "${name}"`, { code: 'ENODEV', errno: 19 });
      return BLK0;
    },
    addDevice: async (o: AddDeviceOptions) => {
      added.push(o);
      return { ...BLK0, name: o.name };
    },
    deleteDevice: async (name: string) => {
      if (name === 'busy')
        throw new VdpaError('cannot delete "busy": /dev/vhost-vdpa-0 is open in pid 1 (x)', {
          code: 'EBUSY',
        });
    },
    getConfig: async () => ({
      name: 'blk0',
      deviceId: 2,
      deviceClass: 'block',
      deviceFeatures: 0x40n,
      blk: { capacity: 2048n, blockSize: 512 },
    }),
    listConfigs: async () => [],
    getVendorStats: async () => {
      throw new VdpaError('needs CAP_NET_ADMIN (run as root)', { code: 'EPERM' });
    },
    setMac: async () => undefined,
    close() {
      m.closed++;
    },
    ...overrides,
  };
  return m;
}

function context(manager: VdpaManagement, sysfs: FakeSysfs): CliContext & { out: string; err: string } {
  const ctx = {
    out: '',
    err: '',
    stdout: (t: string) => {
      ctx.out += t;
    },
    stderr: (t: string) => {
      ctx.err += t;
    },
    openManager: async () => manager,
    paths: sysfs.paths,
    env: {},
  };
  return ctx;
}

describe('cli: commands with a fake kernel', () => {
  let sysfs: FakeSysfs;
  beforeEach(() => {
    sysfs = new FakeSysfs();
    sysfs.addDevice('blk0', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-0' });
  });
  afterEach(() => sysfs.cleanup());

  it('prints --help for every command, with its usage and the exit codes', async () => {
    for (const command of COMMANDS) {
      const ctx = context(fakeManager(), sysfs);
      assert.equal(await runCli([...command.name.split(' '), '--help'], ctx), 0, command.name);
      assert.match(ctx.out, new RegExp(`^Usage: vhost-vdpa ${command.name}`), command.name);
      assert.match(ctx.out, /Exit codes: 0 ok/);
    }
  });

  it('lists devices as a table joined with sysfs, and as JSON', async () => {
    const ctx = context(fakeManager(), sysfs);
    assert.equal(await runCli(['dev', 'list'], ctx), 0);
    assert.match(ctx.out, /^NAME\s+CLASS\s+MGMTDEV/);
    assert.match(ctx.out, /blk0\s+block\s+vdpasim_blk\s+0\s+1\s+256\s+vhost_vdpa\s+\S*vhost-vdpa-0/);
    const j = context(fakeManager(), sysfs);
    assert.equal(await runCli(['dev', 'list', '--json'], j), 0);
    const parsed = JSON.parse(j.out) as (VdpaDeviceInfo & { binding: { driver: string } })[];
    assert.equal(parsed[0]?.binding.driver, 'vhost_vdpa');
  });

  it('prints bigints as hex in JSON', async () => {
    const ctx = context(fakeManager(), sysfs);
    assert.equal(await runCli(['mgmtdev', 'list', '-j'], ctx), 0);
    const [m] = JSON.parse(ctx.out) as { supportedFeatures: string; supportedFeatureNames: string[] }[];
    assert.equal(m?.supportedFeatures, '0x308830028');
    assert.ok(m?.supportedFeatureNames.includes('MAC'));
  });

  it('accepts the iproute2 form of dev add and the flag form', async () => {
    const manager = fakeManager();
    sysfs.addDevice('n1', { driver: 'vhost_vdpa', charDev: 'vhost-vdpa-1' });
    const ctx = context(manager, sysfs);
    assert.equal(
      await runCli(
        ['dev', 'add', 'name', 'n1', 'mgmtdev', 'vdpasim_net', 'mac', '52:54:00:00:00:01', 'mtu', '1400'],
        ctx,
      ),
      0,
      ctx.err,
    );
    assert.deepEqual(manager.added[0], {
      name: 'n1',
      mgmtdev: 'vdpasim_net',
      mac: '52:54:00:00:00:01',
      mtu: 1400,
    });
    assert.match(ctx.out, /char device: \S*vhost-vdpa-1/);
    assert.equal(
      await runCli(['dev', 'add', 'n1', '--mgmtdev=vdpasim_net', '--device-features', '0x300000000'], ctx),
      0,
      ctx.err,
    );
    assert.deepEqual(manager.added[1], { name: 'n1', mgmtdev: 'vdpasim_net', deviceFeatures: '0x300000000' });
    assert.equal(manager.closed, 2, 'the manager is closed after each command');
  });

  it('exits 2 with the usage line for command-line mistakes', async () => {
    const cases: string[][] = [
      [],
      ['bogus'],
      ['dev', 'bogus'],
      ['dev', 'add', 'x'],
      ['dev', 'show'],
      ['dev', 'show', 'a', 'b'],
      ['dev', 'list', '--nope'],
      ['dev', 'bind', 'blk0', 'vfio'],
      ['dev', 'stats', 'net0', '--queue', 'x'],
      ['serve'],
      ['serve', '--socket', '/tmp/x', '--mode', '999'],
    ];
    for (const argv of cases) {
      const ctx = context(fakeManager(), sysfs);
      assert.equal(await runCli(argv, ctx), 2, `${argv.join(' ')}: ${ctx.err}`);
    }
  });

  it('maps errors to exit codes and prints a JSON error with --json', async () => {
    const expectations: [string[], number, RegExp][] = [
      [['dev', 'show', 'ghost'], 3, /no vdpa device named "ghost"/],
      [['dev', 'del', 'busy'], 5, /is open in pid 1/],
      [['dev', 'stats', 'net0'], 4, /needs CAP_NET_ADMIN/],
      [['dev', 'bind', 'ghost', 'vhost'], 3, /no vdpa device named "ghost"/],
      [['dev', 'bind', 'blk0', 'virtio'], 3, /modprobe virtio_vdpa/],
    ];
    for (const [argv, code, message] of expectations) {
      const ctx = context(fakeManager(), sysfs);
      assert.equal(await runCli([...argv, '--json'], ctx), code, argv.join(' '));
      assert.match(ctx.err, message);
      const { error } = JSON.parse(ctx.out) as { error: { code: string; message: string } };
      assert.match(error.message, message);
    }
    const timeout = context(
      fakeManager({ listDevices: async () => Promise.reject(new VdpaError('t', { code: 'ETIMEDOUT' })) }),
      sysfs,
    );
    assert.equal(await runCli(['dev', 'list'], timeout), 6);
    const unsupported = context(
      fakeManager({ setMac: async () => Promise.reject(new VdpaError('u', { code: 'EOPNOTSUPP' })) }),
      sysfs,
    );
    assert.equal(await runCli(['dev', 'set', 'blk0', '--mac', '52:54:00:00:00:01'], unsupported), 7);
  });

  it('prints a block config with capacity in sectors and MiB', async () => {
    const ctx = context(fakeManager(), sysfs);
    assert.equal(await runCli(['dev', 'config', 'blk0'], ctx), 0);
    assert.match(ctx.out, /capacity:\s+2048 sectors \(1 MiB\)/);
    assert.match(ctx.out, /negotiated features: none/);
  });
});

describe('cli: help, version, completion and parse errors', () => {
  let sysfs: FakeSysfs;
  beforeEach(() => {
    sysfs = new FakeSysfs();
  });
  afterEach(() => sysfs.cleanup());

  async function cli(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    const ctx = context(fakeManager(), sysfs);
    const code = await runCli(argv, ctx);
    return { code, out: ctx.out, err: ctx.err };
  }

  it('describes every option of every command on one line, with its default when it has one', async () => {
    for (const command of COMMANDS) {
      const { code, out } = await cli([...command.name.split(' '), '--help']);
      assert.equal(code, 0, command.name);
      for (const [name, def] of Object.entries(command.options)) {
        const line = out.split('\n').find((l) => l.includes(`--${name}`) && /^\s+(-\w, )?--/.test(l));
        assert.ok(line !== undefined, `${command.name}: --${name} is not in --help`);
        assert.ok(line.includes(def.description), `${command.name}: --${name} has no description`);
        if (def.default !== undefined)
          assert.ok(line.includes(`(default: ${def.default})`), `${command.name}: --${name} default`);
        assert.ok(line.length <= 110, `${command.name}: --${name} line is ${line.length} columns`);
      }
      assert.match(out, /^ {2}-h, --help {2,}print this help and exit$/m, command.name);
    }
    const addHelp = (await cli(['dev', 'add', '--help'])).out;
    assert.match(addHelp, /--timeout MS\s+how long to wait .* \(default: 5000\)/);
    assert.match(addHelp, /-j, --json/);
  });

  it('offers --json only where the output has a JSON form: not on serve', async () => {
    assert.doesNotMatch((await cli(['serve', '--help'])).out, /--json/);
    const serve = await cli(['serve', '--socket', '/tmp/x.sock', '--json']);
    assert.equal(serve.code, 2);
    assert.match(serve.err, /unknown option --json\nusage: vhost-vdpa serve/);
    assert.equal(serve.out, '', 'a usage error of serve is not answered in JSON');
    for (const command of COMMANDS.filter((c) => c.name !== 'serve' && c.name !== 'completion'))
      assert.ok('json' in command.options, `${command.name} has --json`);
  });

  it('prints the package version with --version and -V', async () => {
    const pkg = JSON.parse(
      fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'),
    ) as {
      version: string;
    };
    for (const flag of ['--version', '-V']) {
      const { code, out } = await cli([flag]);
      assert.equal(code, 0);
      assert.equal(out, `${pkg.version}\n`);
    }
  });

  it('reports parse errors by option name, with the usage line, exit 2', async () => {
    const cases: [string[], RegExp][] = [
      [['dev', 'add', 'x', '--mgmtdev'], /--mgmtdev needs a value/],
      [['dev', 'add', 'x', '--mgmtdev='], /--mgmtdev needs a value/],
      [['dev', 'add', 'x', '--mgmtdev', '--json'], /--mgmtdev needs a value/],
      [['dev', 'list', '--json=yes'], /--json takes no value/],
      [['dev', 'show', 'blk0', '--nope'], /unknown option --nope\nusage: vhost-vdpa dev show NAME/],
      [['dev', 'show', 'blk0', '-x'], /unknown option -x/],
      [['completion', 'zsh'], /no completion for "zsh": only bash/],
      [['completion'], /missing SHELL/],
      [['vduse', 'blk', '--name', 'v', '--file', 'x.img', '--fill', 'sectors'], /--fill goes with --ram/],
      [['vduse', 'blk', '--name', 'v', '--ram', '1M', '--fill', 'stripes'], /--fill must be zero or sectors/],
    ];
    for (const [argv, message] of cases) {
      const { code, err } = await cli(argv);
      assert.equal(code, 2, argv.join(' '));
      assert.match(err, message, argv.join(' '));
    }
  });

  it('prints a bash completion script that completes commands, options and their choices', async () => {
    const { code, out } = await cli(['completion', 'bash']);
    assert.equal(code, 0);
    assert.match(out, /^# bash completion for vhost-vdpa/);
    assert.match(out, /complete -F _vhost_vdpa vhost-vdpa\n$/);
    const script = path.join(sysfs.root, 'completion.bash');
    fs.writeFileSync(script, out);
    const complete = (...words: string[]): string => {
      const res = spawnSync(
        'bash',
        [
          '-c',
          'source "$0"; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _vhost_vdpa; echo "${COMPREPLY[*]}"',
          script,
          'vhost-vdpa',
          ...words,
        ],
        { encoding: 'utf8' },
      );
      assert.equal(res.status, 0, res.stderr);
      return res.stdout.trim();
    };
    assert.equal(complete('d'), 'dev');
    assert.equal(complete('dev', 'a'), 'add');
    assert.equal(complete('dev', 'add', 'x', '--dr'), '--driver');
    assert.equal(complete('dev', 'add', 'x', '--driver', ''), 'vhost virtio');
    assert.equal(complete('dev', 'bind', '--timeout', '5', 'blk0', 'vi'), 'virtio');
    assert.equal(complete('serve', '--j'), '');
    assert.equal(complete('completion', ''), 'bash');
  });
});

describe('cli: the executable', () => {
  const main = path.join(__dirname, '..', '..', 'lib', 'cli', 'main.js');

  it('has a shebang and exits with testable codes', () => {
    const help = spawnSync(process.execPath, [main, '--help'], { encoding: 'utf8' });
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: vhost-vdpa COMMAND/);
    const bad = spawnSync(process.execPath, [main, 'dev', 'frobnicate'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /unknown command "dev frobnicate"/);
    assert.match(fs.readFileSync(main, 'utf8'), /^#!\/usr\/bin\/env node/);
  });
});

describe('cli: start-up cost', () => {
  it('loads no driver, device side, check suite, service or addon to dispatch a command', () => {
    // Under TCG (the lab) every module costs ~0.1 s: `vhost-vdpa --version` loaded 74 modules and the
    // native addon and took 7 s there. Command modules load their heavy dependencies when they run.
    const run = path.resolve(__dirname, '../../lib/cli/run');
    const result = spawnSync(
      process.execPath,
      [
        '-e',
        `const before = new Set(Object.keys(require.cache));
         require(${JSON.stringify(run)});
         console.log(JSON.stringify(Object.keys(require.cache).filter((k) => !before.has(k))));`,
      ],
      { encoding: 'utf8' },
    );
    assert.equal(result.status, 0, result.stderr);
    const lib = path.dirname(path.dirname(run));
    const loaded = (JSON.parse(result.stdout) as string[]).map((file) => path.relative(lib, file));
    const heavy = loaded.filter(
      (file) =>
        /^(blk|virtio|virtqueue|vduse|check|vmm)\//.test(file) ||
        /^(net\/net-device|service\/server|service\/backend|mgmt\/vdpa|device|native)\.js$/.test(file) ||
        file.endsWith('.node'),
    );
    assert.deepEqual(heavy, [], `loaded at start-up: ${loaded.join(' ')}`);
    assert.ok(loaded.length <= 30, `${loaded.length} modules at start-up: ${loaded.join(' ')}`);
  });
});
