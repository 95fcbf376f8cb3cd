#!/usr/bin/env bash
# PAPER.md, LLaMA-2 rows: TempNet on frozen LLaMA-2 13B.
# 4 GPUs (micro-batch 4, global batch 16), DDP, bf16, LLM frozen, 30k steps (LLaMA-2/configs/frozen_13b.yaml).
# Run from the repository root. DATA: pretraining text (save_to_disk directory or Hub name); OUT: the run directory.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
set -euo pipefail
torchrun \
  --nproc_per_node 4 \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/frozen_13b.yaml \
  --output-dir "${OUT:-runs/llama2_frozen_13b}" \
  data.dataset="${DATA:-data/pretrain_text}"
