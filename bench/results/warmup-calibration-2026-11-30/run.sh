set -x
D=bench/results/warmup-calibration-2026-11-30
for W in 0 5000 20000; do
  node bench/run-in-guest.mjs --out $D/warmup-$W.json --seconds 3 --ramp 1 --heap-ios 0 --rws randread --qds 1,32 --engines ours-irq,ours-poll,c-poll --warmup-ios $W
done
