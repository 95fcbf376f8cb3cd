#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), LLaMA-2 rows: TempNet on frozen LLaMA-2-Chat 7B (AlpacaEval LC win rate 5.35% at tau 0.7 -> 5.74%; 1.42 h on A100s).
# 4 GPUs (micro-batch 4, global batch 16), DDP, bf16, LLM frozen, 30k steps (LLaMA-2/configs/chat_7b.yaml).
# Run from the repository root.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
# Environment: NPROC processes per node (default: the paper's GPU count), OUT the run directory, DATA the data
# (a Hub name, a save_to_disk directory or a local .txt/.json/.jsonl file); further key=value arguments
# override the config (dotted keys reach into mappings, e.g. model.base.n_layer=2).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh): start it on every node with the same
# NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N LLaMA-2/scripts/slurm.sbatch LLaMA-2/scripts/chat_7b.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/llama2_chat_7b}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-4}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/chat_7b.yaml \
  --output-dir "$OUT" \
  data.dataset="${DATA:-tatsu-lab/alpaca}" \
  "$@"
