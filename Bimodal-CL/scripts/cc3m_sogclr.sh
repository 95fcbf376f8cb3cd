#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: SogCLR (global contrastive loss, fixed tau 0.01, moving averages gamma 0.8) on CC3M, ResNet-50 + DistilBERT, 256-d projections.
# Expected after 30 epochs: not listed in PAPER.md (see the paper's table) (run eval_flickr30k.sh / eval_zeroshot.sh on the last checkpoint).
# 8 GPUs x 128 pairs, fp16 AMP. From the repository root; OUT sets the output folder; extra key=value
# arguments override the config (e.g. data.train_json=...); add --resume to continue a run.
set -euo pipefail
torchrun \
  --nproc_per_node 8 \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/cc3m.yaml \
  --output-dir "${OUT:-runs/cc3m_sogclr}" \
  loss=sogclr \
  "$@"
