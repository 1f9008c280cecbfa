#!/bin/sh
# Creates the lab's vDPA devices (run inside the guest by guest-run.sh) and writes their description as JSON
# to $1 (default /run/vdpa-lab.json).
#
# Order matters: vhost-vdpa minors are allocated in creation order, and only vhost_vdpa is loaded as a vdpa
# bus driver at this point, so the numbers are stable:
#   blk0   vdpasim_blk                          -> /dev/vhost-vdpa-0
#   vduse0 VDUSE block, qemu-storage-daemon     -> /dev/vhost-vdpa-1
#   net0   vdpasim_net                          -> /dev/vhost-vdpa-2
#   vduse-mq VDUSE block, 2 queues (qsd #2)      -> /dev/vhost-vdpa-3
#   vduse-ro VDUSE block, read-only (qsd #2)     -> /dev/vhost-vdpa-4
# The last two are for tests of what the first three lack (multiqueue, VIRTIO_BLK_F_RO); their JSON entries
# carry a "variant" ("mq", "ro") so suites that want a general-purpose block device leave them out.
# The actual char devices are resolved from sysfs, never assumed. A device that cannot be created is left out
# of the JSON and reported loudly (LAB-WARN on the console, dmesg tail on stderr); the command still runs.
OUT=${1:-/run/vdpa-lab.json}
# LAB_PROJECT, LAB_DEVTOOL (not exported by guest-run.sh, which runs this as a child).
[ -f /run/lab/config.sh ] && . /run/lab/config.sh
VDUSE_IMG=/var/tmp/vduse0.img # on the overlay's tmpfs upper layer, never on the 9p project share
VDUSE_SIZE=64M
EXTRA_SIZE=16M # vduse-mq and vduse-ro: small, they only need room for a few MiB of test data
RO_IMG_TEXT='vduse-ro: read-only lab image' # at offset 0 of the read-only image, so tests can see reads return it

entries=""
failed=""

# Progress goes to the console (the host shows it unless --quiet); problems go to stderr, always shown.
say() { echo "LAB-INFO $*" >/dev/console; }

fail() { # name reason
  failed="$failed $1"
  echo "[lab] devices: FAILED to create $1: $2" >&2
  echo "LAB-WARN device $1 not created: $2" >/dev/console
  dmesg | tail -n 20 | sed 's/^/[lab]   dmesg: /' >&2
}

# The one place that creates a device: the project's own CLI (`vhost-vdpa dev add`, over netlink) by default,
# so every lab boot exercises it; LAB_DEVTOOL=iproute2 (config.sh, from VDPA_LAB_DEVTOOL on the host or in
# opts.env) uses iproute2's `vdpa`. Cost on a quiet host under TCG: 2.5 s per CLI call vs 1.2 s for iproute2
# (a cold node start each; on a host busy with other VMs it was measured up to ~7 s). If the CLI fails, the
# failure is reported as a warning and iproute2 retries: the devices are infrastructure for every other test,
# and the CLI's own tests fail loudly anyway.
dev_add() { # name mgmtdev
  if [ "${devtool_override:-${LAB_DEVTOOL:-cli}}" = cli ]; then
    if [ -f "$LAB_PROJECT/dist/cli/main.js" ]; then
      if cli_err=$(node "$LAB_PROJECT/dist/cli/main.js" dev add name "$1" mgmtdev "$2" 2>&1 >/dev/null); then
        return 0
      fi
      # A CLI that gave up waiting for the kernel's answer (a busy host: TCG guests share the CPU) may have
      # created the device anyway; iproute2 would then only say "File exists".
      if [ -e "/sys/bus/vdpa/devices/$1" ]; then
        echo "LAB-WARN vhost-vdpa dev add name $1 mgmtdev $2 reported a failure but the device exists: $cli_err" >/dev/console
        return 0
      fi
      echo "LAB-WARN vhost-vdpa dev add name $1 mgmtdev $2 failed, retrying with iproute2: $cli_err" >/dev/console
    else
      say "dist/cli/main.js missing (npm install builds it): creating $1 with iproute2"
    fi
  fi
  vdpa dev add name "$1" mgmtdev "$2"
}

# Prints /dev/vhost-vdpa-N of vdpa device $1 once devtmpfs has created the node (there is no udev).
chardev_of() {
  i=0
  while [ $i -lt 100 ]; do
    for d in /sys/bus/vdpa/devices/"$1"/vhost-vdpa-*; do
      [ -e "$d" ] || continue
      node="/dev/${d##*/}"
      if [ -c "$node" ]; then
        echo "$node"
        return 0
      fi
    done
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

add_entry() { # json-object
  entries="$entries${entries:+, }$1"
}

create() { # name mgmtdev class [extra-json]
  if ! err=$(dev_add "$1" "$2" 2>&1); then
    fail "$1" "vdpa dev add: $err"
    return 1
  fi
  if ! cdev=$(chardev_of "$1"); then
    fail "$1" "no /dev/vhost-vdpa-N appeared (driver: $(readlink /sys/bus/vdpa/devices/"$1"/driver 2>/dev/null || echo none))"
    return 1
  fi
  add_entry "{\"name\":\"$1\",\"mgmtdev\":\"$2\",\"class\":\"$3\",\"chardev\":\"$cdev\"$4}"
  say "$1 ($2) -> $cdev"
}

# VDUSE: qemu-storage-daemon is the device; `vdpa dev add` only works once it has created /dev/vduse/vduse0.
# It is started before blk0 is created because it takes ~2 s to start under TCG; that does not disturb the
# numbering, since the vhost-vdpa minor is allocated by `vdpa dev add`, not by the VDUSE device.
start_vduse() {
  mkdir -p "${VDUSE_IMG%/*}"
  rm -f "$VDUSE_IMG"
  truncate -s "$VDUSE_SIZE" "$VDUSE_IMG" || return 1
  setsid qemu-storage-daemon \
    --blockdev "driver=file,node-name=file0,filename=$VDUSE_IMG" \
    --export type=vduse-blk,id=exp0,node-name=file0,name=vduse0,writable=on,num-queues=1,queue-size=256 \
    --pidfile /run/qsd-vduse0.pid \
    </dev/null >/run/qsd-vduse0.log 2>&1 &
  qsd_pid=$!
}

wait_vduse() {
  [ -n "$qsd_pid" ] || return 1
  i=0
  while [ ! -e /dev/vduse/vduse0 ]; do
    if [ $i -ge 300 ] || ! kill -0 "$qsd_pid" 2>/dev/null; then
      sed 's/^/[lab]   qemu-storage-daemon: /' /run/qsd-vduse0.log >&2
      return 1
    fi
    sleep 0.1
    i=$((i + 1))
  done
}

# A second qemu-storage-daemon serves both extra devices (one process start instead of two: each costs ~2 s of
# CPU under TCG). It starts together with the first, so the boot waits for the slower of the two.
start_extra() {
  rm -f /var/tmp/vduse-mq.img /var/tmp/vduse-ro.img
  truncate -s "$EXTRA_SIZE" /var/tmp/vduse-mq.img || return 1
  truncate -s "$EXTRA_SIZE" /var/tmp/vduse-ro.img || return 1
  printf '%s' "$RO_IMG_TEXT" | dd of=/var/tmp/vduse-ro.img conv=notrunc status=none || return 1
  setsid qemu-storage-daemon \
    --blockdev driver=file,node-name=mqfile,filename=/var/tmp/vduse-mq.img \
    --export type=vduse-blk,id=expmq,node-name=mqfile,name=vduse-mq,writable=on,num-queues=2,queue-size=256 \
    --blockdev driver=file,node-name=rofile,filename=/var/tmp/vduse-ro.img,read-only=on \
    --export type=vduse-blk,id=expro,node-name=rofile,name=vduse-ro,writable=off,num-queues=1,queue-size=256 \
    --pidfile /run/qsd-extra.pid \
    </dev/null >/run/qsd-extra.log 2>&1 &
  extra_pid=$!
}

wait_extra() { # vduse-name
  [ -n "$extra_pid" ] || return 1
  i=0
  while [ ! -e "/dev/vduse/$1" ]; do
    if [ $i -ge 300 ] || ! kill -0 "$extra_pid" 2>/dev/null; then
      sed 's/^/[lab]   qemu-storage-daemon (extra): /' /run/qsd-extra.log >&2
      return 1
    fi
    sleep 0.1
    i=$((i + 1))
  done
}

qsd_pid=""
extra_pid=""
start_vduse || echo "[lab] devices: cannot create $VDUSE_IMG" >&2
start_extra || echo "[lab] devices: cannot create the vduse-mq/vduse-ro images" >&2
create blk0 vdpasim_blk block
if wait_vduse; then
  create vduse0 vduse block ",\"backingFile\":\"$VDUSE_IMG\""
else
  fail vduse0 "qemu-storage-daemon did not create /dev/vduse/vduse0"
fi
create net0 vdpasim_net net
# The extra devices are created with iproute2: the CLI was exercised by the first three, and a cold node start
# per device costs ~3 s of boot under TCG.
devtool_override=iproute2
if wait_extra vduse-mq; then
  create vduse-mq vduse block ",\"backingFile\":\"/var/tmp/vduse-mq.img\",\"variant\":\"mq\""
else
  fail vduse-mq "qemu-storage-daemon did not create /dev/vduse/vduse-mq"
fi
if wait_extra vduse-ro; then
  create vduse-ro vduse block ",\"backingFile\":\"/var/tmp/vduse-ro.img\",\"variant\":\"ro\""
else
  fail vduse-ro "qemu-storage-daemon did not create /dev/vduse/vduse-ro"
fi
devtool_override=""

printf '[%s]\n' "$entries" >"$OUT"
if [ -n "$failed" ]; then
  echo "LAB-MARK devices FAILED:$failed" >/dev/console
  exit 1
fi
echo "LAB-MARK devices ready" >/dev/console
