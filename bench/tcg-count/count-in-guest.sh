#!/bin/bash
# Runs the block benchmarks one after another in the lab and brackets 4 s of each one's steady state with
# labels, for the counting plugin (tcgcount.c) and for the lab's record of its vCPU threads' host CPU time
# (/run/lab/vcpu-mark, docs/lab.md). Run from the project root on the host:
#   make -C bench/tcg-count && mkdir -p .lab/tcg-count && rm -f .lab/tcg-count/*
#   node scripts/lab.mjs --quiet --tcg-plugin \
#     bench/tcg-count/tcgcount.so,out=$PWD/.lab/tcg-count/out.txt,mark=$PWD/.lab/tcg-count/mark \
#     -- bash bench/tcg-count/count-in-guest.sh
#   node bench/tcg-count/per-io.mjs .lab/tcg-count
# Plugin options (after mark=…): percpu=on adds exact per-vCPU instruction counts (slower). Without
# --tcg-plugin nothing is counted and nothing slowed: per-io.mjs then shows only the host CPU per I/O.
# `-- env PIN=1 bash …`: the simulator's worker on CPU 0 and every driver on CPU 1 (as bench/run-in-guest.mjs
# --pin), so that per-vCPU figures are the threads'.
# Each engine's IOPS (its own measured window, which covers the labelled one) goes to results.txt.
set -eu
DIR=.lab/tcg-count
RW=${RW:-randread}
DEV=/dev/$(ls /sys/bus/vdpa/devices/blk0 | grep vhost-vdpa- | head -1)
ON=()
if [ "${PIN:-0}" = 1 ]; then
  for p in /proc/[0-9]*; do
    if [ "$(cat "$p/comm" 2>/dev/null)" = "vDPA sim worker: blk0" ]; then taskset -pc 0 "${p#/proc/}" >/dev/null; fi
  done
  ON=(taskset -c 1)
fi
C="${ON[*]} bench/c-baseline/vdpa-blk-bench"
J="${ON[*]} node --expose-gc dist-test/bench/blk-bench.js"
# name, seconds to wait for the steady state (after the warm-up and ramp), command
one() {
  local name=$1 wait=$2
  shift 2
  "$@" >"$DIR/$name.json" 2>/dev/null &
  local pid=$!
  sleep "$wait"
  echo "start-$name" | tee "$DIR/mark" /run/lab/vcpu-mark >/dev/null
  sleep 4
  echo "end-$name" | tee "$DIR/mark" /run/lab/vcpu-mark >/dev/null
  wait $pid
  echo "$name $(grep -o '"iops":[0-9.]*' "$DIR/$name.json" | cut -d: -f2)" >>"$DIR/results.txt"
}
common=(--device "$DEV" --rw "$RW" --ramp 1)
for qd in 32 1; do
  one "c-poll-qd$qd" 6 $C "${common[@]}" --qd $qd --seconds 12 --warmup-ios 20000 --mode poll
  one "c-event-qd$qd" 6 $C "${common[@]}" --qd $qd --seconds 12 --warmup-ios 20000 --mode event
done
# Our warm-up is 20,000 I/Os per 4 of queue depth (as in bench/run-in-guest.mjs): 13-15 s here.
one ours-poll-qd32 24 $J "${common[@]}" --qd 32 --seconds 40 --warmup-ios 160000 --mode poll --spin-us 1000
one ours-irq-qd32 24 $J "${common[@]}" --qd 32 --seconds 40 --warmup-ios 160000 --mode interrupt
one ours-poll-qd1 18 $J "${common[@]}" --qd 1 --seconds 30 --warmup-ios 20000 --mode poll --spin-us 1000
one ours-irq-qd1 18 $J "${common[@]}" --qd 1 --seconds 30 --warmup-ios 20000 --mode interrupt
# The host appends to it within ~10 ms of the last label; /run/lab goes away with the VM.
sleep 1
cp /run/lab/vcpu-times "$DIR/vcpu-times"
