"""GPT-2 (125M) with TempNet on OpenWebText2, from scratch or finetuned (PAPER.md, the GPT_2 rows).

    python GPT_2/train.py --config GPT_2/configs/debug.yaml --output-dir runs/gpt2_debug [key=value ...]

The defaults below are the paper's GPT_2 settings; configs/*.yaml choose the setting, scripts/*.sh
launch it. All training logic is the shared trainer in tempnet/train/lm_trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tempnet.train.lm_config import DataConfig, LMTrainConfig, OptimConfig, TempNetSettings, TrainConfig
from tempnet.train.lm_trainer import main as train_main

HERE = Path(__file__).resolve().parent


@dataclass
class GPT2TrainConfig(LMTrainConfig):
    """LMTrainConfig with the paper's GPT_2 defaults: tau in [0.5, 5.0], rho 8, AdamW lr 6e-4 -> 6e-5
    cosine, betas (0.9, 0.95), wd 0.1, clip 1.0, TempNet lr 2e-6, seq 2048, 50k steps, fp16."""

    tempnet: TempNetSettings = field(default_factory=lambda: TempNetSettings(rho=8.0, tau_min=0.5, tau_max=5.0))
    """The temperature head and the robust loss."""
    data: DataConfig = field(default_factory=lambda: DataConfig(seq_len=2048))
    """Training data (OpenWebText2)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=6e-4, min_lr=6e-5, tempnet_lr=2e-6,
                                                                   weight_decay=0.1, grad_clip=1.0))
    """Optimizer and schedule."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=50_000, precision="fp16"))
    """Loop, batch sizes, precision, checkpoints, logging."""


def main(argv=None) -> dict:
    return train_main(argv, GPT2TrainConfig, default_config=HERE / "configs" / "scratch.yaml",
                      description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
