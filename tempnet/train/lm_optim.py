"""Optimizer and schedule of the LLM trainer: AdamW with TempNet in its own group, cosine to a min lr.

Parameter groups (empty ones are dropped; a frozen base leaves only TempNet's):
  decay     the language model's matrices            lr, weight_decay
  no_decay  its biases, norms and other vectors      lr, 0
  tempnet   the temperature head (`tempnet.*`)       tempnet_lr, 0
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer", "build_scheduler"]


def param_groups(model: nn.Module, optim) -> list[dict]:
    """The three groups above for the trainable parameters of `model` (an unwrapped TempNet causal LM)."""
    groups = {"decay": [], "no_decay": [], "tempnet": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("tempnet.") or ".tempnet." in name:
            groups["tempnet"].append(p)
        elif p.dim() >= 2:
            groups["decay"].append(p)
        else:
            groups["no_decay"].append(p)
    settings = {"decay": (optim.lr, optim.weight_decay), "no_decay": (optim.lr, 0.0), "tempnet": (optim.tempnet_lr, 0.0)}
    out = [{"params": ps, "lr": settings[k][0], "weight_decay": settings[k][1], "name": k}
           for k, ps in groups.items() if ps]
    if not out:
        raise ValueError("the model has no trainable parameters (frozen mode with an objective without a "
                         "learnable temperature?)")
    return out


def build_optimizer(model: nn.Module, optim) -> torch.optim.AdamW:
    """torch AdamW over `param_groups` (a torch optimizer also lets DeepSpeed skip compiling fused_adam)."""
    return torch.optim.AdamW(param_groups(model, optim), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, optim, max_steps: int):
    """Linear warmup, then cosine decay of every group's lr to min_lr / lr of its peak, over max_steps."""
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=optim.warmup_steps, num_training_steps=max_steps,
        min_lr_rate=optim.min_lr / optim.lr)
