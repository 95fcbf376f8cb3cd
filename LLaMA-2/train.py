"""A TempNet trained on a frozen LLaMA-2, base or chat (Qiu et al., ICML 2024, LLaMA-2 tables).

    python LLaMA-2/train.py --config LLaMA-2/configs/debug.yaml --output-dir runs/llama2_debug [key=value ...] [--resume | --overwrite]

Every setting lives in configs/*.yaml (the default: configs/frozen_7b.yaml); scripts/*.sh launch them. All training
logic is the shared trainer, tempnet/train/lm_trainer.py.
"""

from pathlib import Path

from tempnet.train.lm_trainer import cli, main as _main

CONFIG = Path(__file__).resolve().parent / "configs" / "frozen_7b.yaml"


def main(argv=None) -> dict:
    return _main(argv, default_config=CONFIG, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    cli(default_config=CONFIG, description=__doc__.splitlines()[0])
