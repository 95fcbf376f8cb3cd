"""lm-evaluation-harness with the "tempnet" model registered: every `lm-eval run` flag works.

    python scripts/eval_lm.py run --model tempnet --model_args pretrained=runs/gpt2/final,dtype=bfloat16 \
        --tasks piqa,hellaswag,arc_easy,arc_challenge,openbookqa,lambada_openai,wikitext --batch_size 16

The paper's baselines (tau = 1, no TempNet) are `--model hf` on the base checkpoint.
"""

import tempnet.integrations.lm_eval  # noqa: F401  (registers --model tempnet)
from lm_eval.__main__ import cli_evaluate

if __name__ == "__main__":
    cli_evaluate()
