#!/usr/bin/env bash
# PAPER.md, LLaMA-2 rows: TempNet on frozen LLaMA-2 7B (average accuracy 57.20 -> 59.44, LAMBADA ppl 4.01 -> 3.21).
# 4 GPUs (micro-batch 4, global batch 16), DDP, bf16, LLM frozen, 30k steps (LLaMA-2/configs/frozen_7b.yaml).
# Run from the repository root. DATA: pretraining text (save_to_disk directory or Hub name); OUT: the run directory.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
set -euo pipefail
torchrun \
  --nproc_per_node 4 \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/frozen_7b.yaml \
  --output-dir "${OUT:-runs/llama2_frozen_7b}" \
  data.dataset="${DATA:-data/pretrain_text}"
