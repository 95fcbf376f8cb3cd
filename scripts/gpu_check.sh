#!/usr/bin/env bash
# One-GPU check (under 8 minutes): the CUDA-marked tests, fp16 and bf16 steps of the LLM (fused loss) and
# CLIP (isogclr_tempnet) trainers, generation from the released checkpoint layout, the loss and contrastive
# benchmarks at GPU sizes, and the serving tests with the official vLLM wheel (tests/serving, Model Runner V2);
# one JSON summary in OUT/summary.json (default gpu_check_out/).
# Without a GPU it says so and only checks that every command exists (a dry run), exit 0 when they do.
#   bash scripts/gpu_check.sh [--out DIR] [--only NAME ...] [--dry-run] [--list]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
