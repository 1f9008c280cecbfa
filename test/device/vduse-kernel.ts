/**
 * Validation of a virtio-blk vdpa device by the kernel's own drivers: the
 * device is bound to virtio_vdpa (so the kernel's virtio_ring and virtio_blk
 * drive it — an implementation we did not write), and /dev/vdX goes through
 * mkfs.ext4 + fsck -fn, an 8 MiB write/read-back (dd + cmp, O_DIRECT) and
 * fio --verify=crc32c at iodepth 16; a read-only device instead has its reads
 * compared and its writes refused. Afterwards the device is bound back to
 * vhost_vdpa. Used by vduse-kernel.test.ts on the lab's qemu-storage-daemon
 * devices, and meant for our own VDUSE devices (split/packed, 1–2 queues, ro).
 *
 * Runs in the lab guest (root, the host's userland: dd, cmp, mkfs.ext4,
 * fsck.ext4, fio — fio is in scripts/lab/prepare.mjs's host packages).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bindDriver, describeBinding } from '../../lib/mgmt';

/** What to check. */
export interface KernelValidationOptions {
  /** The device is read-only (VIRTIO_BLK_F_RO): check reads and refused writes instead of writing. */
  readOnly?: boolean;
  /** A file holding the device's content (VDUSE backing file): a read-only device's reads are compared with it. */
  backingFile?: string;
  /** Bytes fio covers (default: min(capacity, 16 MiB); under TCG a 32 MiB run takes 80 s). */
  fioBytes?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** What the kernel did with the device. */
export interface KernelValidationResult {
  /** /dev/vdX. */
  disk: string;
  /** Capacity the kernel read from the config (bytes). */
  capacityBytes: number;
  /** blk-mq hardware queues the kernel set up (/sys/block/vdX/mq). */
  queues: number;
  /** /sys/block/vdX/ro. */
  kernelReadOnly: boolean;
  /** Writable devices: fio's verified write and read IOPS. */
  fio?: { writeIops: number; readIops: number; verifyErrors: number };
  /**
   * Read-only devices: the error code of opening /dev/vdX for writing ('none':
   * Linux ≥ 5.x lets it open), of a 4 KiB write at 0 (6.12: EPERM, from
   * blkdev_write_iter's bdev_read_only check), and mkfs.ext4's exit status.
   */
  writeRefusal?: { openError: string; writeError: string; mkfsStatus: number | null };
  /** Milliseconds each step took. */
  timings: Record<string, number>;
}

/** Runs a command; throws with its output when it fails. */
function run(command: string, args: string[], timeoutMs = 180_000): string {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: timeoutMs });
  if (result.error !== undefined) throw new Error(`${command}: ${result.error.message}`);
  if (result.status !== 0) {
    throw new Error(
      `${command} ${args.join(' ')} exited with ${String(result.status ?? result.signal)}:\n${result.stdout}${result.stderr}`,
    );
  }
  return result.stdout;
}

async function waitForDisk(name: string): Promise<string> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const disk = describeBinding(name).kernelDevices?.find((d) => d.startsWith('vd'));
    if (disk !== undefined && fs.existsSync(`/dev/${disk}`)) return `/dev/${disk}`;
    if (Date.now() > deadline) throw new Error(`virtio_vdpa bound ${name} but no /dev/vdX appeared in 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * Binds vdpa device `name` (virtio-blk, currently on vhost_vdpa) to
 * virtio_vdpa, runs the kernel-driver checks on its /dev/vdX, and binds it
 * back to vhost_vdpa (also when a check failed). Throws on the first failed
 * check, with the command's output.
 */
export async function validateWithKernelDriver(
  name: string,
  options: KernelValidationOptions = {},
): Promise<KernelValidationResult> {
  const log = options.log ?? (() => undefined);
  const timings: Record<string, number> = {};
  const timed = async <T>(step: string, fn: () => T | Promise<T>): Promise<T> => {
    const t = Date.now();
    log(`${name}: ${step}`);
    try {
      return await fn();
    } finally {
      timings[step] = Date.now() - t;
    }
  };
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vduse-kernel-'));
  try {
    await timed('bind virtio_vdpa', () => bindDriver(name, 'virtio_vdpa', { timeoutMs: 30_000 }));
    const disk = await timed('wait for /dev/vdX', () => waitForDisk(name));
    const block = path.join('/sys/block', path.basename(disk));
    const capacityBytes = Number(fs.readFileSync(path.join(block, 'size'), 'utf8').trim()) * 512;
    const queues = fs.readdirSync(path.join(block, 'mq')).length;
    const kernelReadOnly = fs.readFileSync(path.join(block, 'ro'), 'utf8').trim() === '1';
    const result: KernelValidationResult = { disk, capacityBytes, queues, kernelReadOnly, timings };
    const length = Math.min(8 << 20, capacityBytes);

    if (options.readOnly === true) {
      result.writeRefusal = await timed('writes refused', () => {
        const code = (error: unknown): string => (error as NodeJS.ErrnoException).code ?? String(error);
        let openError = 'none';
        let writeError = 'none';
        let fd: number | undefined;
        try {
          fd = fs.openSync(disk, 'r+');
        } catch (error) {
          openError = code(error);
        }
        if (fd !== undefined) {
          try {
            fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 0);
            fs.fsyncSync(fd);
          } catch (error) {
            writeError = code(error);
          } finally {
            fs.closeSync(fd);
          }
        }
        const mkfs = spawnSync('mkfs.ext4', ['-F', '-q', disk], { encoding: 'utf8', timeout: 60_000 });
        return { openError, writeError, mkfsStatus: mkfs.status };
      });
      await timed('8 MiB read-back', () => {
        const out = path.join(tmp, 'read');
        run('dd', [
          `if=${disk}`,
          `of=${out}`,
          'bs=1M',
          `count=${length >> 20}`,
          'iflag=direct',
          'status=none',
        ]);
        if (options.backingFile !== undefined) {
          const want = path.join(tmp, 'want');
          run('dd', [
            `if=${options.backingFile}`,
            `of=${want}`,
            'bs=1M',
            `count=${length >> 20}`,
            'status=none',
          ]);
          run('cmp', [out, want]);
        }
      });
    } else {
      await timed('mkfs.ext4 + fsck -fn', () => {
        run('mkfs.ext4', ['-F', '-q', disk]);
        run('fsck.ext4', ['-fn', disk]);
      });
      await timed('8 MiB write/read-back', () => {
        const data = path.join(tmp, 'data');
        const back = path.join(tmp, 'back');
        fs.writeFileSync(data, randomBytes(length));
        const seek = capacityBytes >= 2 * length ? 1 : 0; // not at 0 when there is room: catches offset bugs
        const count = length >> 20;
        run('dd', [
          `if=${data}`,
          `of=${disk}`,
          'bs=1M',
          `seek=${seek}`,
          'oflag=direct',
          'conv=fsync',
          'status=none',
        ]);
        run('dd', [
          `if=${disk}`,
          `of=${back}`,
          'bs=1M',
          `skip=${seek}`,
          `count=${count}`,
          'iflag=direct',
          'status=none',
        ]);
        run('cmp', [data, back]);
      });
      result.fio = await timed('fio --verify=crc32c --iodepth=16', () => {
        const bytes = options.fioBytes ?? Math.min(capacityBytes, 16 << 20);
        const out = run('fio', [
          '--name=vduse-kernel',
          `--filename=${disk}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=16',
          '--ioengine=libaio',
          '--direct=1',
          `--size=${bytes}`,
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_fatal=1',
          '--verify_state_save=0', // no local-*-verify.state file in the working directory
          '--output-format=json',
        ]);
        const job = (
          JSON.parse(out.slice(out.indexOf('{'))) as {
            jobs: { error: number; write: { iops: number }; read: { iops: number } }[];
          }
        ).jobs[0];
        if (job.error !== 0) throw new Error(`fio reported error ${job.error}:\n${out}`);
        return { writeIops: job.write.iops, readIops: job.read.iops, verifyErrors: job.error };
      });
    }
    return result;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
    if (describeBinding(name).driver !== 'vhost_vdpa') {
      log(`${name}: bind vhost_vdpa`);
      await bindDriver(name, 'vhost_vdpa', { timeoutMs: 30_000 });
    }
  }
}
