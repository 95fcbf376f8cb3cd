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


`pretrained=` must be a local checkpoint directory that exists or a Hub name, and with `--model tempnet` a
checkpoint holding TempNet weights unless `apply_tempnet=false`; an unknown task is named. Each of these
prints one `error: ...` line and exits with status 2.
"""

import sys

import tempnet.integrations.lm_eval  # noqa: F401  (registers --model tempnet)
from tempnet.errors import UserError, check_model_dir, run_cli

TEMPNET_MODELS = ("tempnet",)


def check_model_args(model: str, model_args: dict | None) -> None:
    """The checkpoint of `pretrained=`: an existing local path (never answered by a Hub repo-id error),
    and for `--model tempnet` with TempNet applied, one that holds TempNet weights."""
    args = model_args or {}
    path = args.get("pretrained")
    if path is None:
        return
    path = check_model_dir(str(path), "--model_args pretrained")
    apply = str(args.get("apply_tempnet", "true")).strip().lower() not in ("false", "0", "no")
    if model in TEMPNET_MODELS and apply:
        import os

        from tempnet.integrations.head import checkpoint_shapes

        if os.path.isdir(path) and not checkpoint_shapes(path):
            raise UserError(f"--model_args pretrained={path} holds no TempNet weights (tempnet.* tensors): evaluate "
                            "a plain checkpoint with apply_tempnet=false in --model_args, or --model hf")


def main(argv=None) -> None:
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    setup_logging()
    parser = HarnessCLI()
    args = parser.parse_args()
    if getattr(args, "model", None) is not None and hasattr(args, "model_args"):
        check_model_args(args.model, args.model_args)
    try:
        parser.execute(args)
    except ValueError as exc:  # lm-eval's own report of an unknown task name
        if str(exc).startswith("Tasks not found"):
            raise UserError(f"--tasks: {exc} (`lm-eval ls tasks` lists them; --include_path adds a folder of task "
                            "YAMLs)") from None
        raise


if __name__ == "__main__":
    sys.exit(run_cli(lambda argv: main(argv), None))
