#!/bin/sh
# The kernel-driver baseline of the benchmark: hands a vdpa device to the kernel's virtio-blk (through
# virtio_vdpa), runs fio on the resulting /dev/vdX, and gives the device back to vhost_vdpa.
#
#   kernel-fio.sh run NAME RW QD SECONDS [RAMP]   fio's JSON on stdout (RW: randread|randwrite)
#   kernel-fio.sh to-virtio NAME                  rebind only; prints /dev/vdX
#   kernel-fio.sh to-vhost NAME                   rebind only; prints /dev/vhost-vdpa-N
#   kernel-fio.sh fio DISK RWS QDS SECONDS [RAMP] fio only, on a /dev/vdX that to-virtio gave: one fio process,
#                                                 one job per RW×QD (comma lists), one after the other (stonewall)
#
# `run` always rebinds back to vhost_vdpa, even when fio fails (its status is passed on). Every fd on the
# vhost-vdpa char device must be closed before this runs: unbinding waits for them.
# Needs root, the virtio_vdpa and virtio_blk modules, and fio (io_uring engine, libaio as the fallback).
set -u

SYS=/sys/bus/vdpa

die() {
  echo "kernel-fio: $*" >&2
  exit 1
}

# Waits (up to 10 s) for a glob under $1 to match and prints the first match's basename.
wait_for() { # dir-glob
  i=0
  while [ $i -lt 100 ]; do
    for f in $1; do
      if [ -e "$f" ]; then
        echo "${f##*/}"
        return 0
      fi
    done
    sleep 0.1
    i=$((i + 1))
  done
  return 1
}

wait_char() { # /dev/node
  i=0
  while [ ! -b "$1" ] && [ ! -c "$1" ]; do
    [ $i -ge 100 ] && return 1
    sleep 0.1
    i=$((i + 1))
  done
}

# Moves vdpa device $1 to bus driver $2 (vhost_vdpa | virtio_vdpa), whatever it is bound to now.
rebind() { # name driver
  [ -d "$SYS/devices/$1" ] || die "no vdpa device $1 (have: $(ls $SYS/devices 2>/dev/null | tr '\n' ' '))"
  [ -d "$SYS/drivers/$2" ] || die "vdpa bus driver $2 is not loaded (modprobe $2)"
  cur=$(readlink "$SYS/devices/$1/driver" 2>/dev/null)
  cur=${cur##*/}
  [ "$cur" = "$2" ] && return 0
  if [ -n "$cur" ]; then
    echo "$1" >"$SYS/drivers/$cur/unbind" || die "unbind $1 from $cur failed"
  fi
  echo "$2" >"$SYS/devices/$1/driver_override" || die "driver_override=$2 for $1 failed"
  echo "$1" >"$SYS/drivers/$2/bind" || die "bind $1 to $2 failed (dmesg: $(dmesg | tail -n 3 | tr '\n' ' '))"
}

to_virtio() { # name -> prints /dev/vdX
  rebind "$1" virtio_vdpa
  disk=$(wait_for "$SYS/devices/$1/virtio*/block/*") || die "$1 on virtio_vdpa: no block device appeared"
  wait_char "/dev/$disk" || die "/dev/$disk did not appear"
  echo "/dev/$disk"
}

to_vhost() { # name -> prints /dev/vhost-vdpa-N
  rebind "$1" vhost_vdpa
  cdev=$(wait_for "$SYS/devices/$1/vhost-vdpa-*") || die "$1 on vhost_vdpa: no vhost-vdpa char device appeared"
  wait_char "/dev/$cdev" || die "/dev/$cdev did not appear"
  echo "/dev/$cdev"
}

run_fio() { # disk rw qd seconds ramp engine
  fio --name=kernel --filename="$1" --rw="$2" --bs=4k --iodepth="$3" --direct=1 --ioengine="$6" \
    --time_based --runtime="$4" --ramp_time="$5" --numjobs=1 --norandommap --randrepeat=0 \
    --lat_percentiles=1 --output-format=json
}

# Jobs named RW-qdQD in fio's JSON, each with its own ramp and window. Word splitting of $jobs is intended.
run_fio_jobs() { # disk rws qds seconds ramp engine
  jobs=""
  for rw in $(echo "$2" | tr ',' ' '); do
    for qd in $(echo "$3" | tr ',' ' '); do
      jobs="$jobs --name=$rw-qd$qd --rw=$rw --iodepth=$qd --stonewall"
    done
  done
  # shellcheck disable=SC2086
  fio --filename="$1" --bs=4k --direct=1 --ioengine="$6" --time_based --runtime="$4" --ramp_time="$5" \
    --numjobs=1 --norandommap --randrepeat=0 --lat_percentiles=1 --output-format=json $jobs
}

# io_uring first; libaio when the kernel or fio build lacks it. The engine used is in fio's JSON.
# Prints only the JSON of the run that counts.
fio_with_fallback() { # run_fio|run_fio_jobs disk rw qd seconds ramp
  fio_run=$1
  shift
  fio_out=$($fio_run "$1" "$2" "$3" "$4" "$5" io_uring 2>/tmp/kernel-fio.err)
  fio_rc=$?
  if [ $fio_rc -ne 0 ]; then
    echo "kernel-fio: io_uring failed ($(tr '\n' ' ' </tmp/kernel-fio.err)); trying libaio" >&2
    fio_out=$($fio_run "$1" "$2" "$3" "$4" "$5" libaio 2>/tmp/kernel-fio.err)
    fio_rc=$?
    [ $fio_rc -ne 0 ] && cat /tmp/kernel-fio.err >&2
  fi
  printf '%s\n' "$fio_out"
  return $fio_rc
}

check_rw() {
  case "$1" in randread | randwrite) ;; *) die "RW must be randread or randwrite, got $1" ;; esac
  command -v fio >/dev/null || die "fio is not installed"
}

cmd=${1:-}
case "$cmd" in
  to-virtio) to_virtio "${2:?NAME}" ;;
  to-vhost) to_vhost "${2:?NAME}" ;;
  run)
    [ $# -ge 5 ] || die "usage: kernel-fio.sh run NAME RW QD SECONDS [RAMP]"
    name=$2 rw=$3 qd=$4 secs=$5 ramp=${6:-0}
    check_rw "$rw"
    disk=$(to_virtio "$name") || exit 1
    out=$(fio_with_fallback run_fio "$disk" "$rw" "$qd" "$secs" "$ramp")
    rc=$?
    to_vhost "$name" >/dev/null || rc=1
    printf '%s\n' "$out"
    exit $rc
    ;;
  fio)
    [ $# -ge 5 ] || die "usage: kernel-fio.sh fio DISK RWS QDS SECONDS [RAMP]"
    [ -b "$2" ] || die "$2 is not a block device (kernel-fio.sh to-virtio NAME prints it)"
    for rw in $(echo "$3" | tr ',' ' '); do check_rw "$rw"; done
    fio_with_fallback run_fio_jobs "$2" "$3" "$4" "$5" "${6:-0}"
    ;;
  *) die "usage: kernel-fio.sh run NAME RW QD SECONDS [RAMP] | fio DISK RWS QDS SECONDS [RAMP] | to-virtio NAME | to-vhost NAME" ;;
esac
