"""The CLIP trainer's training data, one interface for both formats (data.format: json | webdataset).

    data = build_train_data(cfg, rank, world, device, tokenizer, out); data.write_files()  # after resume checks
    data.set_epoch(epoch, step_in_epoch); for batch in data.loader: ...
    trainer_state = {**pos, **data.state()}; data.check_state(trainer_state, path)  # on resume

json: ImageTextPairs + GlobalBatchSampler (captions tokenised in the step, as before). webdataset: rank 0
scans the shards (data.train_shards, else the files data.train_index lists) and hands the index to the other
ranks; with data.train_index the scan must match it shard by shard. Then ShardedPairs + ShardWindowSampler
(exact order and resume), or with data.resampled the ResampledShardStream; decoding, transforms and caption
tokenisation run in the loader's workers. The index's hash (of the shards' content, not their paths) goes
into every checkpoint's trainer_state.json and a resume on other content is refused; the same shards in
another folder resume. Nothing is written before the resume checks pass (`TrainData.write_files`).
Also here: the start-of-run check of the data and eval paths (`check_inputs`) and the synthetic set
(`use_synthetic_data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from tempnet import distributed as tdist
from tempnet.data.image_text import ImageTextPairs
from tempnet.data.image_transforms import train_transform
from tempnet.data.sampler import GlobalBatchSampler
from tempnet.data.shard_stream import ResampledShardStream
from tempnet.data.synthetic_image_text import make_synthetic_image_text
from tempnet.data.shards import (ShardedPairs, ShardIndex, ShardWindowSampler, build_index, check_same_content,
                                  read_index, write_index)
from tempnet.config import derive
from tempnet.errors import USER_ERRORS, ConfigError, UserError
from tempnet.train.clip_config import RetrievalSetConfig, ZeroShotSetConfig
from tempnet.train.signals import loader_worker_init

__all__ = ["TrainData", "build_train_data", "TokenizingCollate"]


@dataclass
class TrainData:
    loader: object
    """Iterated once per epoch: (images, captions or (token ids, mask), image_ids, text_ids) local batches."""
    num_samples: int
    """Size of the per-sample state (one slot per sample id)."""
    steps_per_epoch: int
    """Optimisation steps per epoch."""
    epoch_setters: list = field(default_factory=list)
    """Objects with set_epoch(epoch) or set_epoch(epoch, start_step)."""
    identity: dict = field(default_factory=dict)
    """What a checkpoint records about the data and a resume must find unchanged (the shard list hash)."""
    index: dict | None = None
    """The shard index built at start (written to OUTPUT_DIR/shard_index.json by `write_files`)."""
    out: Path | None = None
    """OUTPUT_DIR."""

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        for obj, takes_step in self.epoch_setters:
            obj.set_epoch(epoch, start_step) if takes_step else obj.set_epoch(epoch)

    def state(self) -> dict:
        return dict(self.identity)

    def write_files(self) -> None:
        """(rank 0, once the resume checks passed) OUTPUT_DIR/shard_index.json: the shards this run reads."""
        if self.index is not None:
            write_index(self.index, Path(self.out) / "shard_index.json")

    def check_state(self, stored: dict, path) -> None:
        """Refuse a resume whose data differ from the checkpoint's."""
        for key, value in self.identity.items():
            if stored.get(key) != value:
                raise UserError(f"{path} was trained on other data: its {key} is {stored.get(key)!r}, this run's "
                                f"is {value!r} (shards added, removed or rewritten cannot resume; start a new run)")


class TokenizingCollate:
    """Local batch in a loader worker: (images [B, 3, H, W], (token ids, mask), image_ids [B], text_ids [B])."""

    def __init__(self, tokenizer: Callable):
        self.tokenizer = tokenizer

    def __call__(self, items):
        images, captions, image_ids, text_ids = zip(*items)
        return (torch.stack(images), tuple(self.tokenizer(list(captions))), torch.tensor(image_ids),
                torch.tensor(text_ids))


def _scan_shards(d) -> dict:
    """The index of the shards this run reads; with data.train_index they must hold what it lists."""
    if not d.train_index:
        return build_index(d.train_shards)
    index = read_index(d.train_index)
    found = build_index(d.train_shards or [s["url"] for s in index["shardlist"]])
    check_same_content(index, found, f"data.train_index {d.train_index}")
    return found


def _shard_index(cfg) -> dict:
    """Rank 0 scans the shards (a user error there is raised on every rank) and broadcasts the index."""
    d = cfg.data
    if not d.train_shards and not d.train_index:
        raise ConfigError("data.format=webdataset needs data.train_shards (a brace pattern) or data.train_index")
    outcome = None
    if tdist.is_main_process():
        try:
            outcome = (True, _scan_shards(d))
        except USER_ERRORS as err:
            outcome = (False, err)
    ok, value = tdist.broadcast_object(outcome)
    if not ok:
        raise value
    return value


def build_train_data(cfg, rank: int, world: int, device: torch.device, tokenizer: Callable, out: Path) -> TrainData:
    """The training data of cfg.data for this rank (see the module docstring)."""
    d, t = cfg.data, cfg.train
    transform = train_transform(cfg.model.image_size, d.augment, randaugment_ops=d.randaugment_ops,
                                randaugment_magnitude=d.randaugment_magnitude)
    pin = device.type == "cuda"
    on_bad, max_bad = d.on_bad_sample, d.max_bad_fraction
    if d.format == "json":
        if not d.train_json:
            raise ConfigError("data.train_json is empty: give the training pairs (or data.synthetic=true)")
        dataset = ImageTextPairs(d.train_json, d.image_root, transform, d.max_words, seed=t.seed,
                                 on_bad_sample=on_bad, max_bad_fraction=max_bad)
        sampler = GlobalBatchSampler(len(dataset), t.batch_size, world, rank, seed=t.seed)
        # an own generator: creating the loader's iterator must not draw from the global RNG (exact resume)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d.num_workers, pin_memory=pin,
                            worker_init_fn=loader_worker_init, generator=torch.Generator().manual_seed(t.seed))
        return TrainData(loader, len(dataset), sampler.steps_per_epoch, [(dataset, False), (sampler, True)])
    built = _shard_index(cfg)
    index = ShardIndex(built, d.sample_ids)
    identity = {"shard_list_hash": index.hash, "num_samples": index.num_samples}
    collate = TokenizingCollate(tokenizer)
    if d.resampled:
        steps = index.num_positions // (t.batch_size * world)
        if steps < 1:
            raise UserError(f"the shards hold {index.num_positions} samples, fewer than one global batch")
        stream = ResampledShardStream(index, transform, collate, t.batch_size, steps, rank, t.seed, d.max_words,
                                      d.shuffle_buffer, on_bad, max_bad)
        loader = DataLoader(stream, batch_size=None, num_workers=d.num_workers, pin_memory=pin,
                            worker_init_fn=loader_worker_init)
        return TrainData(loader, index.num_samples, steps, [(stream, True)], identity, built, out)
    # a worker keeps the window's shards open (window 0: up to 256, then reads may reopen a shard's index)
    open_shards = max(8, d.shard_window) if d.shard_window else min(len(index.urls), 256)
    dataset = ShardedPairs(index, transform, d.max_words, t.seed, on_bad, max_bad, open_shards=open_shards)
    sampler = ShardWindowSampler(index.counts, t.batch_size, world, rank, t.seed, d.shard_window)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d.num_workers, pin_memory=pin, collate_fn=collate,
                        worker_init_fn=loader_worker_init, generator=torch.Generator().manual_seed(t.seed))
    return TrainData(loader, index.num_samples, sampler.steps_per_epoch, [(dataset, False), (sampler, True)],
                     identity, built, out)


def check_inputs(cfg) -> None:
    """Every input path that can be checked before a run starts (and before --overwrite removes anything)."""
    if cfg.data.synthetic:
        return
    d = cfg.data
    if d.format == "json" and not d.train_json:
        raise ConfigError("data.train_json is empty: give the training pairs (or data.synthetic=true)")
    if d.format == "json":
        paths = [("data.train_json", d.train_json), ("data.image_root", d.image_root)]
    else:  # the shards are opened (and a missing one named) when they are indexed
        paths = [("data.train_index", d.train_index)]
    paths += [(f"eval.retrieval {s.name} json", s.json) for s in cfg.eval.retrieval]
    paths += [(f"eval.retrieval {s.name} image_root", s.image_root) for s in cfg.eval.retrieval]
    paths += [(f"eval.zeroshot {z.name} root", z.root) for z in cfg.eval.zeroshot if z.kind == "folder"]
    for what, path in paths:
        if path and not Path(path).exists():
            kind = "directory" if what.endswith(("image_root", "root")) else "file"
            raise FileNotFoundError(f"{what}: no such {kind}: {path}")


def use_synthetic_data(cfg, out: Path):
    """Generate the synthetic set (rank 0, others wait); returns the run's config: `cfg` with training and
    evaluation pointed at the set (`cfg` itself is not changed)."""
    root = Path(out) / "synthetic_data"
    if tdist.is_main_process():
        make_synthetic_image_text(root, num_train=cfg.data.synthetic_pairs)
    tdist.barrier()
    retrieval = RetrievalSetConfig("synthetic", str(root / "retrieval.json"), str(root))
    zeroshot = ZeroShotSetConfig("synthetic", "folder", str(root / "zeroshot"))
    return derive(cfg, {"data": {"train_json": str(root / "train.json"), "image_root": str(root)},
                        "eval": {"retrieval": [retrieval], "zeroshot": [zeroshot]}})
