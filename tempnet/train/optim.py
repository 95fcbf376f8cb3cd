"""Parameter groups and schedules shared by the trainers.

One rule for the model's own parameters (both trainers): matrices get weight decay, vectors (biases,
norms, scalars) do not. The LLM trainer adds the temperature head as groups of their own:

  decay       the language model's matrices            optim.lr, optim.weight_decay    warm-up + cosine
  no_decay    its biases, norms and other vectors      optim.lr, 0                     warm-up + cosine
  tempnet     TempNet (`tempnet.*`)                    tempnet.lr, tempnet.weight_decay on matrices
                                                       constant, or the cosine (tempnet.lr_schedule)
  global_tau  the learned scalar of objective=dro      tempnet.global_lr, 0             constant
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["decay_groups", "lm_param_groups", "build_lm_optimizer", "warmup_cosine", "build_lm_scheduler"]


def decay_groups(named_parameters, lr: float, weight_decay: float, prefix: str = "") -> list[dict]:
    """[{decay: matrices}, {no_decay: vectors}] over the trainable parameters, empty groups dropped."""
    groups = {f"{prefix}decay": [], f"{prefix}no_decay": []}
    for _, p in named_parameters:
        if p.requires_grad:
            groups[f"{prefix}decay" if p.dim() >= 2 else f"{prefix}no_decay"].append(p)
    return [{"params": ps, "lr": lr, "weight_decay": weight_decay if name == f"{prefix}decay" else 0.0, "name": name}
            for name, ps in groups.items() if ps]


def lm_param_groups(model: nn.Module, optim, tempnet) -> list[dict]:
    """The groups above for the trainable parameters of an unwrapped TempNet causal LM."""
    head = [(n, p) for n, p in model.named_parameters() if n.startswith("tempnet.") or ".tempnet." in n]
    head_ids = {id(p) for _, p in head}
    base = [(n, p) for n, p in model.named_parameters() if id(p) not in head_ids]
    out = decay_groups(base, optim.lr, optim.weight_decay)
    scalar = [(n, p) for n, p in head if n.endswith("tempnet.logit") and p.requires_grad]  # GlobalTemperature
    if scalar:
        out.append({"params": [p for _, p in scalar], "lr": tempnet.global_lr, "weight_decay": 0.0,
                    "name": "global_tau"})
    rest = [(n, p) for n, p in head if (n, p) not in scalar]
    out += decay_groups(rest, tempnet.lr, tempnet.weight_decay, prefix="tempnet_")
    if not out:
        raise ValueError("the model has no trainable parameters (frozen mode with an objective without a "
                         "learnable temperature?)")
    return out


def build_lm_optimizer(model: nn.Module, optim, tempnet) -> torch.optim.AdamW:
    """torch AdamW over `lm_param_groups` (a torch optimizer also lets DeepSpeed skip compiling fused_adam)."""
    return torch.optim.AdamW(lm_param_groups(model, optim, tempnet), lr=optim.lr, betas=tuple(optim.betas),
                             eps=optim.eps)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float, start_ratio: float = 0.0,
                  steps_per_epoch: int | None = None):
    """lr multiplier: linear warm-up from `start_ratio` to 1, then cosine from 1 to `min_ratio` at `total_steps`
    (the shape of transformers' cosine-with-min-lr schedule, per parameter group here). With `steps_per_epoch`
    the cosine moves once per epoch (constant within an epoch, as the authors' CLIP code), over the epochs."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_ratio + (1.0 - start_ratio) * step / warmup_steps
        if steps_per_epoch:
            progress = (step // steps_per_epoch) / max(1, total_steps // steps_per_epoch)
        else:
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _constant(step: int) -> float:
    return 1.0


def build_lm_scheduler(optimizer: torch.optim.Optimizer, optim, tempnet, max_steps: int):
    """Per group: the model's warm-up + cosine to optim.min_lr; TempNet constant or the same cosine; the
    global tau constant."""
    cosine = warmup_cosine(optim.warmup_steps, max_steps, optim.min_lr / optim.lr)
    lambdas = []
    for group in optimizer.param_groups:
        name = group.get("name", "")
        follows = not name.startswith(("tempnet_", "global_tau")) or (
            name.startswith("tempnet_") and tempnet.lr_schedule == "cosine")
        lambdas.append(cosine if follows else _constant)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
