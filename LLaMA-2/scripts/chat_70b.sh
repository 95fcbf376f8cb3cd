#!/usr/bin/env bash
# PAPER.md, LLaMA-2 rows: TempNet on frozen LLaMA-2-Chat 70B.
# 8 GPUs (micro-batch 2, global batch 16), DeepSpeed ZeRO-3 (LLaMA-2/configs/ds_zero3.json), bf16, 30k steps.
# Run from the repository root. DATA: Alpaca instructions (Hub name or save_to_disk directory); OUT: run directory.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
set -euo pipefail
deepspeed \
  --num_gpus 8 \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/chat_70b.yaml \
  --output-dir "${OUT:-runs/llama2_chat_70b}" \
  data.dataset="${DATA:-tatsu-lab/alpaca}"
