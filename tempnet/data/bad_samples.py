"""The one bad-sample policy of the CLIP training sets: what a set does with a sample it cannot read.

`data.on_bad_sample`: "error" stops at the first bad sample with an error naming it; "skip" passes it by (a
map-style set serves the next good sample in its place, a stream drops it) and counts it. More than
`data.max_bad_fraction` of the data set bad is an error, and so is a set where nothing reads (a stream would
otherwise search for a good sample for ever). The count is of distinct samples, kept in shared memory by a
process and its loader workers, so a sample met again (a later epoch, a shard drawn again, two workers at
once) counts once.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch

from tempnet.errors import DataError

__all__ = ["MODES", "BadSample", "check_policy", "BadSamples"]

#: The values of data.on_bad_sample.
MODES = ("error", "skip")

T = TypeVar("T")


class BadSample(DataError):
    """A sample that is missing or cannot be decoded (found when it is read); the message names the file and
    the entry."""


def check_policy(mode: str, max_fraction: float) -> None:
    """data.on_bad_sample must be a mode and data.max_bad_fraction a fraction (ValueError otherwise)."""
    if mode not in MODES:
        raise ValueError(f"data.on_bad_sample must be 'error' or 'skip', got {mode!r}")
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"data.max_bad_fraction must lie in [0, 1], got {max_fraction}")


class BadSamples:
    """The policy of one data set and the distinct bad samples it met (by id: a bit per id, a count and a lock,
    in shared memory). `num_ids` sizes the ids; `data_size` (the samples the set holds) is what the fraction is
    of; `what` names them in the fraction error ("samples", "entries of train.json")."""

    def __init__(self, mode: str, num_ids: int, data_size: int, max_fraction: float, what: str = "samples"):
        check_policy(mode, max_fraction)
        self.mode, self.data_size, self.max_fraction, self.what = mode, int(data_size), float(max_fraction), what
        self.bits = torch.zeros((num_ids + 7) // 8, dtype=torch.uint8).share_memory_()
        self.count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.lock = multiprocessing.Lock()

    def __len__(self) -> int:
        return int(self.count)

    def __contains__(self, sid: int) -> bool:
        byte, bit = divmod(int(sid), 8)
        return bool(int(self.bits[byte]) >> bit & 1)

    def add(self, ids: int | Sequence[int], err: Exception | str) -> None:
        """Count `ids` as bad (each id once, ever); past the limit an error ending in `err` (the last found)."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids):
            byte, starts = np.unique(ids // 8, return_index=True)
            masks = np.bitwise_or.reduceat(np.left_shift(1, ids % 8).astype(np.uint8), starts)
            with self.lock:
                bits = self.bits.numpy()  # a view of the shared memory
                new = masks & ~bits[byte]
                bits[byte] |= masks
                self.count += int(np.unpackbits(new).sum())
        count = len(self)
        if count >= self.data_size:
            raise BadSample(f"none of the {self.data_size} {self.what} can be decoded; the last: {err}")
        if count > self.max_fraction * self.data_size:
            raise BadSample(f"{count} of {self.data_size} {self.what} are bad, more than data.max_bad_fraction="
                            f"{self.max_fraction:g}; the last: {err}")

    def found(self, sid: int, err: Exception, skip_does: str) -> None:
        """Sample `sid` failed with `err`: under "error" raise it, saying what "skip" would do; else count it."""
        if self.mode == "error":
            raise BadSample(f"{err} (data.on_bad_sample=skip {skip_does})") from None
        self.add(sid, err)

    def first_good(self, candidates: Iterable[tuple[int, Callable[[], T]]], where: str) -> T:
        """read() of the first (id, read) candidate not known bad whose read does not raise BadSample (the skip
        loop of a map-style set: the candidates are the sample and its replacements, in order)."""
        for sid, read in candidates:
            if sid in self:
                continue
            try:
                return read()
            except BadSample as err:
                self.found(sid, err, "replaces bad samples")
        raise BadSample(f"{where}: no sample can be decoded")
