"""Streaming pairs from webdataset shards drawn with replacement (open_clip's --dataset-resampled).

Each loader worker draws shards with replacement from a generator seeded by (seed, epoch, start step,
rank, worker), reads each drawn tar sequentially (webdataset's tar iterator: no random reads, any URL
webdataset opens), mixes the raw samples in a seeded shuffle buffer, then decodes and yields ready local
batches. The ids are the index's (tempnet.data.shards.ShardIndex: shard start + offset in the shard, or the key), so
the per-sample state stays one slot per sample: a sample first drawn late in training still finds
`seen` false and its moving averages start from its own first value.

Resume guarantee: the step count, the schedules, the model, optimizers and per-sample state continue
exactly; the sample stream after a resume is a fresh seeded draw (seeded by the resume step, so it
repeats neither the interrupted stream nor another resume's), not the stream the uninterrupted run would
have read.
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tempnet.data.bad_samples import BadSample, BadSamples
from tempnet.data.shards import ShardIndex, decode_pair

__all__ = ["ResampledShardStream"]


class ResampledShardStream(IterableDataset):
    """Yields `num_batches - start_step` local batches per epoch, built by `collate` from
    (image [3, H, W], caption, id, id) items; split round-robin over the loader's workers, so the
    DataLoader (batch_size=None) returns them in step order."""

    def __init__(self, index: ShardIndex, transform: Callable, collate: Callable, batch_size: int,
                 num_batches: int, rank: int = 0, seed: int = 0, max_words: int = 30, shuffle_buffer: int = 2000,
                 on_bad_sample: str = "error", max_bad_fraction: float = 0.01):
        self.index, self.transform, self.collate, self.batch_size = index, transform, collate, batch_size
        self.num_batches, self.rank, self.seed, self.max_words = num_batches, rank, seed, max_words
        self.shuffle_buffer, self.epoch, self.start_step = shuffle_buffer, 0, 0
        self.bad = BadSamples(on_bad_sample, index.num_samples, index.num_positions, max_bad_fraction)

    def num_bad(self) -> int:
        """Distinct bad samples dropped so far (by this process and its loader workers)."""
        return len(self.bad)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = int(epoch), int(start_step)

    def _samples(self, rng: np.random.Generator):
        """(raw sample, where, id) of shards drawn with replacement, each tar read in order (nothing decoded yet)."""
        import webdataset as wds

        while True:
            shard = int(rng.integers(len(self.index.urls)))
            url = self.index.urls[shard]
            for offset, sample in enumerate(wds.tariterators.tarfile_samples([{"url": url}])):
                key = sample["__key__"].split("/")[-1]
                yield sample, f"shard {url}, key {key!r}", self.index.sample_id(shard, offset, key)

    def _decoded(self, stream):
        """(image, caption, id) of the shuffled raw samples; bad ones raise or are dropped (on_bad_sample)."""
        for sample, where, sid in stream:
            try:
                image, caption = decode_pair(sample, where, self.max_words)
            except BadSample as err:
                self.bad.found(sid, err, "drops bad samples")  # past max_bad_fraction, or all of them: an error
                continue
            yield image, caption, sid

    def __iter__(self):
        import webdataset.filters as wf

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = range(self.start_step + worker, self.num_batches, workers)
        if not len(mine):
            return
        seed = [self.seed, self.epoch, self.start_step, self.rank, worker]
        rng = np.random.default_rng(seed)
        mix = random.Random(int(rng.integers(2 ** 62)))
        # the buffer holds raw samples (bytes), as open_clip's: decoding happens after it, once per sample
        stream = self._decoded(wf._shuffle(self._samples(rng), bufsize=self.shuffle_buffer,
                                           initial=self.shuffle_buffer // 2, rng=mix))
        torch.manual_seed(int(rng.integers(2 ** 62)))  # this worker's augmentation stream
        for _ in mine:
            items = []
            for image, caption, sid in stream:
                items.append((self.transform(image), caption, sid, sid))
                if len(items) == self.batch_size:
                    break
            yield self.collate(items)
