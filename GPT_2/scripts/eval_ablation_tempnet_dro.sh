#!/usr/bin/env bash
# Qiu et al., ICML 2024, ablation table, row "TempNet + DRO" (average accuracy 32.24).
# Zero-shot lm-eval of the model trained by GPT_2/scripts/ablation_tempnet_dro.sh. Run from the repository root.
# 1 GPU; NPROC=N: N data-parallel processes (accelerate launch). Results: RESULTS_DIR/llm/ROW/ (lm-eval's
# --output_path); the tables: python scripts/make_tables.py RESULTS_DIR --paper.
# Env: CKPT (model directory), RESULTS_DIR (results), ROW (tempnet_dro), TASKS (comma-separated lm-eval tasks),
# NPROC (1), DTYPE (float32), BATCH_SIZE (16), APPLY_TEMPNET (true); extra arguments go to lm-eval.
set -euo pipefail
launch=(python)
if [ "${NPROC:-1}" -gt 1 ]; then
  launch=(accelerate launch --multi_gpu --num_processes "$NPROC" --num_machines 1 --mixed_precision no --dynamo_backend no)
fi
"${launch[@]}" scripts/eval_lm.py run \
  --model tempnet \
  --model_args "pretrained=${CKPT:-runs/gpt2_ablation_tempnet_dro/final},dtype=${DTYPE:-float32},apply_tempnet=${APPLY_TEMPNET:-true}" \
  --tasks "${TASKS:-piqa,hellaswag,arc_easy,arc_challenge,openbookqa,lambada_openai,wikitext}" \
  --batch_size "${BATCH_SIZE:-16}" \
  --output_path "${RESULTS_DIR:-results}/llm/${ROW:-tempnet_dro}" \
  "$@"
