import { strict as assert } from 'node:assert';
import { CheckReport, formatCheckTable, formatJUnit } from '../../lib';

const report: CheckReport = {
  path: '/dev/vhost-vdpa-0',
  name: 'blk0',
  deviceId: 2,
  deviceClass: 'block',
  destructive: false,
  startedAt: '2026-11-29T22:00:00.000Z',
  durationMs: 1234,
  results: [
    { id: 'uapi.open', group: 'uapi', title: 'opens', status: 'pass', durationMs: 2 },
    {
      id: 'blk.read',
      group: 'blk',
      title: 'reads',
      status: 'fail',
      reason: 'EIO: <bad> & "worse"',
      durationMs: 5,
    },
    {
      id: 'doorbell.map',
      group: 'doorbell',
      title: 'maps',
      status: 'skip',
      reason: 'no notification area',
      durationMs: 1,
    },
    {
      id: 'perf.qd1',
      group: 'perf',
      title: 'qd1',
      status: 'pass',
      numbers: { iops: 1000, p50us: 12.25 },
      durationMs: 1000,
    },
  ],
  summary: { passed: 2, failed: 1, skipped: 1 },
};

describe('check reports', () => {
  it('renders JUnit XML with counts, failures, skips and escaped text', () => {
    const xml = formatJUnit(report);
    assert.match(xml, /^<\?xml version="1.0" encoding="UTF-8"\?>/);
    assert.match(xml, /<testsuites tests="4" failures="1" skipped="1">/);
    assert.match(
      xml,
      /<testcase classname="vhost-vdpa.blk" name="blk.read" time="0.005">\s*<failure message="EIO: &#60;bad&#62; &#38; &#34;worse&#34;">/,
    );
    assert.match(xml, /<skipped message="no notification area"\/>/);
    assert.match(xml, /<system-out>\{&#34;iops&#34;:1000,&#34;p50us&#34;:12.25\}<\/system-out>/);
    assert.ok(!/<bad>/.test(xml), 'nothing unescaped');
  });

  it('renders one line per check and a summary', () => {
    const table = formatCheckTable(report);
    assert.match(table, /^vhost-vdpa check \/dev\/vhost-vdpa-0 \(blk0\): block\n/);
    assert.match(table, /FAIL {2}blk\.read +reads — EIO: <bad>/);
    assert.match(table, /skip {2}doorbell\.map +maps — no notification area/);
    assert.match(table, /PASS {2}perf\.qd1 +qd1 — iops=1000 p50us=12\.3/);
    assert.match(table, /2 passed, 1 failed, 1 skipped in 1\.2 s\n$/);
  });
});
