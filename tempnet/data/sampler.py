"""A resumable batch sampler whose global batch does not depend on the number of ranks.

Each epoch draws one permutation of the dataset (seeded by seed and epoch) and cuts it into
global batches of `world_size * batch_size` indices; rank r takes the r-th contiguous slice.
The gathered global batch is then the same, in the same order, for 1 process or 8, which the
global contrastive losses (and the prototype initialisation from "the first batch") rely on.
`set_epoch(epoch, start_step)` skips the batches a resumed run has already trained on.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler"]


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's local batches (lists of dataset indices); the last incomplete global batch is dropped.

    Args:
        num_samples: dataset size.
        batch_size: per-rank batch size.
        world_size, rank: how the global batch is split.
        seed: base seed of the per-epoch permutations.
        shuffle: permute each epoch (else dataset order).
    """

    def __init__(self, num_samples: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, world_size={world_size}, rank={rank}")
        self.global_batch = batch_size * world_size
        if num_samples < self.global_batch:
            raise ValueError(f"the data set has {num_samples} samples, fewer than one global batch of "
                             f"{self.global_batch} ({world_size} ranks x {batch_size})")
        self.num_samples, self.batch_size, self.rank = num_samples, batch_size, rank
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's permutation and skip its first `start_step` batches."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step {start_step} outside [0, {len(self)}]")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def __len__(self) -> int:
        """Batches per epoch (the full count, whatever start_step is)."""
        return self.num_samples // self.global_batch

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        for step in range(self.start_step, len(self)):
            start = step * self.global_batch + self.rank * self.batch_size
            yield order[start:start + self.batch_size]
