import { strict as assert } from 'node:assert';
import * as path from 'node:path';
import { evalModule, LAB_DIR } from './lab-module';

const VM = path.join(LAB_DIR, 'vm.mjs');
const INDEX = path.join(LAB_DIR, 'index.mjs');

function cpuArgs(accel: 'kvm' | 'tcg', tcgCpu?: string, tcgPlugin?: string): string[] {
  return evalModule(
    `import { qemuArgs, DEFAULT_TCG_CPU } from ${JSON.stringify(VM)};
     const args = qemuArgs({
       accel: ${JSON.stringify(accel)},
       assets: { vmlinuz: '/k', initramfs: '/i' },
       runDir: '/r',
       projectRoot: '/p',
       memoryMiB: 2048,
       cpus: 2,
       tcgCpu: ${tcgCpu === undefined ? 'DEFAULT_TCG_CPU' : JSON.stringify(tcgCpu)},
       tcgPlugin: ${JSON.stringify(tcgPlugin)},
       kernelArgs: [],
       shell: false,
     });
     const i = args.indexOf('-cpu');
     const p = args.indexOf('-plugin');
     console.log(JSON.stringify([...args.slice(i - 2, i + 2), ...(p < 0 ? [] : args.slice(p, p + 2))]));`,
  ) as string[];
}

describe('lab: the emulated CPU', () => {
  it('offers no protection keys under TCG by default (each PKRU write would flush the vCPU TLB)', () => {
    assert.deepEqual(cpuArgs('tcg'), ['-accel', 'tcg', '-cpu', 'max,pku=off']);
  });

  it('takes another TCG model when asked, and uses the host CPU under KVM', () => {
    assert.deepEqual(cpuArgs('tcg', 'max'), ['-accel', 'tcg', '-cpu', 'max']);
    assert.deepEqual(cpuArgs('kvm', 'max'), ['-accel', 'kvm', '-cpu', 'host']);
  });

  it('loads a TCG plugin only when asked, and never under KVM', () => {
    assert.deepEqual(cpuArgs('tcg', 'max', '/x/count.so,out=/o'), [
      '-accel',
      'tcg',
      '-cpu',
      'max',
      '-plugin',
      '/x/count.so,out=/o',
    ]);
    assert.deepEqual(cpuArgs('kvm', 'max', '/x/count.so'), ['-accel', 'kvm', '-cpu', 'host']);
  });

  it('runInLab defaults to that model and passes --tcg-cpu through', () => {
    const models = evalModule(
      `import { normalizeOptions } from ${JSON.stringify(INDEX)};
       console.log(JSON.stringify([normalizeOptions({ command: ['true'] }).tcgCpu,
         normalizeOptions({ command: ['true'], tcgCpu: 'max' }).tcgCpu]));`,
    );
    assert.deepEqual(models, ['max,pku=off', 'max']);
  });
});
