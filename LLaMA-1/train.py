"""LLaMA 7B finetuned with TempNet on OpenWebText2 (Qiu et al., ICML 2024, LLaMA-1 table).

    python LLaMA-1/train.py --config LLaMA-1/configs/debug.yaml --output-dir runs/llama1_debug [key=value ...] [--resume | --overwrite]

Every setting lives in configs/*.yaml (the default: configs/finetune_7b.yaml); scripts/*.sh launch them. All training
logic is the shared trainer, tempnet/train/lm_trainer.py.
"""

from pathlib import Path

from tempnet.train.lm_trainer import cli, main as _main

CONFIG = Path(__file__).resolve().parent / "configs" / "finetune_7b.yaml"


def main(argv=None) -> dict:
    return _main(argv, default_config=CONFIG, description=__doc__.splitlines()[0])


if __name__ == "__main__":
    cli(default_config=CONFIG, description=__doc__.splitlines()[0])
