"""The config fields both trainers share, defined once: the `train` section's run settings (precision, seed,
logging, checkpoints, DDP) and the `optim` section's AdamW + warm-up/cosine settings, with their checks.

Each tree subclasses these with its own defaults (`tempnet.config.with_defaults`) and adds what only it has:
the LLM trainer counts optimizer steps (train.max_steps, train.micro_batch_size and global_batch_size,
optim.eps), the CLIP trainer epochs (train.epochs, train.batch_size per process, optim.warmup_start_lr,
optim.schedule_unit). One "off" value per kind of setting: a period or a count is off at 0 (train.save_every,
train.keep_last, optim.grad_clip); a limit that may be absent is off at null (train.stop_after_steps,
train.save_every_minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from tempnet.train.precision import PRECISIONS

__all__ = ["BaseTrainConfig", "BaseOptimConfig", "RESUME_SAFE"]


@dataclass
class BaseTrainConfig:
    precision: str = "fp32"
    """fp32, fp16 (autocast + loss scaling) or bf16 (autocast)."""
    seed: int = 0
    """Seed of the model initialisation, the data order, dropout and augmentation."""
    log_every: int = 1
    """Log the metrics every this many optimizer steps (rank 0: console, metrics.jsonl, TensorBoard)."""
    save_every: int = 0
    """Also checkpoint every this many optimizer steps (0 = off). A run always checkpoints at its end and at
    train.stop_after_steps; the CLIP trainer also at every epoch end."""
    save_every_minutes: Optional[float] = None
    """Also checkpoint when this many minutes passed since the last checkpoint (hard time limits; null = off)."""
    keep_last: int = 0
    """Keep the newest this many checkpoints (0 = keep all)."""
    stop_after_steps: Optional[int] = None
    """Stop after this optimizer step with its checkpoint written, as if the job died there (null = off)."""
    tensorboard: bool = True
    """Also write TensorBoard event files to OUTPUT_DIR/tensorboard."""
    progress_bar: bool = True
    """Show a tqdm progress bar on rank 0."""
    find_unused_parameters: bool = False
    """DDP only: tolerate parameters without a gradient (e.g. the pooler of a BERT text tower)."""

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.log_every < 1:
            raise ValueError(f"train.log_every must be >= 1, got {self.log_every}")
        if self.save_every < 0 or self.keep_last < 0:
            raise ValueError(f"train.save_every and train.keep_last must be >= 0 (0 = off / keep all), got "
                             f"{self.save_every}, {self.keep_last}")
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(f"train.stop_after_steps must be >= 1 (null = off), got {self.stop_after_steps}")
        if self.save_every_minutes is not None and not self.save_every_minutes > 0:
            raise ValueError(f"train.save_every_minutes must be > 0 (null = off), got {self.save_every_minutes}")

    def periodic_save(self, step: int) -> bool:
        """Whether optimizer step `step` is one of train.save_every's (never when it is 0)."""
        return self.save_every > 0 and step % self.save_every == 0


#: The `train` fields that may change when a run is resumed; each tree adds its own (train.max_steps, ...).
RESUME_SAFE = ("train.stop_after_steps", "train.log_every", "train.save_every", "train.save_every_minutes",
               "train.keep_last", "train.tensorboard", "train.progress_bar")


@dataclass
class BaseOptimConfig:
    lr: float = 1e-3
    """Peak AdamW learning rate of the model (TempNet has its own: tempnet.lr)."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay of the model's matrices (not of biases, norms or TempNet)."""
    betas: tuple[float, ...] = (0.9, 0.999)
    """AdamW betas of the model."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine decay."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0 = off): the LLM trainer's over every trained parameter, the CLIP
    trainer's over the model's (not the TempNets')."""

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"optim.min_lr must lie in [0, optim.lr={self.lr}], got {self.min_lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError(f"optim.weight_decay, optim.warmup_steps and optim.grad_clip must be >= 0, got "
                             f"{self.weight_decay}, {self.warmup_steps}, {self.grad_clip}")
