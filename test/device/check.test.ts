import { strict as assert } from 'node:assert';
import { formatCheckTable, formatJUnit, runChecks } from '../../lib';
import { forEachDevice } from './helpers';

// `vhost-vdpa check` against every real lab device: a conforming device passes every check it runs, and
// each skip names what the device does not offer.
for (const cls of ['block', 'net'] as const) {
  forEachDevice(cls, 'vhost-vdpa check', (device) => {
    it('passes every check it runs, and says why it skipped the others', async function () {
      this.timeout(180_000);
      const report = await runChecks(device.chardev, {
        destructive: true,
        perfSeconds: 0.5,
        integrityOps: 400,
      });
      process.stdout.write(formatCheckTable(report).replace(/^/gm, '      '));
      const failed = report.results.filter((r) => r.status === 'fail');
      assert.deepEqual(
        failed.map((r) => `${r.id}: ${r.reason}`),
        [],
      );
      for (const r of report.results) if (r.status === 'skip') assert.ok((r.reason ?? '').length > 10, r.id);
      const ids = report.results.map((r) => r.id);
      for (const id of [
        'uapi.open',
        'uapi.features.version1',
        'negotiation.features-ok',
        'config.decode',
        'config.netlink',
      ]) {
        assert.ok(ids.includes(id), `${id} ran`);
      }
      assert.equal(
        report.results.find((r) => r.id === 'config.netlink')?.status,
        'pass',
        'the lab devices have sysfs entries',
      );
      if (cls === 'block') {
        const perf = report.results.find((r) => r.id === 'perf.blk-randread-qd32');
        assert.ok((perf?.numbers?.iops ?? 0) > 0, 'the performance smoke measured something');
        assert.equal(report.results.find((r) => r.id === 'blk.read')?.status, 'pass');
      }
      assert.match(
        formatJUnit(report),
        new RegExp(`<testsuites tests="${report.results.length}" failures="0"`),
      );
    });
  });
}
