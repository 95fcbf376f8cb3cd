"""Images per second of our webdataset loaders against open_clip's (open_clip_train.data.get_wds_dataset) on the
same shards, workers, batch size, image transform and tokenizer; and the raw read cost of the access patterns.

Loaders (each yields batches of decoded, transformed images and tokenised captions, built in its workers):
  open_clip       get_wds_dataset: shard shuffle, split by worker, sequential tar reads, sample shuffle buffer
  ours_indexed    ShardedPairs + ShardWindowSampler (data.format=webdataset): the exact, resumable order,
                  random member reads (wids' indexed tar) inside a window of shards
  ours_resampled  ResampledShardStream (data.resampled=true): sequential tar reads, shuffle buffer
open_clip 3.3 with webdataset 1.0 needs one patch here (see build_loaders: the end-of-shard marker).
Read cost (bytes only, no decoding): every member of the shards read with wids' indexed reader in tar order
and in a random order, and with webdataset's streaming tar iterator. The variants take turns within each
round, in an order rotated every round; reported: the median images/s and the median ratio to open_clip.

    python scripts/bench_clip_data.py --make 4096 --workers 4 --batch 128 --batches 24 --repeats 3 --json OUT.json
    python scripts/bench_clip_data.py --shards "/data/cc12m/{00000..00015}.tar" --workers 8 ...
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader

REFERENCE = "open_clip"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="a brace pattern of existing shards")
    p.add_argument("--make", type=int, default=0, help="write this many synthetic JPEG pairs as shards instead")
    p.add_argument("--per-shard", type=int, default=256, help="--make: samples per shard")
    p.add_argument("--source-size", type=int, default=256, help="--make: side of the written JPEGs")
    p.add_argument("--image-size", type=int, default=224, help="the transform's output side")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=10, help="batches timed per loader and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds")
    p.add_argument("--window", type=int, default=8, help="ours_indexed: data.shard_window")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if bool(args.shards) == bool(args.make):
        p.error("give --shards PATTERN or --make N")
    if args.workers < 1 or args.batch < 1 or args.batches < 1 or args.repeats < 1:
        p.error("need --workers, --batch, --batches, --repeats >= 1")
    return args


def make_shards(root: Path, num: int, per_shard: int, side: int) -> str:
    """Synthetic img2dataset-style shards (JPEG + txt + json) with webdataset's ShardWriter."""
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(str(root / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(num):
            pixels = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).resize((side, side)).save(buf, format="JPEG", quality=90)
            sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": f"a picture number {i}",
                        "json": json.dumps({"key": i})})
    last = (num - 1) // per_shard
    return str(root / f"{{00000..{last:05d}}}.tar")


def build_loaders(args, pattern: str, index) -> dict:
    """{name: () -> an iterable of batches}, each fresh per round (workers start inside the timing)."""
    import functools

    import open_clip
    import open_clip_train.data as oc_data
    from webdataset.tariterators import tar_file_expander

    # webdataset 1.0 ends each shard with an {} marker that open_clip 3.3's group_by_keys_nothrow cannot read
    # (KeyError 'fname'); without the marker its loader is the one open_clip ships.
    oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    get_wds_dataset = oc_data.get_wds_dataset

    from tempnet.data.image_transforms import train_transform
    from tempnet.data.shard_stream import ResampledShardStream
    from tempnet.data.shards import ShardedPairs, ShardWindowSampler
    from tempnet.train.clip_data import TokenizingCollate
    from tempnet.train.clip_model import TextTokenizer

    transform = train_transform(args.image_size)
    oc_tokenizer = open_clip.get_tokenizer("ViT-B-32")
    collate = TokenizingCollate(TextTokenizer("open_clip", "", 77))
    n = args.batch * (args.batches + 1) * args.workers  # the first batch and the timed ones, in every worker

    def open_clip_loader():
        ns = SimpleNamespace(train_data=pattern, train_num_samples=n, dataset_resampled=False, seed=0,
                             train_data_upsampling_factors=None, batch_size=args.batch, world_size=1,
                             workers=args.workers)
        return get_wds_dataset(ns, transform, is_train=True, tokenizer=oc_tokenizer).dataloader

    def indexed_loader():
        sampler = ShardWindowSampler(index.counts, args.batch, seed=0, window=args.window)
        return DataLoader(ShardedPairs(index, transform), batch_sampler=sampler, num_workers=args.workers,
                          collate_fn=collate)

    def resampled_loader():
        stream = ResampledShardStream(index, transform, collate, args.batch, args.batches + 1, shuffle_buffer=1000)
        return DataLoader(stream, batch_size=None, num_workers=args.workers)

    return {REFERENCE: open_clip_loader, "ours_indexed": indexed_loader, "ours_resampled": resampled_loader}


def time_loader(make, batches: int) -> tuple[float, float]:
    """(images/s over `batches` batches after the first, seconds to the first batch)."""
    tic = time.perf_counter()
    it = iter(make())
    first = next(it)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        batch = next(it)
        images += len(batch[0])
    assert len(first[0]) > 0
    return images / (time.perf_counter() - start), start - tic


def read_cost(index) -> dict:
    """MB/s reading every member's bytes (no decoding) with wids' indexed reader, in tar order (sequential) and in
    a random order of positions, and with webdataset's streaming tar iterator (what open_clip reads with)."""
    import webdataset as wds
    from wids.wids import IndexedTarSamples

    def through(order) -> float:
        tars = [IndexedTarSamples(path=u) for u in index.urls]
        tic, total = time.perf_counter(), 0
        for p in order:
            shard, offset = index.locate(int(p))
            total += sum(len(v.getvalue()) for k, v in tars[shard][offset].items() if not k.startswith("__"))
        seconds = time.perf_counter() - tic
        for t in tars:
            t.close()
        return total / 1e6 / seconds

    sequential = through(range(index.num_positions))
    random_ = through(np.random.default_rng(0).permutation(index.num_positions))
    tic, total = time.perf_counter(), 0
    for url in index.urls:
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            total += sum(len(v) for k, v in sample.items() if not k.startswith("__") and isinstance(v, bytes))
    streamed = total / 1e6 / (time.perf_counter() - tic)
    return {"sequential_mb_s": sequential, "random_mb_s": random_, "random_over_sequential": random_ / sequential,
            "webdataset_stream_mb_s": streamed}


def run(args) -> dict:
    from tempnet.data.shards import ShardIndex, build_index

    with tempfile.TemporaryDirectory() as tmp:
        pattern = args.shards or make_shards(Path(tmp) / "shards", args.make, args.per_shard, args.source_size)
        index = ShardIndex(build_index(pattern))
        loaders = build_loaders(args, pattern, index)
        names = list(loaders)
        rates, startup = {k: [] for k in names}, {k: [] for k in names}
        for round_ in range(args.repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                rate, first = time_loader(loaders[name], args.batches)
                rates[name].append(rate)
                startup[name].append(first)
        cost = read_cost(index)
    ref = rates[REFERENCE]
    results = {k: {"images_per_s": statistics.median(v), "ratio": statistics.median(a / b for a, b in zip(v, ref)),
                   "first_batch_s": statistics.median(startup[k])} for k, v in rates.items()}
    return {"config": {"shards": args.shards or f"--make {args.make}", "num_shards": len(index.urls),
                       "samples": index.num_positions, "workers": args.workers, "batch": args.batch,
                       "batches": args.batches, "repeats": args.repeats, "image_size": args.image_size,
                       "window": args.window, "threads": torch.get_num_threads()},
            "reference": REFERENCE, "results": results, "read_cost": cost}


def markdown(report: dict) -> str:
    c, r = report["config"], report["read_cost"]
    lines = [f"{c['samples']} samples in {c['num_shards']} shards, {c['workers']} workers, batch {c['batch']}, "
             f"{c['image_size']}px, median of {c['repeats']} rounds", "",
             "| loader | images/s | x open_clip | first batch s |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['images_per_s']:.1f} | {v['ratio']:.2f} | {v['first_batch_s']:.2f} |"
              for k, v in report["results"].items()]
    lines += ["", f"raw reads (wids, page cache warm): tar order {r['sequential_mb_s']:.0f} MB/s, random order "
                  f"{r['random_mb_s']:.0f} MB/s ({r['random_over_sequential']:.2f}x); webdataset's streaming tar "
                  f"iterator {r['webdataset_stream_mb_s']:.0f} MB/s"]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    report = run(args)
    print(markdown(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    from tempnet.errors import run_cli

    run_cli(main)
