#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), LLaMA-1 row: LLaMA 7B finetuned with plain CE (tau = 1), the baseline of the same row.
# 4 GPUs, accelerate FSDP (LLaMA-1/configs/accelerate_fsdp.yaml), fp16, lr 2e-4 -> 5e-5, 5k steps.
# Run from the repository root.
# Environment: NPROC processes per node (default: the paper's GPU count), OUT the run directory, DATA the data
# (a Hub name, a save_to_disk directory or a local .txt/.json/.jsonl file); further key=value arguments
# override the config (dotted keys reach into mappings, e.g. model.base.n_layer=2).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh): start it on every node with the same
# NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N LLaMA-1/scripts/slurm.sbatch LLaMA-1/scripts/finetune_7b_baseline.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/llama1_finetune_7b_baseline}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args accelerate "${NPROC:-4}"
exec accelerate launch \
  --config_file LLaMA-1/configs/accelerate_fsdp.yaml \
  "${LAUNCHER_ARGS[@]}" \
  LLaMA-1/train.py \
  --config LLaMA-1/configs/finetune_7b.yaml \
  --output-dir "$OUT" \
  objective=ce \
  data.dataset="${DATA:-data/openwebtext2}" \
  "$@"
