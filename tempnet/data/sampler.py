"""The one batch sampler of both trainers: the global batch of a step does not depend on the number of ranks.

The data order is a pure function of (seed, step). Positions 0, 1, 2, ... run through seeded per-epoch
permutations (epoch e: `torch.randperm(N)` seeded with `seed + e`); the global batch of step s is the
positions [s * G, (s + 1) * G) with G = world_size x accum x batch_size, split rank-major: rank r takes the
r-th contiguous share, as `accum` micro-batches of `batch_size`. So 1 process with A micro-batches sees the
same examples per step as A processes with one each, the gathered global batch of the contrastive losses
(and the prototype initialisation from "the first batch") is the same for 1 process or 8, and resuming
needs only the step number.

Two ways to meet the end of the data:
  aligned=True   (CLIP) an epoch is `N // G` whole global batches; the rest of its permutation is dropped.
  aligned=False  (LLM) the stream runs on into the next epoch's permutation: no example is dropped.
The LLM order is the one its former `StepBatchSampler` produced; CLIP's per-epoch seed was `seed * 100003
+ epoch` before the samplers were unified and is `seed + epoch` now (a different, equally random order).
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler", "StepBatchSampler"]


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's micro-batches (lists of dataset indices) for the steps of its current range.

    Args:
        num_samples: dataset size.
        batch_size: examples per micro-batch (per rank).
        world_size, rank: how the global batch is split.
        seed: base seed of the per-epoch permutations.
        shuffle: permute each epoch (else dataset order).
        accum: micro-batches per rank per optimizer step.
        aligned: epochs of whole global batches (see the module docstring).

    The range is epoch 0 to start with; `set_epoch(epoch, start_step)` (aligned) or
    `set_steps(start, stop)` (global step numbers) select another.
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, accum: int = 1, aligned: bool = True):
        if batch_size < 1 or world_size < 1 or accum < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, world_size={world_size}, "
                             f"rank={rank}, accum={accum}")
        if num_samples < 1:
            raise ValueError("the training data is empty")
        self.global_batch = batch_size * accum * world_size
        if aligned and num_samples < self.global_batch:
            raise ValueError(f"the data set has {num_samples} samples, fewer than one global batch of "
                             f"{self.global_batch} ({world_size} ranks x {accum * batch_size})")
        self.num_samples, self.batch_size, self.world, self.rank = num_samples, batch_size, world_size, rank
        self.seed, self.shuffle, self.accum, self.aligned = int(seed), shuffle, accum, aligned
        self._perm: tuple[int, torch.Tensor] | None = None
        self.start, self.stop = 0, self.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """Whole global batches in one epoch of the data."""
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """(aligned) The steps of `epoch`, skipping its first `start_step`."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        first = int(epoch) * self.steps_per_epoch
        self.set_steps(first + int(start_step), first + self.steps_per_epoch)

    def set_steps(self, start: int, stop: int) -> None:
        """Global steps start .. stop - 1 (0-based: step s is the optimizer step s + 1)."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad step range [{start}, {stop})")
        self.start, self.stop = int(start), int(stop)

    def __len__(self) -> int:
        """Micro-batches of the current range."""
        return (self.stop - self.start) * self.accum

    def _index(self, position: int) -> int:
        length = self.steps_per_epoch * self.global_batch if self.aligned else self.num_samples
        epoch, offset = divmod(position, length)
        if not self.shuffle:
            return offset
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = (epoch, torch.randperm(self.num_samples, generator=g))
        return int(self._perm[1][offset])

    def __iter__(self):
        share = self.batch_size * self.accum
        for step in range(self.start, self.stop):
            base = step * self.global_batch + self.rank * share
            for k in range(self.accum):
                first = base + k * self.batch_size
                yield [self._index(p) for p in range(first, first + self.batch_size)]


def StepBatchSampler(num_examples: int, micro_batch: int, accum: int, world_size: int, rank: int, seed: int,
                     start_step: int, max_steps: int) -> GlobalBatchSampler:
    """The LLM trainer's sampler: micro-batches of optimizer steps start_step+1 .. max_steps, no example dropped."""
    sampler = GlobalBatchSampler(num_examples, micro_batch, world_size, rank, seed, accum=accum, aligned=False)
    sampler.set_steps(start_step, max_steps)
    return sampler
