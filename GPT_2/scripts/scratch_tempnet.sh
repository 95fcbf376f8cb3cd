#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), GPT_2 table: GPT-2 from scratch with TempNet (average accuracy 32.24, WikiText ppl 47.32).
# 8 GPUs, DeepSpeed ZeRO-1, fp16, 50k steps (GPT_2/configs/scratch.yaml). Run from the repository root.
# Environment: NPROC processes per node (default: the paper's GPU count), OUT the run directory, DATA the data
# (a Hub name, a save_to_disk directory or a local .txt/.json/.jsonl file); further key=value arguments
# override the config (dotted keys reach into mappings, e.g. model.base.n_layer=2).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh): start it on every node with the same
# NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N GPT_2/scripts/slurm.sbatch GPT_2/scripts/scratch_tempnet.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/gpt2_scratch_tempnet}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args deepspeed "${NPROC:-8}"
exec deepspeed "${LAUNCHER_ARGS[@]}" \
  GPT_2/train.py \
  --config GPT_2/configs/scratch.yaml \
  --output-dir "$OUT" \
  objective=tempnet_dro \
  data.dataset="${DATA:-data/openwebtext2}" \
  "$@"
