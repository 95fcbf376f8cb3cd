"""Per-sample state of the global contrastive losses: the moving averages of SogCLR / iSogCLR / the robust
loss (CompositionalState), where it is stored (device memory, or host memory with only the batch's rows
moved per step), and the schedule of their rate gamma.

Sizes: CompositionalState keeps 9 bytes per sample (s, b float32, seen bool); SogCLR and the robust loss
keep two (image, text: 18 B / sample), iSogCLR also a temperature and a momentum per sample and modality
(34 B / sample). Every step reads and writes only the batch's rows, so its cost does not grow with N.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tempnet import checks

__all__ = ["CompositionalState", "PerSampleBuffers", "rows_at", "put_rows", "cosine_gamma", "set_gamma",
           "state_bytes_per_sample"]


def rows_at(buf: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """buf[ids] on ids' device; a host-memory buffer is indexed on the host and only the B rows cross."""
    if buf.device == ids.device:
        return buf[ids]
    return buf[ids.cpu()].to(ids.device, non_blocking=True)


def put_rows(buf: torch.Tensor, ids: torch.Tensor, values: torch.Tensor) -> None:
    """buf[ids] = values, for a buffer on ids' device or in host memory."""
    if buf.device == ids.device:
        buf[ids] = values.to(buf.dtype)
    else:
        buf[ids.cpu()] = values.to("cpu", buf.dtype)


class PerSampleBuffers(nn.Module):
    """A module whose per-sample buffers may live in host memory (on_host=True): `.to(device)` leaves them
    there (pinned when CUDA is present) and each step moves only the batch's rows, so a state of 4e8 samples
    costs the GPU nothing. Also checkpointed with state_dict as usual."""

    on_host: bool = False

    def _per_sample(self, name: str, value: torch.Tensor) -> None:
        if self.on_host and torch.cuda.is_available():
            value = value.pin_memory()
        self.register_buffer(name, value)

    def _apply(self, fn, recurse=True):
        return self if self.on_host else super()._apply(fn, recurse)


class CompositionalState(PerSampleBuffers):
    """Per-dataset-index moving averages s and running maxima b (stochastic compositional optimisation).

    For a batch of anchors with row maxima m_i = max_{j != i} A_ij and inner sums
    g_i = sum_{j != i} exp(A_ij - b_i) (A detached):
        running_max(ids, m): b_i = max(b_old_i, m_i), or m_i on the index's first visit
        update(ids, b, g):   s_i = g_i on the first visit, else (1 - gamma) * s_old_i * exp(b_old_i - b_i) + gamma * g_i
    update stores s, b and marks the ids seen. The state lives in buffers, so it is checkpointed and moved by
    .to() (on_host=True: kept in host memory, see PerSampleBuffers). 9 bytes per sample (s, b float32, seen).
    """

    def __init__(self, num_samples: int, gamma: float, on_host: bool = False):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
        self.num_samples, self.gamma, self.on_host = num_samples, float(gamma), bool(on_host)
        self._per_sample("s", torch.zeros(num_samples))
        self._per_sample("b", torch.zeros(num_samples))
        self._per_sample("seen", torch.zeros(num_samples, dtype=torch.bool))

    def check_ids(self, ids: torch.Tensor) -> None:
        """ids must be [B] (always checked) and inside [0, num_samples) (checked when tempnet.checks is on)."""
        if ids.dim() != 1:
            raise ValueError(f"dataset ids must be [B], got shape {tuple(ids.shape)}")
        if not checks.enabled():
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_samples:
            bad = low if low < 0 else high
            raise IndexError(f"dataset id {bad} is outside the per-sample state [0, {self.num_samples})")

    @torch.no_grad()
    def running_max(self, ids: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
        """b [B] for the batch, in row_max's dtype (not stored until update)."""
        b_old = rows_at(self.b, ids).to(row_max.dtype)
        return torch.where(rows_at(self.seen, ids), torch.maximum(b_old, row_max), row_max)

    @torch.no_grad()
    def update(self, ids: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Move s towards g (both relative to b), store s and b; returns s [B] in g's dtype."""
        seen, b_old, s_old = rows_at(self.seen, ids), rows_at(self.b, ids).to(g.dtype), rows_at(self.s, ids).to(g.dtype)
        s = torch.where(seen, (1 - self.gamma) * s_old * torch.exp(b_old - b) + self.gamma * g, g)
        put_rows(self.s, ids, s)
        put_rows(self.b, ids, b)
        put_rows(self.seen, ids, torch.ones_like(seen))
        return s


def cosine_gamma(gamma: float, epoch: int, decay_epochs: int) -> float:
    """The moving-average rate of epoch `epoch` under a cosine schedule from 1 (epoch 0: the averages are the
    batch values) down to `gamma` at `decay_epochs`, and `gamma` after (FastCLIP's gamma schedule)."""
    if decay_epochs <= 0 or epoch >= decay_epochs:
        return float(gamma)
    return float(gamma + (1 - gamma) * 0.5 * (1 + math.cos(math.pi * epoch / decay_epochs)))


def set_gamma(loss: nn.Module, gamma: float) -> None:
    """Set the moving-average rate of every CompositionalState inside `loss`."""
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    for module in loss.modules():
        if isinstance(module, CompositionalState):
            module.gamma = float(gamma)


def state_bytes_per_sample(loss: nn.Module) -> int:
    """Bytes of per-sample state a loss keeps for one sample (every buffer with one row per sample)."""
    sizes = [m.num_samples for m in loss.modules() if isinstance(m, CompositionalState)]
    if not sizes:
        return 0
    return sum(b.element_size() * b[0].numel() for b in loss.buffers() if b.dim() >= 1 and b.shape[0] == sizes[0])
