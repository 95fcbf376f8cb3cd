"""LLaMA 7B finetuned with TempNet on OpenWebText2 (PAPER.md, the LLaMA-1 row).

    python LLaMA-1/train.py --config LLaMA-1/configs/debug.yaml --output-dir runs/llama1_debug [key=value ...]

The defaults below are the paper's LLaMA-1 settings; configs/*.yaml choose the setting, scripts/*.sh
launch it. All training logic is the shared trainer in tempnet/train/lm_trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tempnet.train.lm_config import LMTrainConfig, ModelConfig, OptimConfig, TempNetSettings, TrainConfig
from tempnet.train.lm_trainer import main as train_main

HERE = Path(__file__).resolve().parent


@dataclass
class LLaMA1TrainConfig(LMTrainConfig):
    """LMTrainConfig with the paper's LLaMA-1 defaults: finetune, tau in [0.01, 2.0], lr 2e-4 -> 5e-5,
    5k steps, bf16."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(mode="finetune", arch="llama", fresh_tempnet=True))
    """The language model (a pretrained LLaMA)."""
    tempnet: TempNetSettings = field(default_factory=lambda: TempNetSettings(tau_min=0.01, tau_max=2.0))
    """The temperature head and the robust loss (PAPER.md gives no rho for LLaMA-1: 8.0 as for GPT-2)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, min_lr=5e-5, tempnet_lr=2e-4))
    """Optimizer and schedule (TempNet's lr is not in PAPER.md: the model's lr)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=5_000, precision="bf16"))
    """Loop, batch sizes, precision, checkpoints, logging."""


def main(argv=None) -> dict:
    return train_main(argv, LLaMA1TrainConfig, default_config=HERE / "configs" / "finetune_7b.yaml",
                      description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
