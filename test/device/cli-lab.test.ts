import { strict as assert } from 'node:assert';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

import { testDevices } from './helpers';
import { cli, cliProcess, iproute2, requireLab } from './mgmt-helpers';

interface Ip2Dev {
  dev: Record<string, { type: string; mgmtdev: string; max_vqs: number; max_vq_size: number }>;
}

describe('cli (lab): vhost-vdpa against the real kernel', function () {
  before(requireLab);

  it('`vhost-vdpa dev list --json` works as the README shows: the CLI is on the PATH in the lab', () => {
    const r = spawnSync('vhost-vdpa', ['dev', 'list', '--json'], { encoding: 'utf8', timeout: 120000 });
    assert.equal(r.error, undefined, 'vhost-vdpa is not on the PATH of a lab command');
    assert.equal(r.status, 0, r.stderr);
    const ours = JSON.parse(r.stdout) as { name: string; maxVqs: number; binding: { charDev?: string } }[];
    const theirs = iproute2<Ip2Dev>('dev', 'show').dev;
    assert.deepEqual(ours.map((d) => d.name).sort(), Object.keys(theirs).sort());
    for (const lab of testDevices()) {
      const row = ours.find((d) => d.name === lab.name);
      assert.equal(row?.binding.charDev, lab.chardev);
      assert.equal(row?.maxVqs, theirs[lab.name]?.max_vqs);
    }
  });

  it('info NAME reports features, capabilities, decoded config, queues and IOVA range', async () => {
    for (const lab of testDevices()) {
      const r = await cli('info', lab.name, '--json');
      assert.equal(r.code, 0, r.err);
      const report = JSON.parse(r.out) as Record<string, unknown> & {
        capabilities: Record<string, unknown>;
        queues: { maxSize: number }[];
        iovaRange: { first: string; last: string };
        netlink: { maxVqs: number };
      };
      assert.equal(report.path, lab.chardev);
      assert.equal(report.name, lab.name);
      assert.equal(report.deviceClass, lab.class === 'block' ? 'block' : 'net');
      assert.ok((report.featureNames as string[]).includes('VERSION_1'));
      assert.ok((report.backendFeatureNames as string[]).includes('IOTLB_MSG_V2'));
      assert.equal(typeof report.capabilities.suspend, 'boolean');
      assert.equal(report.queues.length, report.netlink.maxVqs, 'queue count agrees with netlink');
      assert.ok(report.queues.every((q) => q.maxSize === 256));
      assert.match(report.iovaRange.last, /^0x[0-9a-f]+$/);
      if (lab.class === 'block') assert.ok((report.blkConfig as { capacity: string }).capacity !== '0x0');
      else assert.ok(report.netConfig !== undefined);
    }
    const human = await cli('info', testDevices()[0]?.chardev ?? '');
    assert.equal(human.code, 0, human.err);
    assert.match(human.out, /backend features: 0x[0-9a-f]+ \(IOTLB_MSG_V2/);
    assert.match(human.out, /iova range:/);
  });

  it('runs every management command with human and JSON output', async () => {
    const steps: [string[], RegExp][] = [
      [['mgmtdev', 'list'], /^MGMTDEV\s+CLASSES\s+MAX VQS/],
      [['mgmtdev', 'show', 'vdpasim_net'], /vdpasim_net features:\n\s+MTU MAC/],
      [
        ['dev', 'add', 'name', 'cli0', 'mgmtdev', 'vdpasim_net', 'mac', '52:54:00:00:00:42'],
        /char device: \/dev\/vhost-vdpa-\d+/,
      ],
      [['dev', 'show', 'cli0'], /class:\s+net \(virtio id 1\)/],
      [['dev', 'config', 'cli0'], /mac:\s+52:54:00:00:00:42/],
      [['dev', 'set', 'cli0', '--mac', '52:54:00:00:00:43'], /cli0: mac 52:54:00:00:00:43/],
      [['dev', 'bind', 'cli0', 'virtio'], /driver:\s+virtio_vdpa/],
      [['dev', 'bind', 'cli0', 'vhost'], /char device: \/dev\/vhost-vdpa-\d+/],
      [['dev', 'del', 'cli0'], /deleted cli0/],
      [['dev', 'config', 'blk0', '--json'], /"capacity": "0x40000"/],
    ];
    for (const [argv, expected] of steps) {
      const r = await cli(...argv);
      assert.equal(r.code, 0, `${argv.join(' ')}: ${r.err}`);
      assert.match(r.out, expected, argv.join(' '));
    }
    assert.equal(fs.existsSync('/sys/bus/vdpa/devices/cli0'), false);
  });

  it('exits with codes scripts can test for each error case', async () => {
    const cases: [string[], number, RegExp][] = [
      [['dev', 'show', 'ghost'], 3, /no vdpa device named "ghost"/],
      [['dev', 'del', 'ghost'], 3, /no vdpa device named "ghost"/],
      [['dev', 'add', 'blk0', '--mgmtdev', 'vdpasim_blk'], 5, /already exists/],
      [['dev', 'add', 'zz', '--mgmtdev', 'nosuch'], 3, /no management device "nosuch"/],
      [['dev', 'add', 'zz', '--mgmtdev', 'vdpasim_blk', '--mtu', '1500'], 7, /does not accept mtu/],
      [['dev', 'stats', 'net0'], 1, /feature negotiation not complete/],
      [['info', 'ghost'], 3, /no vdpa device named "ghost"/],
    ];
    for (const [argv, code, message] of cases) {
      const r = await cli(...argv);
      assert.equal(r.code, code, `${argv.join(' ')}: ${r.err}`);
      assert.match(r.err, message, argv.join(' '));
    }
  });

  it('refuses to delete a device whose char device another process holds open, naming it', async () => {
    assert.equal((await cli('dev', 'add', 'held', '--mgmtdev', 'vdpasim_blk')).code, 0);
    const chardev = fs.readdirSync('/sys/bus/vdpa/devices/held').find((e) => e.startsWith('vhost-vdpa-'));
    const holder = spawn('sh', ['-c', `exec 3<>/dev/${String(chardev)}; exec sleep 30`]);
    try {
      await new Promise((r) => setTimeout(r, 500));
      const r = await cli('dev', 'del', 'held');
      assert.equal(r.code, 5, r.err);
      assert.match(r.err, new RegExp(`pid ${String(holder.pid)} \\(sleep\\) via fd 3`));
    } finally {
      holder.kill('SIGKILL');
      await new Promise((r) => holder.once('exit', r));
    }
    assert.equal((await cli('dev', 'del', 'held')).code, 0);
  });

  it('says "needs CAP_NET_ADMIN (run as root)" to an unprivileged user (exit 4)', () => {
    const r = cliProcess(
      ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'],
      'dev',
      'add',
      'np0',
      '--mgmtdev',
      'vdpasim_blk',
    );
    assert.equal(r.status, 4, r.stderr);
    assert.match(r.stderr, /needs CAP_NET_ADMIN \(run as root\)/);
  });

  it('says "not in the initial network namespace" from another netns (exit 3)', () => {
    const r = cliProcess(['unshare', '--net'], 'dev', 'list');
    assert.equal(r.status, 3, r.stderr);
    assert.match(r.stderr, /not in the initial network namespace/);
  });
});
