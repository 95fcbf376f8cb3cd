"""A TempNet trained on a frozen LLaMA-2 (base or chat) (PAPER.md, the LLaMA-2 rows).

    python LLaMA-2/train.py --config LLaMA-2/configs/debug.yaml --output-dir runs/llama2_debug [key=value ...]

The LLM is frozen; only TempNet learns. Base models read pretraining text (packed blocks), chat
models Alpaca-style instructions with the prompt masked out of the loss (data.format=alpaca).
The defaults below are the paper's LLaMA-2 settings; configs/*.yaml choose the model, scripts/*.sh
launch it, scripts/export_tempnet.sh extracts the trained TempNet. All training logic is the shared
trainer in tempnet/train/lm_trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tempnet.train.lm_config import DataConfig, LMTrainConfig, ModelConfig, OptimConfig, TempNetSettings, TrainConfig
from tempnet.train.lm_trainer import main as train_main

HERE = Path(__file__).resolve().parent


@dataclass
class LLaMA2TrainConfig(LMTrainConfig):
    """LMTrainConfig with the paper's LLaMA-2 defaults: frozen LLM, rho 8.5, tau in [0.01, 2.0], seq 512,
    micro-batch 4, global batch 16, lr 1e-4, 30k steps, bf16."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(mode="frozen", arch="llama", fresh_tempnet=True,
                                                                   dtype="bfloat16"))
    """The frozen language model (a pretrained LLaMA-2, loaded in bf16)."""
    tempnet: TempNetSettings = field(default_factory=lambda: TempNetSettings(rho=8.5, tau_min=0.01, tau_max=2.0))
    """The temperature head and the robust loss."""
    data: DataConfig = field(default_factory=lambda: DataConfig(seq_len=512))
    """Training data."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, min_lr=1e-4, tempnet_lr=1e-4,
                                                                   weight_decay=0.0))
    """Optimizer and schedule: a constant lr 1e-4 (PAPER.md gives no decay); only TempNet's group exists."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=30_000, micro_batch_size=4,
                                                                   global_batch_size=16, precision="bf16"))
    """Loop, batch sizes, precision, checkpoints, logging."""


def main(argv=None) -> dict:
    return train_main(argv, LLaMA2TrainConfig, default_config=HERE / "configs" / "frozen_7b.yaml",
                      description=__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
