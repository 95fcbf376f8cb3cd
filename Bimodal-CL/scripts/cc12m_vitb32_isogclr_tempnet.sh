#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row (beyond the paper, the DistTempNet fork's setting): TempNet (robust global contrastive loss, rho 9.5, cosine gamma) on CC12M webdataset shards, open_clip ViT-B/32 from scratch, 512-d.
# No paper number: evaluate the best checkpoint with scripts/eval_clip_benchmark.py (DataComp tasks) and eval_zeroshot.sh.
# 8 GPUs x 512 pairs, fp16 AMP. From the repository root; add --resume to continue a run (mid-epoch too).
# Environment: NPROC processes (default: the fork's GPU count), OUT the output directory, DATA the shard folder
# (img2dataset: DATA/00000.tar .. DATA/$LAST_SHARD.tar, default 01242); further key=value arguments override the config.
# Several nodes (DistTempNet trains on 4 x 2 A100s): NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (scripts/nodes.sh):
# start it on every node with the same NNODES/MASTER_ADDR/MASTER_PORT and NODE_RANK 0..NNODES-1.
# SLURM: sbatch --nodes=N Bimodal-CL/scripts/slurm.sbatch Bimodal-CL/scripts/cc12m_vitb32_isogclr_tempnet.sh [key=value ...].
set -euo pipefail
OUT="${OUT:-runs/cc12m_vitb32_isogclr_tempnet}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-8}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/cc12m_vitb32.yaml \
  --output-dir "$OUT" \
  data.train_shards="${DATA:-data/cc12m}/{00000..${LAST_SHARD:-01242}}.tar" \
  loss=isogclr_tempnet \
  "$@"
