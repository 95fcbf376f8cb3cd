"""Image-text pairs from webdataset shards (img2dataset's layout), with a stable id per sample.

    SHARD.tar:  KEY.jpg|jpeg|png|webp  KEY.txt  [KEY.json]   (one sample per KEY, in tar order)

The shards are described by a shard index (tempnet.data.shard_index: sample counts, key ranges, content
hash, the id of every sample). `ShardedPairs` reads a sample by (shard, offset) with wids' indexed tar reader
(mmap of the tar, random access to its members); `ShardWindowSampler` fixes which sample every step of every
rank sees (a seeded order of positions, resumable at any step without reading a byte of the skipped data)
and keeps those reads inside a window of a few shards at a time. The streaming mode without an exact order
is tempnet.data.shard_stream. Bad samples follow tempnet.data.bad_samples in both.
"""

from __future__ import annotations

from collections import OrderedDict
from io import BytesIO
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tempnet.data.bad_samples import BadSample, BadSamples
from tempnet.data.image_text import pre_caption, sample_seed, seeded_transform
from tempnet.data.sampler import GlobalBatchSampler
from tempnet.data.shard_index import (INDEX_FORMAT, ShardIndex, build_index, check_same_content, expand_shards,
                                      open_tar, read_index, write_index)
from tempnet.errors import UserError

__all__ = ["INDEX_FORMAT", "IMAGE_EXTENSIONS", "expand_shards", "build_index", "check_same_content", "write_index",
           "read_index", "ShardIndex", "decode_pair", "ShardedPairs", "ShardWindowSampler"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def decode_pair(sample: dict, where: str, max_words: int) -> tuple[Image.Image, str]:
    """(RGB image, cleaned caption) of one webdataset sample dict {ext: bytes or stream}; a bad one raises
    BadSample naming `where`."""
    sample = {k.lstrip("."): v for k, v in sample.items()}  # wids keeps the dot of ".png"
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None or "txt" not in sample:
        raise BadSample(f"{where}: needs an image ({'|'.join(IMAGE_EXTENSIONS)}) and a .txt caption, "
                         f"has {sorted(k for k in sample if not k.startswith('__'))}")
    data, text = sample[ext], sample["txt"]
    data = data.read() if hasattr(data, "read") else data
    text = text.read() if hasattr(text, "read") else text
    try:
        with Image.open(BytesIO(data)) as img:
            image = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise BadSample(f"{where}: cannot decode its .{ext} image: {err}") from err
    caption = pre_caption(text.decode("utf-8", errors="replace"), max_words)
    if not caption:
        raise BadSample(f"{where}: empty caption")
    return image, caption


class ShardedPairs(Dataset):
    """Map-style pairs over the index: item p (a global position) -> (image [3, H, W], caption, id, id).

    image_id = text_id = the sample's id (img2dataset: one caption per image). The transform of item p in
    epoch e is seeded by (seed, e, id), as ImageTextPairs. A sample that cannot be decoded raises an error
    naming shard and key (on_bad_sample="error"), or is replaced by the next good sample of its shard
    (on_bad_sample="skip", the same replacement every time); more than max_bad_fraction of the data set
    bad (distinct samples, counted by this process and its workers: tempnet.data.bad_samples) is an error. Open shards
    are kept in a small LRU per worker.
    """

    def __init__(self, index: ShardIndex, transform: Callable, max_words: int = 30, seed: int = 0,
                 on_bad_sample: str = "error", max_bad_fraction: float = 0.01, open_shards: int = 64):
        self.index, self.transform, self.max_words, self.seed, self.epoch = index, transform, max_words, seed, 0
        self.open_shards, self._tars = open_shards, OrderedDict()
        self.bad = BadSamples(on_bad_sample, index.num_samples, index.num_positions, max_bad_fraction)

    def num_bad(self) -> int:
        """Distinct bad samples met so far (by this process and its loader workers)."""
        return len(self.bad)

    def __len__(self) -> int:
        return self.index.num_positions

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getstate__(self):  # worker processes open their own shards
        return {**self.__dict__, "_tars": OrderedDict()}

    def _tar(self, shard: int):
        tar = self._tars.pop(shard, None) or open_tar(self.index.urls[shard])
        self._tars[shard] = tar
        while len(self._tars) > self.open_shards:
            self._tars.popitem(last=False)[1].close()
        return tar

    def read(self, position: int) -> tuple[Image.Image, str, int]:
        """(image, caption, id) of a global position, before the transform; bad samples per on_bad_sample."""
        shard, offset = self.index.locate(position)
        tar, n = self._tar(shard), int(self.index.counts[shard])
        if len(tar) != n:
            raise UserError(f"shard {self.index.urls[shard]} holds {len(tar)} samples, the index says {n}: "
                            "rerun scripts/index_shards.py")
        def candidate(at: int):
            sample = tar[at]
            key = sample["__key__"].split("/")[-1]
            sid, where = self.index.sample_id(shard, at, key), f"shard {self.index.urls[shard]}, key {key!r}"
            return sid, lambda: (*decode_pair(sample, where, self.max_words), sid)

        return self.bad.first_good((candidate((offset + k) % n) for k in range(n)), f"shard {self.index.urls[shard]}")

    def __getitem__(self, position: int):
        image, caption, sid = self.read(int(position))
        image = seeded_transform(self.transform, image, sample_seed(self.seed, self.epoch, sid))
        return image, caption, sid, sid


class ShardWindowSampler(GlobalBatchSampler):
    """GlobalBatchSampler's contract (global batches independent of the world size, `set_epoch(epoch,
    start_step)`, the last incomplete global batch dropped) over shard-local windows of positions.

    Each epoch permutes the shards (seeded by seed, epoch), cuts them into windows of `window` shards and
    permutes the positions inside each window (seeded by seed, epoch, window number): the reads of a
    stretch of steps fall inside `window` shards, and the order is generated one window at a time (memory
    O(window x shard size), not O(N)). window=0 is one window of every shard: a full permutation.
    """

    def __init__(self, counts, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 window: int = 32):
        self.counts = np.asarray(counts, dtype=np.int64)
        super().__init__(int(self.counts.sum()), batch_size, world_size, rank, seed)
        self.window = int(window) if window > 0 else len(self.counts)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        super().set_epoch(epoch, start_step)
        self.epoch, self.start_step = int(epoch), int(start_step)

    def _windows(self, first_position: int):
        """(offset into the first yielded window, then each window's permuted positions) from first_position on."""
        shards = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.counts))
        done = 0
        for w in range(0, len(shards), self.window):
            members = shards[w:w + self.window]
            size = int(self.counts[members].sum())
            if done + size <= first_position:  # skipped on resume without generating it
                done += size
                continue
            positions = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in members])
            rng = np.random.default_rng([self.seed, self.epoch, w // self.window])
            yield max(0, first_position - done), rng.permutation(positions)
            done += size

    def __iter__(self):
        g, b = self.global_batch, self.batch_size
        pending = np.empty(0, dtype=np.int64)
        step = self.start_step
        for skip, positions in self._windows(self.start_step * g):
            pending = np.concatenate([pending, positions[skip:]])
            while len(pending) >= g and step < self.steps_per_epoch:
                yield pending[self.rank * b:(self.rank + 1) * b].tolist()
                pending, step = pending[g:], step + 1
            if step >= self.steps_per_epoch:
                return
