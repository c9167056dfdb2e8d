#!/usr/bin/env bash
# ImageNet 256x256 with torchrun on several nodes: cache the KL-16 latents, train TransDiff-L (the
# paper's recipe, examples/configs/L.yaml), fine-tune it into an MRAR model, and evaluate FID.
# Run the same script on every node, each with its NODE_RANK; paths must be on a shared file system.
#
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node01 bash examples/imagenet_256.sh     # on node01
#   NNODES=4 NODE_RANK=1 MASTER_ADDR=node01 bash examples/imagenet_256.sh     # on node02, ...
#
# Every step resumes where it stopped when run again (encode-latents skips finished images, train and
# finetune-mrar continue from their latest checkpoint). Under SLURM see slurm_train.sbatch.
set -euo pipefail

NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
SIZE=${SIZE:-L}                                        # B, L or H
IMAGENET=${IMAGENET:-/data/imagenet}                   # ImageNet-style folder: train/<wnid>/*.JPEG
VAE=${VAE:-/ckpt/kl16.ckpt}                            # the MAR/LDM KL-16 VAE
LATENTS=${LATENTS:-latents/in256}
RUN=${RUN:-runs/in256-$SIZE}
REF=${REF:-VIRTUAL_imagenet256_labeled.npz}            # ADM's reference statistics
INCEPTION=${INCEPTION:-weights-inception-2015-12-05-6726825d.pth}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
launch() {  # one torchrun per node; its workers join one process group across the nodes
    torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
        --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" -m transdiff_cli "$@"
}

set -x
# 1. the KL-16 latents of every image and of its horizontal flip, once
launch encode-latents --data "$IMAGENET" --vae "kl16:$VAE" --image-size 256 --out "$LATENTS"
# 2. the 1-step model: 400 epochs, global batch 2048, lr 1e-4 x 2048/256, EMA 0.9999, bf16 autocast
launch train --config "$HERE/configs/$SIZE.yaml" --data "$LATENTS" --run-dir "$RUN" --no-progress
# 3. MRAR fine-tuning: 40 epochs at lr 5e-5 on groups of 4 same-class images
launch finetune-mrar --from "$RUN" --run-dir "$RUN-mrar" --no-progress
# 4. FID of 50 images per class (50,000), generated across all GPUs; 1-step and MRAR
for ckpt in "$RUN" "$RUN-mrar"; do
    launch fid --ckpt "$ckpt" --vae "kl16:$VAE" --ref "$REF" --inception-weights "$INCEPTION" \
        --num-per-class 50 --isc --out "$ckpt/fid"
done
