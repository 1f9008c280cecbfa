/** `vhost-vdpa net send|capture|loopback-test` against the lab's vdpa_sim_net (net0). */
import { strict as assert } from 'node:assert';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { forEachDevice } from './helpers';
import { cli } from './mgmt-helpers';

forEachDevice('net', 'vhost-vdpa net CLI', (device) => {
  it('loopback-test: every frame comes back byte for byte (--json), by device name', async function () {
    this.timeout(600000);
    const { code, out, err } = await cli('net', 'loopback-test', device.name, '--count', '3000', '--json');
    console.log(`      ${out.replace(/\s+/g, ' ')}`);
    assert.equal(code, 0, err);
    const result = JSON.parse(out) as { sent: number; received: number; lost: number; corrupt: number };
    assert.deepEqual([result.sent, result.received, result.lost, result.corrupt], [3000, 3000, 0, 0]);
  });

  it('send: broadcast frames by char device path, with the plain and --json outputs', async () => {
    let r = await cli('net', 'send', device.chardev, '--count', '100', '--size', '1514');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^sent 100 frame\(s\) of 1514 bytes to ff:ff:ff:ff:ff:ff in [\d.]+ s\n$/);
    r = await cli('net', 'send', device.chardev, '--size', '1515', '--json');
    assert.equal(r.code, 2);
    assert.match(r.err, /--size 1515 is larger than the device's MTU \+ 14 \(1514\)/);
  });

  it('capture: writes a pcap file Wireshark reads (global header; vdpa_sim_net only loops back our own frames)', async () => {
    const file = join(tmpdir(), `net-capture-${process.pid}.pcap`);
    try {
      const r = await cli(
        'net',
        'capture',
        device.name,
        '--count',
        '5',
        '--timeout',
        '500',
        '--write',
        file,
        '--json',
      );
      assert.equal(r.code, 0, r.err);
      const result = JSON.parse(r.out) as { captured: number };
      const bytes = readFileSync(file);
      assert.equal(bytes.readUInt32LE(0), 0xa1b2c3d4);
      assert.equal(bytes.readUInt32LE(20), 1, 'LINKTYPE_ETHERNET');
      assert.equal(bytes.length >= 24, true);
      assert.equal(result.captured, 0, 'nobody else sends on the simulator');
    } finally {
      rmSync(file, { force: true });
    }
  });
});
