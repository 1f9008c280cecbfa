import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileStore, onMemoryFileSystem } from '../../lib/vduse/blk-store';

/** A scratch directory on `base`, removed after the test. */
function scratch(base: string): string {
  return fs.mkdtempSync(path.join(base, 'vduse-store-'));
}

/** Writes 8 KiB across three views at offset 4096, reads it back across two, through `store`; returns what read/write returned. */
async function roundTrip(store: FileStore): Promise<{ wrote: unknown; read: unknown }> {
  const data = Buffer.alloc(8192);
  for (let i = 0; i < data.length; i++) data[i] = (i * 13) & 0xff;
  const wrote = store.write(4096, [data.subarray(0, 100), data.subarray(100, 5000), data.subarray(5000)]);
  await wrote;
  const back = [Buffer.alloc(3000), Buffer.alloc(5192)];
  const read = store.read(4096, back);
  await read;
  assert.ok(Buffer.concat(back).equals(data), 'the bytes read back are the bytes written');
  return { wrote, read };
}

describe('VDUSE FileStore (host)', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  it('does the I/O of a file on tmpfs inline: read and write complete before they return', async () => {
    assert.ok(onMemoryFileSystem('/dev/shm'), 'this test needs /dev/shm on tmpfs (as Linux mounts it)');
    const dir = scratch('/dev/shm');
    dirs.push(dir);
    const store = FileStore.open(path.join(dir, 'disk.img'), false, 1 << 20);
    try {
      assert.equal(store.inline, true);
      assert.match(store.description, /in memory: inline I\/O/);
      const { wrote, read } = await roundTrip(store);
      assert.equal(wrote, undefined, 'write returned no promise (inline)');
      assert.equal(read, undefined, 'read returned no promise (inline)');
    } finally {
      store.close();
    }
  });

  it('uses the thread pool for a file elsewhere (promises), with the same bytes', async () => {
    const base = [os.tmpdir(), process.cwd()].find((d) => !onMemoryFileSystem(d));
    assert.ok(base !== undefined, `this test needs ${os.tmpdir()} or ${process.cwd()} on a disk file system`);
    const dir = scratch(base);
    dirs.push(dir);
    const store = FileStore.open(path.join(dir, 'disk.img'), false, 1 << 20);
    try {
      assert.equal(store.inline, false);
      const { wrote, read } = await roundTrip(store);
      assert.ok(wrote instanceof Promise && read instanceof Promise);
    } finally {
      store.close();
    }
  });

  it('fails an inline read beyond the end of the file with EIO (end of file), not a short read', () => {
    const dir = scratch('/dev/shm');
    dirs.push(dir);
    const store = FileStore.open(path.join(dir, 'disk.img'), false, 4096);
    try {
      assert.throws(() => store.read(4096, [Buffer.alloc(512)]), { code: 'EIO', message: /end of file/ });
    } finally {
      store.close();
    }
  });
});
