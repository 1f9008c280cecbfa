#!/bin/sh
# PID 1 of the lab guest, run by busybox from the initramfs (built by prepare.mjs).
#
# It loads the modules the initramfs carries, mounts the host's root read-only over 9p with a tmpfs overlay on
# top (so the host's node, vdpa, qemu-storage-daemon and libraries are usable and writable-but-discarded), mounts
# the project root read-write at its host path and the per-run directory (/run/lab) that carries the
# configuration, the command and its output, then chroots into guest-run.sh and powers off.
#
# Lines starting with LAB-MARK / LAB-WARN / LAB-FAIL on the console are progress markers read by the host
# (scripts/lab/vm.mjs); a LAB-FAIL means the guest could not even start the command.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "LAB-MARK init"
# Done here with busybox: the same commands from the host's root would cost an exec over 9p each.
echo vdpa-lab >/proc/sys/kernel/hostname
ip link set lo up

die() {
  echo "LAB-FAIL $*"
  dmesg | tail -n 30
  sync
  poweroff -f
  sleep 10
}

# vdpa_sim_blk with shared_backend=1: every vdpa_sim_blk device reads and writes one disk, so a workload can be
# moved from blk0 to a second device and its data checked (test/device/vmm-move.test.ts, examples/vmm-move.js).
while read -r m; do
  case $m in
    vdpa_sim_blk) params=shared_backend=1 ;;
    *) params= ;;
  esac
  # shellcheck disable=SC2086 # $params is empty or one word
  insmod "/lib/modules/$m.ko" $params || echo "LAB-WARN insmod $m $params failed"
done </etc/lab-modules

P9='trans=virtio,version=9p2000.L,msize=512000'
mount -t 9p -o "$P9,cache=none" labrun /lab || die "cannot mount the run directory (9p tag labrun)"
[ -f /lab/config.sh ] || die "run directory has no config.sh"
# Sets LAB_KVER, LAB_PROJECT, LAB_SCRIPTS, LAB_MODULE_TREE (host paths, quoted by the host) and the 9p cache
# modes LAB_ROOT_CACHE, LAB_PROJECT_CACHE (a policy of index.mjs, kept out of the initramfs).
. /lab/config.sh

mount -t 9p -o "$P9,ro,cache=${LAB_ROOT_CACHE:-loose}" hostroot /host || die "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/data,workdir=/upper/work /newroot ||
  die "cannot mount the overlay root"

R=/newroot
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t devtmpfs devtmpfs "$R/dev"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
mkdir -p "$R/run/lab"
mount --move /lab "$R/run/lab"

# After the tmpfs mounts, so a project living under /tmp or /run (fresh clones) is not hidden by them.
mkdir -p "$R$LAB_PROJECT"
mount -t 9p -o "$P9,cache=${LAB_PROJECT_CACHE:-loose}" project "$R$LAB_PROJECT" || die "cannot mount the project (9p tag project) at $LAB_PROJECT"

# The full module tree of this kernel (plus the simulator modules in extra/) from the host's cache, so that
# modprobe works in the chroot. Bound from /host, not the overlay, in case the cache lives under /tmp.
mkdir -p "$R/lib/modules/$LAB_KVER"
mount --bind "/host$LAB_MODULE_TREE" "$R/lib/modules/$LAB_KVER" || echo "LAB-WARN cannot bind the module tree"

echo "LAB-MARK chroot"
chroot "$R" /bin/sh "$LAB_SCRIPTS/guest-run.sh"
rc=$?
[ $rc -eq 0 ] || echo "LAB-WARN guest-run.sh exited with $rc"
sync
echo "LAB-MARK poweroff"
poweroff -f
sleep 10
