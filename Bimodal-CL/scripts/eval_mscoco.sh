#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: zero-shot retrieval on MSCOCO 5k test (IR@1 = img_r1, TR@1 = txt_r1) of a trained model.
# Expected: MSCOCO numbers are in the paper's table, not in the paper.
# CKPT=runs/cc3m_isogclr_tempnet/checkpoint-N (the model config is read from it); results in OUT/eval.json.
# One GPU: evaluation runs on rank 0.
# Environment: NPROC processes (default: the paper's GPU count), OUT the output directory, DATA the training
# pairs (ALBEF JSON; images relative to IMAGE_ROOT, default its folder); further key=value arguments override the config.
set -euo pipefail
torchrun \
  --nproc_per_node "${NPROC:-1}" \
  --master_port "${MASTER_PORT:-29500}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/eval_mscoco.yaml \
  --output-dir "${OUT:-runs/eval_mscoco}" \
  --evaluate \
  --checkpoint "${CKPT:?set CKPT to a checkpoint-N directory}" \
  "$@"
