"""GPT-2 (125M) with TempNet on OpenWebText2, from scratch or finetuned (Qiu et al., ICML 2024, GPT-2 table).

    python GPT_2/train.py --config GPT_2/configs/debug.yaml --output-dir runs/gpt2_debug [key=value ...] [--resume | --overwrite]

Every setting lives in configs/*.yaml (the default: configs/scratch.yaml); scripts/*.sh launch them. All training
logic is the shared trainer, tempnet/train/lm_trainer.py.
"""

from pathlib import Path

from tempnet.train.lm_trainer import cli, main as _main

CONFIG = Path(__file__).resolve().parent / "configs" / "scratch.yaml"


def main(argv=None) -> dict:
    return _main(argv, default_config=CONFIG, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    cli(default_config=CONFIG, description=__doc__.splitlines()[0])
