#!/usr/bin/env bash
# MRAR with fewer sampler steps in the early rounds: all rounds at 100 steps (400 NFE) against
# per-round schedules, 500 images per seed, FID and class fidelity in the digits features.
#   bash benchmarks/mrar_round_schedule.sh RUN [OUT]     (RUN: an MRAR run, e.g. from finetune-mrar)
set -u
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1  # two evaluations at a time, one per core
M=${1:-runs/digits-tiny-mrar}
O=${2:-benchmarks/mrar_round_schedule}
mkdir -p "$O"
run() {
    local tag
    tag=s$1_$(echo "$2" | tr , _)
    python -m transdiff_cli fid --ckpt "$M" --ref digits --features digits --num-per-class 50 --mode mrar \
        --sampling-steps "$2" --seed "$1" --batch-size 250 --out "$O/$tag" > "$O/$tag.log" 2>&1
}
for steps in 100 10,10,10,100 5,5,5,100; do
    run 0 "$steps" & run 1 "$steps" & wait
done
for m in "$O"/*/metrics.json; do
    python -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[1], m['nfe'], round(m['frechet_distance'], 2), m['class_fidelity'])" "$m"
done
