// Host CPU time of the guest's vCPUs, on the guest's request. Under TCG the guest's own CPU accounting charges
// a running thread for everything its vCPU did, including time the host spent elsewhere, and charges the
// guest kernel's idle and wake-up paths to nobody in particular; what the emulation of a vCPU cost the host is
// the CPU time of QEMU's thread for it ("CPU N/TCG"; the lab runs QEMU with -name debug-threads=on).
//
// Protocol (docs/lab.md, "Host CPU time of the vCPUs"): the guest writes one line, a label, to
// /run/lab/vcpu-mark; within about 10 ms the host appends "LABEL MONOTONIC_NS cpu0=NS cpu1=NS …" to
// /run/lab/vcpu-times, each value the thread's total CPU time from /proc/PID/task/TID/schedstat.
import fs from 'node:fs';
import path from 'node:path';

export const VCPU_MARK = 'vcpu-mark';
export const VCPU_TIMES = 'vcpu-times';
const INTERVAL_MS = 10;

/** CPU time (ns) of each of QEMU process `pid`'s vCPU threads, by vCPU index. */
export function vcpuThreadTimes(pid) {
  const times = new Map();
  let tids;
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return times;
  }
  for (const tid of tids) {
    try {
      const comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8');
      const m = /^CPU (\d+)\//.exec(comm);
      if (!m) continue;
      const ns = Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      if (Number.isFinite(ns)) times.set(Number(m[1]), ns);
    } catch {
      // The thread ended between readdir and read.
    }
  }
  return times;
}

/** Formats one vcpu-times line. */
export function vcpuTimesLine(label, monotonicNs, times) {
  const cpus = [...times.keys()].sort((a, b) => a - b).map((i) => `cpu${i}=${times.get(i)}`);
  return `${[label, String(monotonicNs), ...cpus].join(' ')}\n`;
}

/**
 * Watches `runDir`/vcpu-mark while QEMU (`pid`) runs and answers each new label. Returns a function that
 * stops watching.
 */
export function watchVcpuMarks(runDir, pid) {
  const markFile = path.join(runDir, VCPU_MARK);
  const timesFile = path.join(runDir, VCPU_TIMES);
  let last = '';
  const check = () => {
    let label;
    try {
      label = fs.readFileSync(markFile, 'utf8').split('\n')[0].trim();
    } catch {
      return; // no mark yet
    }
    if (label === '' || label === last) return;
    last = label;
    fs.appendFileSync(timesFile, vcpuTimesLine(label, process.hrtime.bigint(), vcpuThreadTimes(pid)));
  };
  const timer = setInterval(check, INTERVAL_MS);
  timer.unref();
  return () => clearInterval(timer);
}
