#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), LLaMA-2 rows: TempNet on frozen LLaMA-2-Chat 70B.
# 8 GPUs (micro-batch 2, global batch 16), DeepSpeed ZeRO-3 (LLaMA-2/configs/ds_zero3.json), bf16, 30k steps.
# Run from the repository root.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
# Environment: NPROC processes (default: the paper's GPU count), OUT the run directory, DATA the data
# (a Hub name, a save_to_disk directory or a local .txt/.json/.jsonl file); further key=value arguments
# override the config (dotted keys reach into mappings, e.g. model.base.n_layer=2).
set -euo pipefail
deepspeed \
  --num_gpus "${NPROC:-8}" \
  --master_port "${MASTER_PORT:-29500}" \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/chat_70b.yaml \
  --output-dir "${OUT:-runs/llama2_chat_70b}" \
  data.dataset="${DATA:-tatsu-lab/alpaca}" \
  "$@"
