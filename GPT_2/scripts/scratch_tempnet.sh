#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), GPT_2 table: GPT-2 from scratch with TempNet (average accuracy 32.24, WikiText ppl 47.32).
# 8 GPUs, DeepSpeed ZeRO-1, fp16, 50k steps (GPT_2/configs/scratch.yaml). Run from the repository root.
# Environment: NPROC processes (default: the paper's GPU count), OUT the run directory, DATA the data
# (a Hub name, a save_to_disk directory or a local .txt/.json/.jsonl file); further key=value arguments
# override the config (dotted keys reach into mappings, e.g. model.base.n_layer=2).
set -euo pipefail
deepspeed \
  --num_gpus "${NPROC:-8}" \
  --master_port "${MASTER_PORT:-29500}" \
  GPT_2/train.py \
  --config GPT_2/configs/scratch.yaml \
  --output-dir "${OUT:-runs/gpt2_scratch_tempnet}" \
  objective=tempnet_dro \
  data.dataset="${DATA:-data/openwebtext2}" \
  "$@"
