#!/usr/bin/env bash
# Paper (Qiu et al., ICML 2024), LLaMA-2 rows / released checkpoints: extract the TempNet trained by one of the
# scripts above from RUN/final into OUT (default RUN/tempnet.safetensors; fp16, as released), to share it alone
# and attach it to the base model later with `tempnet attach BASE OUT DIR`. Run from the repository root.
# Further arguments go to `tempnet export` (e.g. --dtype float32).
set -euo pipefail
RUN="${RUN:-runs/llama2_chat_7b}"
tempnet export \
  "$RUN/final" \
  "${OUT:-$RUN/tempnet.safetensors}" \
  --dtype float16 \
  "$@"
