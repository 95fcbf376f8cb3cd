#!/usr/bin/env bash
# Paper, CLIP table, Bimodal-CL row: zero-shot retrieval on Flickr30K test (IR@1 = img_r1, TR@1 = txt_r1) of a trained model.
# Expected: CLIP 40.98/50.90, iSogCLR 44.36/60.20, TempNet 46.17/62.51 (IR@1/TR@1).
# CKPT=runs/cc3m_isogclr_tempnet/checkpoint-N (the model config is read from it); results in OUT/eval.json, by default
# RESULTS_DIR/clip/ROW/flickr30k/eval.json (RESULTS_DIR results, ROW isogclr_tempnet: the loss= name of the run), the
# layout python scripts/make_tables.py RESULTS_DIR reads (it merges every eval.json under clip/ROW/).
# One GPU: evaluation runs on rank 0.
# Environment: CKPT the checkpoint, OUT (or RESULTS_DIR and ROW) where eval.json goes, NPROC processes per node (1);
# further key=value arguments override the config (e.g. eval.num_workers=2).
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as in the training scripts (scripts/nodes.sh); evaluation
# itself runs on rank 0, so one node is enough.
set -euo pipefail
OUT="${OUT:-${RESULTS_DIR:-results}/clip/${ROW:-isogclr_tempnet}/flickr30k}"  # the run directory (before nodes.sh: PRINT_OUTPUT_DIR=1 prints it)
source scripts/nodes.sh
launcher_args torchrun "${NPROC:-1}"
exec torchrun "${LAUNCHER_ARGS[@]}" \
  Bimodal-CL/train.py \
  --config Bimodal-CL/configs/eval_flickr30k.yaml \
  --output-dir "$OUT" \
  --evaluate \
  --checkpoint "${CKPT:?set CKPT to a checkpoint-N directory}" \
  "$@"
