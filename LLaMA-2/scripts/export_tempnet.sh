#!/usr/bin/env bash
# PAPER.md, LLaMA-2 rows / released checkpoints: extract the TempNet trained by one of the scripts above
# from RUN/final into RUN/tempnet.safetensors (fp16, as released), to share it alone and attach it to the
# base model later with `tempnet attach BASE RUN/tempnet.safetensors OUT`. Run from the repository root.
set -euo pipefail
tempnet export \
  "${RUN:-runs/llama2_chat_7b}/final" \
  "${RUN:-runs/llama2_chat_7b}/tempnet.safetensors" \
  --dtype float16
