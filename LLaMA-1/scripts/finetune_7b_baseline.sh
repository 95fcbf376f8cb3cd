#!/usr/bin/env bash
# PAPER.md, LLaMA-1 row: LLaMA 7B finetuned with plain CE (tau = 1), the baseline of the same row.
# 4 GPUs, accelerate FSDP (LLaMA-1/configs/accelerate_fsdp.yaml), bf16, lr 2e-4 -> 5e-5, 5k steps.
# Run from the repository root. DATA: OpenWebText2 (save_to_disk directory or Hub name); OUT: run directory.
set -euo pipefail
accelerate launch \
  --config_file LLaMA-1/configs/accelerate_fsdp.yaml \
  --num_processes 4 \
  LLaMA-1/train.py \
  --config LLaMA-1/configs/finetune_7b.yaml \
  --output-dir "${OUT:-runs/llama1_finetune_7b_baseline}" \
  objective=ce \
  data.dataset="${DATA:-data/openwebtext2}"
