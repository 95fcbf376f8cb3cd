#!/usr/bin/env bash
# Qiu et al., ICML 2024, AlpacaEval table, LLaMA-2-Chat 13B (numbers in the paper's AlpacaEval table).
# AlpacaEval model outputs of the chat model trained by LLaMA-2/scripts/chat_13b.sh, twice: with its TempNet
# (row ROW_tempnet) and the same weights at a fixed tau = TAU (row ROW_tau$TAU), into
# RESULTS_DIR/alpaca/<row>/model_outputs.json. Score each with alpaca_eval (needs an OpenAI key):
#   alpaca_eval --model_outputs RESULTS_DIR/alpaca/<row>/model_outputs.json --reference_outputs REF.json
# then: python scripts/make_tables.py RESULTS_DIR --paper. Run from the repository root.
# One GPU, one process (NPROC is not used: generation runs in one process).
# Env: CKPT (runs/llama2_chat_13b/final), INSTRUCTIONS (data/alpaca_eval.json: AlpacaEval's 805 instructions),
# RESULTS_DIR (results), ROW (llama2_chat_13b), TAU (0.7); extra arguments go to scripts/alpaca_outputs.py.
set -euo pipefail
for tau in tempnet "${TAU:-0.7}"; do
  if [ "$tau" = tempnet ]; then row="${ROW:-llama2_chat_13b}_tempnet"; fixed=(); else row="${ROW:-llama2_chat_13b}_tau$tau"; fixed=(--tau "$tau"); fi
  python scripts/alpaca_outputs.py \
    --model "${CKPT:-runs/llama2_chat_13b/final}" \
    --instructions "${INSTRUCTIONS:-data/alpaca_eval.json}" \
    --results-dir "${RESULTS_DIR:-results}" \
    --row "$row" \
    --dtype bfloat16 \
    "${fixed[@]}" \
    "$@"
done
