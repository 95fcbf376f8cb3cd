"""The divergence guard: a non-finite loss or gradient norm stops a run before anything is written from it.

`update` runs every step and only does tensor arithmetic on the device (no host synchronisation): it
keeps the first step whose loss or gradient norm was not finite. `check` reads that (agreed over ranks)
where the trainer synchronises anyway: at logging and before every save, evaluation and `final/`. So
no checkpoint, best checkpoint or final model is ever written from a non-finite state, and the newest
checkpoint is always finite.

fp16 steps that the grad scaler skips (inf / NaN gradients, the scale is lowered and the update
dropped) are not divergence; `MAX_SKIPPED_STEPS` consecutive ones are (the scale would have fallen
by 2^100: the model no longer produces finite gradients at any scale).
"""

from __future__ import annotations

import torch

from tempnet.distributed import all_reduce_min

__all__ = ["DivergenceGuard", "Diverged", "MAX_SKIPPED_STEPS", "scale_of"]

MAX_SKIPPED_STEPS = 100
_NONE = 2 ** 62


class Diverged(Exception):
    """A non-finite loss or gradient norm; the trainers' entry points exit with status 3."""

    status = 3


def scale_of(scaler) -> torch.Tensor | None:
    """The grad scaler's current scale as a device tensor (no synchronisation), or None when disabled."""
    scale = getattr(scaler, "_scale", None) if scaler is not None and scaler.is_enabled() else None
    return None if scale is None else scale.detach().clone()


class DivergenceGuard:
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.first_bad = torch.full((), _NONE, dtype=torch.long, device=self.device)
        self.skipped_run = torch.zeros((), dtype=torch.long, device=self.device)

    def update(self, step: int, loss, grad_norm=None, skipped=None) -> None:
        """Record step `step`: its loss (any shape), gradient norm, and whether the grad scaler skipped it."""
        bad = ~torch.isfinite(torch.as_tensor(loss, device=self.device).detach().float()).all()
        if grad_norm is not None:
            norm_ok = torch.isfinite(torch.as_tensor(grad_norm, device=self.device).detach().float())
            if skipped is not None:
                skipped = torch.as_tensor(skipped, device=self.device)
                norm_ok = norm_ok | skipped  # the scaler dropped this update: not divergence by itself
                self.skipped_run = (self.skipped_run + 1) * skipped.long()
                bad = bad | (self.skipped_run >= MAX_SKIPPED_STEPS)
            bad = bad | ~norm_ok
        self.first_bad = torch.where(bad & (self.first_bad == _NONE), torch.full_like(self.first_bad, step),
                                     self.first_bad)

    def first_bad_step(self) -> int | None:
        """The first non-finite step on any rank so far, or None (one device read)."""
        step = int(all_reduce_min(self.first_bad))
        return None if step == _NONE else step

    def check(self, newest_checkpoint) -> None:
        """Raise Diverged naming the step and the newest finite checkpoint if any step was not finite."""
        step = self.first_bad_step()
        if step is None:
            return
        kept = f"the newest finite checkpoint is {newest_checkpoint}" if newest_checkpoint else \
            "no checkpoint was written before it"
        raise Diverged(f"training diverged at step {step}: the loss or gradient norm is not finite (or the fp16 "
                       f"grad scaler skipped {MAX_SKIPPED_STEPS} steps in a row); nothing was saved from it, {kept}. "
                       "Lower optim.lr or raise optim.warmup_steps, then --resume or start again")
