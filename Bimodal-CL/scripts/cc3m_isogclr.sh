#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: iSogCLR (one learned tau per dataset index) on CC3M, ResNet-50 + DistilBERT, 256-d projections.
# Expected after 30 epochs: Flickr30K IR@1/TR@1 44.36/60.20, ImageNet top-1 40.72 (run eval_flickr30k.sh / eval_zeroshot.sh on the last checkpoint).
# 8 GPUs x 128 pairs, fp16 AMP. From the repository root; add --resume to continue a run.
# rho 8.0: iSogCLR's own default in the authors' code (the paper gives rho 7.0 for TempNet).
# Environment: NPROC processes per node (default: the paper's GPU count), OUT the output directory, DATA the training
# pairs (ALBEF JSON; images relative to IMAGE_ROOT, default its folder); further key=value arguments override the config.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh): start it on every node with the same
# NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N Bimodal-CL/scripts/slurm.sbatch Bimodal-CL/scripts/cc3m_isogclr.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/cc3m_isogclr}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-8}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/cc3m.yaml \
  --output-dir "$OUT" \
  data.train_json="${DATA:-data/cc3m/cc3m_train.json}" \
  data.image_root="${IMAGE_ROOT:-$(dirname "${DATA:-data/cc3m/cc3m_train.json}")}" \
  loss=isogclr \
  loss_args.rho=8.0 \
  "$@"
