"""Image-text pairs from webdataset shards (img2dataset's layout), with a stable id per sample.

    SHARD.tar:  KEY.jpg|jpeg|png|webp  KEY.txt  [KEY.json]   (one sample per KEY, in tar order)

A shard index (`build_index`, `scripts/index_shards.py`) lists every shard with its sample count, key range,
size and content fingerprint, in the order of the brace pattern, plus a hash of that list. It is also a
valid `wids` dataset descriptor ("shardlist" of {"url", "nsamples"}). From it:

  * the id of a sample (its slot in the losses' per-sample state) is either its global position in the
    index (`ids="index"`: shard start + offset in the shard, a dense remap, so failed downloads leave no
    empty slots) or its integer key (`ids="key"`: img2dataset's key, the state sized max key + 1; a key held
    twice is an error naming both shards);
  * global position p -> (shard, offset) by a binary search over the shard starts, so a seeded order of
    positions (`ShardWindowSampler`) fixes which sample every step of every rank sees, resumable at any
    step without reading a byte of the skipped data;
  * the hash covers what the shards hold, not where they lie: per shard its size, sample count, key range
    and fingerprint (a hash of every tar member's name and size and of 64 bytes from the middle of its
    data, read from the headers and one small read per member, nothing decoded). A shard added, removed,
    reordered or rewritten changes the hash and a resumed run refuses it; the same shards in another
    folder (a per-job scratch copy) keep it.

`ShardedPairs` reads a sample by (shard, offset) with wids' indexed tar reader (mmap of the tar,
random access to its members); `ShardWindowSampler` keeps those reads inside a window of a few shards
at a time. The streaming mode without an exact order is tempnet.data.shard_stream. Bad samples follow
tempnet.data.bad_samples in both.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tempnet.data.bad_samples import BadSample, BadSamples
from tempnet.data.image_text import pre_caption, sample_seed, seeded_transform
from tempnet.data.sampler import GlobalBatchSampler
from tempnet.errors import DataError, UserError

__all__ = ["INDEX_FORMAT", "IMAGE_EXTENSIONS", "expand_shards", "build_index", "write_index", "read_index",
           "ShardIndex", "decode_pair", "ShardedPairs", "ShardWindowSampler"]

INDEX_FORMAT = "tempnet-shard-index/2"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def expand_shards(pattern: str) -> list[str]:
    """A brace pattern ("/cc12m/{00000..01242}.tar", several joined by "::") -> the shard paths, in order."""
    import webdataset as wds

    urls = wds.shardlists.expand_urls(pattern)
    if not urls:
        raise UserError(f"data.train_shards={pattern!r} names no shards")
    return list(urls)


def _open_tar(url: str):
    """wids' indexed view of one local tar: len() samples, [i] -> {ext: stream, "__key__": key}; a file that
    is not a plain tar (empty, gzip-compressed, cut inside a header) is a DataError naming it."""
    from wids.wids import IndexedTarSamples

    if not os.path.isfile(url):
        raise FileNotFoundError(f"shard not found: {url}")
    with open(url, "rb") as f:
        head = f.read(2)
    if not head:
        raise DataError(f"shard {url} is empty (0 bytes): download it again")
    if head == b"\x1f\x8b":
        raise DataError(f"shard {url} is gzip-compressed: webdataset shards here must be plain .tar (gunzip it)")
    try:
        return IndexedTarSamples(path=url)
    except (struct.error, ValueError) as err:  # wids' header parser: a short header, a non-octal size field
        raise DataError(f"shard {url} is not a readable tar (truncated or damaged): {err}") from None


def _scan(url: str) -> dict:
    """One shard's row of the index, from its tar headers and one 64-byte read per member (nothing decoded)."""
    from wids.wids import splitname

    tar = _open_tar(url)
    try:
        names = list(tar.reader.names())
        keys = [splitname(names[group[0]])[0].split("/")[-1] for group in tar.samples]
        size, data, digest = os.path.getsize(url), tar.reader.mmapped_file, hashlib.sha256()
        members = list(tar.reader.by_index)  # (name, header offset, data length), every member in tar order
        for name, offset, length in members:
            start = offset + 512
            if start + length > size:
                raise DataError(f"shard {url} is truncated: its member {name} ends at byte {start + length}, "
                                f"the file has {size}")
            middle = start + max(0, length // 2 - 32)
            digest.update(f"{name}\0{length}\0".encode() + data[middle:middle + min(64, length)])
        if size < 1024 or data[size - 1024:] != bytes(1024):  # a tar ends with two zero blocks
            raise DataError(f"shard {url} is truncated: it does not end with the tar end-of-archive blocks")
    finally:
        tar.close()
    if not keys:
        raise DataError(f"shard {url} holds no samples")
    int_keys = all(k.isdigit() for k in keys)
    member_twice = next((m for m, n in _counts(m for m, _, _ in members).items() if n > 1), None)
    twice = next((k for k, n in _counts(keys).items() if n > 1), None)  # a key's members apart in the tar
    if member_twice is not None:
        twice = splitname(member_twice)[0].split("/")[-1]
    return {"url": url, "nsamples": len(keys), "first_key": keys[0], "last_key": keys[-1],
            "sorted": all(a < b for a, b in zip(keys, keys[1:])),
            "min_int_key": min(map(int, keys)) if int_keys else None,
            "max_int_key": max(map(int, keys)) if int_keys else None,
            "filesize": size, "fingerprint": digest.hexdigest(), "key_twice": twice}


def _counts(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _shard_keys(url: str) -> list[str]:
    from wids.wids import splitname

    tar = _open_tar(url)
    try:
        names = list(tar.reader.names())
        return [splitname(names[group[0]])[0].split("/")[-1] for group in tar.samples]
    finally:
        tar.close()


def _common_key(shards: list[dict]) -> dict | None:
    """{"key", "shards": [url, url]} of a key two of `shards` both hold (their keys read again), else None."""
    keys = [_shard_keys(s["url"]) for s in shards]
    values = np.concatenate([np.array(k, dtype=np.int64) for k in keys])
    owner = np.concatenate([np.full(len(k), j) for j, k in enumerate(keys)])
    offset = np.concatenate([np.arange(len(k)) for k in keys])
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    if not len(same):
        return None
    first, second = order[same[0]], order[same[0] + 1]
    return {"key": keys[owner[first]][offset[first]],
            "shards": [shards[owner[first]]["url"], shards[owner[second]]["url"]]}


def _key_held_twice(shards: list[dict]) -> dict | None:
    """{"key", "shards": [url, url]} of an integer key that two samples share, else None. Only the shards of a
    run of overlapping key ranges are read again, each once (img2dataset's ranges never overlap: no reads)."""
    for s in shards:
        if s["key_twice"] is not None:
            return {"key": s["key_twice"], "shards": [s["url"], s["url"]]}
    if any(s["min_int_key"] is None for s in shards):
        return None  # not integer keys: data.sample_ids=key refuses them anyway
    run, reach = [], -1
    for s in [*sorted(shards, key=lambda s: s["min_int_key"]), None]:
        if s is not None and s["min_int_key"] <= reach:
            run, reach = run + [s], max(reach, s["max_int_key"])
            continue
        found = _common_key(run) if len(run) > 1 else None
        if found or s is None:
            return found
        run, reach = [s], s["max_int_key"]
    return None


def _list_hash(shards: list[dict]) -> str:
    """sha256 of every shard's content identity, in order: sample count, key range, size, fingerprint.
    No path or file name: the same shards in another folder hash the same."""
    rows = [[s["nsamples"], s["first_key"], s["last_key"], s["filesize"], s["fingerprint"]] for s in shards]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def build_index(shards: str | list[str], workers: int | None = None) -> dict:
    """Scan every shard (a brace pattern or a list of paths) in `workers` processes (default: one per CPU;
    parsing the tar headers is Python work): the index described in the module docstring."""
    urls = expand_shards(shards) if isinstance(shards, str) else list(shards)
    workers = max(1, min(workers or os.cpu_count() or 1, len(urls)))
    if workers == 1:
        rows = [_scan(url) for url in urls]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_scan, urls, chunksize=max(1, len(urls) // (8 * workers))))
    return {"format": INDEX_FORMAT, "pattern": shards if isinstance(shards, str) else "::".join(urls),
            "num_samples": sum(s["nsamples"] for s in rows), "shard_list_hash": _list_hash(rows),
            "key_held_twice": _key_held_twice(rows), "shardlist": rows}


def check_same_content(index: dict, found: dict, where: str) -> None:
    """`found` (a fresh scan of the shards) must hold what `index` (read from `where`) lists, shard by shard."""
    expected, actual = index["shardlist"], found["shardlist"]
    if len(expected) != len(actual):
        raise UserError(f"{where} lists {len(expected)} shards, the shards given are {len(actual)}")
    for i, (a, b) in enumerate(zip(expected, actual)):
        fields = [k for k in ("filesize", "nsamples", "first_key", "last_key", "fingerprint") if a[k] != b[k]]
        if fields:
            raise UserError(f"shard {b['url']} is not shard {i} of {where} ({a['url']}): its {', '.join(fields)} "
                            "differ (rewritten since it was indexed? rerun scripts/index_shards.py)")


def write_index(index: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_index(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard index not found: {path}")
    try:
        index = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        index = None
    if not isinstance(index, dict) or not str(index.get("format", "")).startswith("tempnet-shard-index/"):
        raise UserError(f"{path} is not a shard index of scripts/index_shards.py (an index is its JSON output; "
                        "the shards themselves go in data.train_shards)")
    if index["format"] != INDEX_FORMAT:
        raise UserError(f"{path} was written by an older scripts/index_shards.py ({index['format']}): rerun it")
    if _list_hash(index["shardlist"]) != index["shard_list_hash"]:
        raise UserError(f"{path}: its shard list does not match its hash (edited by hand?): rebuild it")
    return index


class ShardIndex:
    """The index in memory: position <-> (shard, offset), and the sample id rule ("index" or "key")."""

    def __init__(self, index: dict, ids: str = "index"):
        if ids not in ("index", "key"):
            raise ValueError(f"sample ids must be 'index' or 'key', got {ids!r}")
        self.shards, self.ids, self.hash = index["shardlist"], ids, index["shard_list_hash"]
        twice = index["key_held_twice"]
        if ids == "key" and twice is not None:
            a, b = twice["shards"]
            where = f"twice in shard {a}" if a == b else f"in shard {a} and in shard {b}"
            raise UserError(f"data.sample_ids=key: key {twice['key']!r} is {where}; two samples cannot share one "
                            "per-sample state slot (use data.sample_ids=index)")
        self.urls = [s["url"] for s in self.shards]
        self.counts = np.array([s["nsamples"] for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)  # [S + 1]
        self.num_positions = int(self.starts[-1])
        if ids == "key":
            bad = [s["url"] for s in self.shards if s["max_int_key"] is None]
            if bad:
                raise UserError(f"data.sample_ids=key needs integer keys; shard {bad[0]} has others "
                                "(use data.sample_ids=index)")
            self.num_samples = max(s["max_int_key"] for s in self.shards) + 1
        else:
            self.num_samples = self.num_positions

    def locate(self, position: int) -> tuple[int, int]:
        """Global position -> (shard number, offset in the shard)."""
        shard = bisect.bisect_right(self.starts, position) - 1
        return shard, position - int(self.starts[shard])

    def sample_id(self, shard: int, offset: int, key: str) -> int:
        """The state slot of the sample `key` at `offset` of `shard`; outside the state -> an error naming both."""
        s = self.shards[shard]
        if self.ids == "key":
            sid = int(key) if key.isdigit() else -1
        else:
            inside = offset < s["nsamples"] and (not s["sorted"] or s["first_key"] <= key <= s["last_key"])
            sid = int(self.starts[shard]) + offset if inside else -1
        if not 0 <= sid < self.num_samples:
            raise UserError(f"shard {s['url']}, key {key!r}: no slot in the per-sample state [0, {self.num_samples}) "
                            "(the shard changed since it was indexed? rerun scripts/index_shards.py)")
        return sid


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
        from io import BytesIO

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
        tar = self._tars.pop(shard, None) or _open_tar(self.index.urls[shard])
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
