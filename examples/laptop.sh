#!/usr/bin/env bash
# The laptop session of docs/cli.md on a CPU: train the tiny model on the built-in digits, sample, fine-tune
# it into an MRAR model, measure diversity and FID, and fuse two classes of the built-in shapes.
# Everything lands in the current folder (runs/, samples/, fid/, fuse/); about 15 minutes in all.
#
#   bash examples/laptop.sh
#   QUICK=1 bash examples/laptop.sh        # every command with a toy model and a handful of steps (seconds)
#   TRANSDIFF="python -m transdiff_cli" bash examples/laptop.sh    # without the console script
set -euo pipefail

TD=${TRANSDIFF:-transdiff}
TRAIN=() FINETUNE=() FID=()
if [[ "${QUICK:-0}" == 1 ]]; then
    # a toy model, 2 sampling steps everywhere (also in the checkpoint grids), 2 training steps
    mkdir -p runs
    printf 'model: {width: 32, heads: 2, encoder_depth: 1, decoder_depth: 1, sampling_steps: 2}\n%s\n' \
        'train: {grid_sampling_steps: 2, grid_per_class: 1, grid_classes: 2}' > runs/quick.yaml
    TRAIN=(--config runs/quick.yaml --max-steps 2 --batch-size 16 --no-progress)
    FINETUNE=(--max-steps 2 --batch-size 8 --no-progress)
    FID=(--num-per-class 2)
fi

set -x
$TD train "${TRAIN[@]}"                                 # tiny model on digits (8x8 pixels) -> runs/digits-tiny
$TD sample --class 3 --num 16 --cfg 2                   # the newest run; PNGs + grid.png in samples/
$TD finetune-mrar --from runs/digits-tiny "${FINETUNE[@]}"   # -> runs/digits-tiny-mrar
$TD sample --ckpt runs/digits-tiny-mrar --mode mrar --class 7 --save-rounds --out samples-mrar
$TD diversity runs/digits-tiny                          # the paper's measure, per class
$TD fid --ckpt runs/digits-tiny --ref digits --features digits "${FID[@]}"
$TD train --data shapes --image-size 8 --name shapes "${TRAIN[@]}"
$TD fuse --ckpt runs/shapes --a red-circle --b blue-square   # fuse/fuse.png: A | fused | B
