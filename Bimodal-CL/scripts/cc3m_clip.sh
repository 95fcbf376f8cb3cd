#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: CLIP (InfoNCE, fixed tau 0.01) on CC3M, ResNet-50 + DistilBERT, 256-d projections.
# Expected after 30 epochs: Flickr30K IR@1/TR@1 40.98/50.90, ImageNet top-1 36.27 (run eval_flickr30k.sh / eval_zeroshot.sh on the last checkpoint).
# 8 GPUs x 128 pairs, fp16 AMP. From the repository root; add --resume to continue a run.
# Environment: NPROC processes per node (default: the paper's GPU count), OUT the output directory, DATA the training
# pairs (ALBEF JSON; images relative to IMAGE_ROOT, default its folder); further key=value arguments override the config.
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh): start it on every node with the same
# NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N Bimodal-CL/scripts/slurm.sbatch Bimodal-CL/scripts/cc3m_clip.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/cc3m_clip}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-8}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/cc3m.yaml \
  --output-dir "$OUT" \
  data.train_json="${DATA:-data/cc3m/cc3m_train.json}" \
  data.image_root="${IMAGE_ROOT:-$(dirname "${DATA:-data/cc3m/cc3m_train.json}")}" \
  loss=clip \
  "$@"
