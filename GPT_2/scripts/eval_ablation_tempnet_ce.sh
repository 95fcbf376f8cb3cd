#!/usr/bin/env bash
# Qiu et al., ICML 2024, ablation table, row "TempNet only" (average accuracy 31.76).
# Zero-shot lm-eval of the model trained by GPT_2/scripts/ablation_tempnet_ce.sh. Run from the repository root.
# 1 GPU; NPROC=N: N data-parallel processes (accelerate launch). Results: RESULTS_DIR/llm/ROW/ (lm-eval's
# --output_path); the tables: python scripts/make_tables.py RESULTS_DIR --paper.
# Env: CKPT (model directory), RESULTS_DIR (results), ROW (tempnet_ce), TASKS (comma-separated lm-eval tasks),
# NPROC (1, per node), DTYPE (float32), BATCH_SIZE (16), APPLY_TEMPNET (true); extra arguments go to lm-eval.
# Several nodes (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT: scripts/nodes.sh): NNODES x NPROC processes under
# accelerate launch, this script started on every node with its NODE_RANK.
# SLURM: sbatch --nodes=N GPT_2/scripts/slurm.sbatch GPT_2/scripts/eval_ablation_tempnet_ce.sh [lm-eval arguments].
set -euo pipefail
source scripts/nodes.sh
launch=(python)
if [ "$(( ${NPROC:-1} * NNODES ))" -gt 1 ]; then
  launcher_args accelerate "${NPROC:-1}"
  launch=(accelerate launch --multi_gpu "${LAUNCHER_ARGS[@]}" --mixed_precision no --dynamo_backend no)
fi
exec "${launch[@]}" scripts/eval_lm.py run \
  --model tempnet \
  --model_args "pretrained=${CKPT:-runs/gpt2_ablation_tempnet_ce/final},dtype=${DTYPE:-float32},apply_tempnet=${APPLY_TEMPNET:-true}" \
  --tasks "${TASKS:-piqa,hellaswag,arc_easy,arc_challenge,openbookqa,lambada_openai,wikitext}" \
  --batch_size "${BATCH_SIZE:-16}" \
  --output_path "${RESULTS_DIR:-results}/llm/${ROW:-tempnet_ce}" \
  "$@"
