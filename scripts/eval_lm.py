"""lm-evaluation-harness with the "tempnet" model registered: every `lm-eval run` flag works.

    python scripts/eval_lm.py run --model tempnet --model_args pretrained=runs/gpt2/final,dtype=bfloat16 \
        --tasks piqa,hellaswag,arc_easy,arc_challenge,openbookqa,lambada_openai,wikitext --batch_size 16 \
        --output_path results/llm/gpt2_scratch_tempnet

`--model tempnet` evaluates the checkpoint with its TempNet (logits / tau); `apply_tempnet=false` in
--model_args evaluates the raw logits of the same checkpoint (tau = 1: what `--model hf` gives on the base
model), so one checkpoint fills both columns of a "without / with TempNet" table. Both our checkpoints and
the authors' released layout load. Several GPUs, data parallel:
`accelerate launch --multi_gpu --num_processes N scripts/eval_lm.py run ...`; a model too large for one GPU:
`parallelize=True` in --model_args (device_map="auto"), one process. The per-row launchers are
`<experiment>/scripts/eval_*.sh`; `scripts/make_tables.py` turns their results into the paper's tables.
"""

import tempnet.integrations.lm_eval  # noqa: F401  (registers --model tempnet)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
