#!/usr/bin/env bash
# PAPER.md, GPT_2 table: GPT-2 finetuned with TempNet.
# 8 GPUs, DeepSpeed ZeRO-1, fp16, 50k steps (GPT_2/configs/finetune.yaml). Run from the repository root.
# DATA: OpenWebText2 as a datasets.save_to_disk directory (or a Hub name); OUT: the run directory.
set -euo pipefail
deepspeed \
  --num_gpus 8 \
  GPT_2/train.py \
  --config GPT_2/configs/finetune.yaml \
  --output-dir "${OUT:-runs/gpt2_finetune_tempnet}" \
  objective=tempnet_dro \
  data.dataset="${DATA:-data/openwebtext2}"
