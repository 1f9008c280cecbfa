#!/bin/sh
# Second stage of the lab guest, run by /init inside the chroot (the host's root via 9p + overlay, so this is
# the host's /bin/sh and tools). Creates the vDPA devices, loads the virtio_vdpa stack, then runs the command.
#
# /run/lab is the per-run directory shared with the host (9p, read-write):
#   config.sh  LAB_* settings written by the host     env.sh   the caller's environment (export lines)
#   command.sh the command (an exec line)              stdout, stderr  streamed to the host while they grow
#   status     the command's exit status, written last
. /run/lab/config.sh

mark() { echo "LAB-MARK $*" >/dev/console; }

# Everything this script (and guest-devices.sh) says goes to the command's stderr stream, so the host
# shows it live and interleaved with the command's own diagnostics.
exec </dev/null 2>>/run/lab/stderr

export PATH="$LAB_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb
export USER=root LOGNAME=root SHELL=/bin/sh
cd /
# Pinned DMA buffers (IOTLB updates pin user pages) count against RLIMIT_MEMLOCK.
ulimit -l unlimited

mark "devices"
sh "$LAB_SCRIPTS/guest-devices.sh" /run/vdpa-lab.json >&2
# Loaded only now, so that every device above bound to vhost_vdpa; tests can rebind one to virtio_vdpa.
modprobe -a virtio_vdpa virtio_blk virtio_net || echo "LAB-WARN modprobe virtio_vdpa virtio_blk virtio_net failed" >/dev/console

# Shell builtins only: every exec of a host binary costs ~0.1-0.2 s under TCG (read over 9p, dynamic linking).
idle=default
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case $arg in idle=*) idle=${arg#idle=} ;; esac
done
devices='[]'
[ -s /run/vdpa-lab.json ] && read -r devices </run/vdpa-lab.json
read -r kernel </proc/sys/kernel/osrelease
export VDPA_LAB=1
export VDPA_LAB_DEVICES="$devices"
export VDPA_LAB_KERNEL="$kernel"
export VDPA_LAB_IDLE="$idle"
. /run/lab/env.sh

cd "$LAB_PROJECT" || exit 1
mark "command-start"
sh /run/lab/command.sh </dev/null >>/run/lab/stdout 2>>/run/lab/stderr
rc=$?
# Written before the marker: the host treats a missing status file as "the guest died".
echo "$rc" >/run/lab/status
mark "command-exit $rc"
sync
exit 0
