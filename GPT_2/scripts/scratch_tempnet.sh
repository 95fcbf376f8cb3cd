#!/usr/bin/env bash
# PAPER.md, GPT_2 table: GPT-2 from scratch with TempNet (average accuracy 32.24, WikiText ppl 47.32).
# 8 GPUs, DeepSpeed ZeRO-1, fp16, 50k steps (GPT_2/configs/scratch.yaml). Run from the repository root.
# DATA: OpenWebText2 as a datasets.save_to_disk directory (or a Hub name); OUT: the run directory.
set -euo pipefail
deepspeed \
  --num_gpus 8 \
  GPT_2/train.py \
  --config GPT_2/configs/scratch.yaml \
  --output-dir "${OUT:-runs/gpt2_scratch_tempnet}" \
  objective=tempnet_dro \
  data.dataset="${DATA:-data/openwebtext2}"
