import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { VdpaError } from '../../lib/errors';
import { loadAddon } from '../../lib/native';

describe('native: loading the addon (ERR_ADDON_LOAD)', () => {
  let root: string;
  const tuple = `${process.platform}-${process.arch}`;
  const other = process.arch === 'arm64' ? 'linux-x64' : 'linux-arm64';
  beforeEach(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'vdpa-addon-'));
    fs.writeFileSync(path.join(root, 'package.json'), '{ "name": "vhost-vdpa" }\n');
  });
  afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

  function loadError(): VdpaError {
    try {
      loadAddon(root);
    } catch (error) {
      assert.ok(error instanceof VdpaError);
      assert.equal(error.code, 'ERR_ADDON_LOAD');
      return error;
    }
    assert.fail('loadAddon succeeded');
  }

  it('names what it tried, what this process is, and how to build from source, when nothing matches', () => {
    fs.mkdirSync(path.join(root, 'prebuilds', other), { recursive: true });
    fs.writeFileSync(path.join(root, 'prebuilds', other, 'vhost-vdpa.glibc.node'), '');
    const { message } = loadError();
    assert.match(
      message,
      new RegExp(`No binary matches this process \\(${tuple}, (glibc [\\d.]+|musl), Node v`),
    );
    assert.match(
      message,
      new RegExp(`tried build/Release/\\*\\.node \\(a source build\\), then prebuilds/${tuple}/`),
    );
    assert.match(message, new RegExp(`the package has prebuilds/${other}/vhost-vdpa\\.glibc\\.node\\.`));
    assert.match(message, /npm rebuild vhost-vdpa.*python3, make and a C\+\+17 compiler/);
  });

  it('says which binary failed to load and why', () => {
    fs.mkdirSync(path.join(root, 'prebuilds', tuple), { recursive: true });
    fs.writeFileSync(path.join(root, 'prebuilds', tuple, 'vhost-vdpa.node'), Buffer.alloc(4096));
    const { message } = loadError();
    assert.match(
      message,
      new RegExp(`prebuilds/${tuple}/vhost-vdpa\\.node was found but failed to load: \\S.*\\. Fix:`),
    );
  });

  it('loads a prebuilt binary for this platform', () => {
    fs.mkdirSync(path.join(root, 'prebuilds', tuple), { recursive: true });
    // The binary this checkout uses (a source build, or the prebuilt one), as node-gyp-build resolves it.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodeGypBuild = require('node-gyp-build') as { path(dir: string): string };
    const built = nodeGypBuild.path(path.join(__dirname, '..', '..', '..'));
    fs.copyFileSync(built, path.join(root, 'prebuilds', tuple, 'vhost-vdpa.glibc.node'));
    assert.equal(typeof loadAddon(root).pageSize, 'function');
  });
});
