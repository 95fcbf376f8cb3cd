#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: zero-shot classification on ImageNet-1k val, CIFAR-10, CIFAR-100 (top-1) of a trained model.
# Expected: ImageNet top-1 CLIP 36.27, iSogCLR 40.72, TempNet 42.28; CIFAR numbers in the paper's table.
# CKPT=runs/cc3m_isogclr_tempnet/checkpoint-N (the model config is read from it); results in OUT/eval.json.
# One GPU: evaluation runs on rank 0.
# Environment: NPROC processes (default: the paper's GPU count), OUT the output directory, DATA the training
# pairs (ALBEF JSON; images relative to IMAGE_ROOT, default its folder); further key=value arguments override the config.
set -euo pipefail
torchrun \
  --nproc_per_node "${NPROC:-1}" \
  --master_port "${MASTER_PORT:-29500}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/eval_zeroshot.yaml \
  --output-dir "${OUT:-runs/eval_zeroshot}" \
  --evaluate \
  --checkpoint "${CKPT:?set CKPT to a checkpoint-N directory}" \
  "$@"
