"""Index webdataset shards for Bimodal-CL (data.format=webdataset, data.train_index=INDEX).

Reads every shard's tar headers and 64 bytes of each member (no image is decoded) and writes, in the order
of the brace pattern, each shard's path, sample count, key range, size and content fingerprint, the total
and a hash of the shards' content (not their paths):

    python scripts/index_shards.py "/data/cc12m/{00000..01242}.tar" --output /data/cc12m/index.json

The index is also a wids dataset descriptor ("shardlist" of {"url", "nsamples"}). A training run records
the hash in its checkpoints and refuses to resume on other content; a shard that is not a plain tar (empty,
gzip-compressed, truncated) is an error naming it.
"""

from __future__ import annotations

import argparse
import time

from tempnet.data.shard_index import build_index, write_index
from tempnet.errors import run_cli


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pattern", help="the shards as a brace pattern, e.g. /data/cc12m/{00000..01242}.tar")
    parser.add_argument("--output", required=True, help="the index JSON to write")
    parser.add_argument("--workers", type=int, default=None, help="processes scanning shards (default: one per CPU)")
    args = parser.parse_args(argv)
    tic = time.perf_counter()
    index = build_index(args.pattern, args.workers)
    write_index(index, args.output)
    print(f"{len(index['shardlist'])} shards, {index['num_samples']} samples, hash {index['shard_list_hash'][:12]} "
          f"-> {args.output} ({time.perf_counter() - tic:.1f} s)")
    return index


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
