#!/usr/bin/env bash
# The tiny end-to-end reproduction (python -m tempnet.demo): the paper's LM ablation (ce / dro / tempnet_ce /
# tempnet_dro, plus the uncentred-pooling variant as an extra row) on a synthetic language with known
# per-token entropy, how TempNet's tau varies with that entropy, and the tiny CLIP under clip / sogclr /
# isogclr / isogclr_tempnet. CPU only; about 4-5 minutes on 2 cores (README: "The tiny reproduction"), --quick about a minute.
#   bash scripts/reproduce_tiny.sh                      # results/tiny
#   bash scripts/reproduce_tiny.sh --quick --output-dir results/tiny_quick
#   bash scripts/reproduce_tiny.sh --data my_text.txt   # the LM comparison on your own text
#   bash scripts/reproduce_tiny.sh --seeds 3            # mean ± std over 3 seeds (3x the time)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m tempnet.demo \
    "$@"
