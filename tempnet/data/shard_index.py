"""The shard index: every webdataset shard's sample count, key range, size and content fingerprint, and the
sample ids it defines (tempnet.data.shards reads the samples; scripts/index_shards.py writes an index).

An index (`build_index`) lists the shards in the order of the brace pattern, plus a hash of that list; it is
also a valid `wids` dataset descriptor ("shardlist" of {"url", "nsamples"}). From it:

  * the id of a sample (its slot in the losses' per-sample state) is either its global position in the
    index (`ids="index"`: shard start + offset in the shard, a dense remap, so failed downloads leave no
    empty slots) or its integer key (`ids="key"`: img2dataset's key, the state sized max key + 1; a key held
    twice is an error naming both shards);
  * global position p -> (shard, offset) by a binary search over the shard starts (`ShardIndex.locate`);
  * the hash covers what the shards hold, not where they lie: per shard its size, sample count, key range
    and fingerprint (a hash of every tar member's name and size and of 64 bytes from the middle of its
    data, read from the headers and one small read per member, nothing decoded). A shard added, removed,
    reordered or rewritten changes the hash and a resumed run refuses it; the same shards in another
    folder (a per-job scratch copy) keep it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tempnet.errors import DataError, UserError

__all__ = ["INDEX_FORMAT", "expand_shards", "open_tar", "build_index", "check_same_content", "write_index",
           "read_index", "ShardIndex"]

INDEX_FORMAT = "tempnet-shard-index/2"


def expand_shards(pattern: str) -> list[str]:
    """A brace pattern ("/cc12m/{00000..01242}.tar", several joined by "::") -> the shard paths, in order."""
    import webdataset as wds

    urls = wds.shardlists.expand_urls(pattern)
    if not urls:
        raise UserError(f"data.train_shards={pattern!r} names no shards")
    return list(urls)


def open_tar(url: str):
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

    tar = open_tar(url)
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

    tar = open_tar(url)
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
