#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), the LLaMA-2 frozen setting on a model the paper did not use (no paper number): TempNet
# on a frozen Llama 3.1 8B, the paper's budget carried over as a target entropy (LLaMA-2/configs/frozen_llama3_8b.yaml;
# LLaMA-2/README.md, "Another model, another rho").
# 4 GPUs (micro-batch 4, global batch 16), DDP, bf16, LLM frozen, 30k steps. Run from the repository root.
# Afterwards: LLaMA-2/scripts/export_tempnet.sh extracts the trained TempNet.
# Environment: NPROC processes per node (default 4), OUT the run directory, DATA the data (a Hub name, a save_to_disk
# directory or a local .txt/.json/.jsonl file); further key=value arguments override the config (e.g.
# model.path=Qwen/Qwen3-8B: any causal LM of transformers).
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh).
set -euo pipefail
OUT="${OUT:-runs/llama3_frozen_8b}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-4}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  LLaMA-2/train.py \
  --config LLaMA-2/configs/frozen_llama3_8b.yaml \
  --output-dir "$OUT" \
  data.dataset="${DATA:-data/pretrain_text}" \
  "$@"
