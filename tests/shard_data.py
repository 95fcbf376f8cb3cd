"""Tiny img2dataset-style shards for the tests, written with webdataset's own ShardWriter.

The pairs are the synthetic shapes set's; keys follow img2dataset ("%09d" of shard * 10000 + i) with a
gap wherever a download "failed" (every `gap_every`-th key is missing), and `corrupt` names keys whose
image bytes are garbage."""

from __future__ import annotations

import json
from pathlib import Path

SHARD_SPAN = 10_000  # img2dataset: key = shard number * samples per shard + index


def write_pair_shards(root: Path, num: int = 200, per_shard: int = 48, gap_every: int = 7, corrupt=(),
                      image_size: int = 32) -> tuple[str, list[str]]:
    """Write ROOT/shards/{00000..}.tar; returns (brace pattern, the keys in order)."""
    import webdataset as wds

    from tempnet.data.synthetic_image_text import make_synthetic_image_text

    src = Path(root) / "pairs"
    make_synthetic_image_text(src, num_train=num)
    entries = json.loads((src / "train.json").read_text())
    out = Path(root) / "shards"
    out.mkdir(parents=True, exist_ok=True)
    keys, shard = [], 0
    for start in range(0, num, per_shard):
        with wds.TarWriter(str(out / f"{shard:05d}.tar")) as sink:
            i = 0
            for entry in entries[start:start + per_shard]:
                while (i + 1) % gap_every == 0:  # a failed download leaves its key unused
                    i += 1
                key = f"{shard * SHARD_SPAN + i:09d}"
                image = (src / entry["image"]).read_bytes()
                if corrupt is True or key in corrupt:
                    image = b"not a png" + image[:20]
                sink.write({"__key__": key, "png": image, "txt": entry["caption"],
                            "json": json.dumps({"key": key, "caption": entry["caption"]})})
                keys.append(key)
                i += 1
        shard += 1
    return str(out / f"{{00000..{shard - 1:05d}}}.tar"), keys
