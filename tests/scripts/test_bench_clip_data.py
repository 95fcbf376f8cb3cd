"""scripts/bench_clip_data.py runs at a tiny size: every loader's images/s, its ratio to open_clip's, the read costs."""

import json

import pytest

from helpers import REPO, load_module


def test_bench_tiny_writes_json(tmp_path, capsys):
    pytest.importorskip("open_clip_train")
    out = tmp_path / "bench.json"
    report = load_module("bench_clip_data", REPO / "scripts" / "bench_clip_data.py").main(
        ["--make", "96", "--per-shard", "16", "--workers", "1", "--batch", "8", "--batches", "2", "--repeats", "1",
         "--image-size", "32", "--source-size", "32", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert set(report["results"]) == {"open_clip", "ours_indexed", "ours_resampled"}
    assert report["config"]["num_shards"] == 6 and report["config"]["samples"] == 96
    for name, row in report["results"].items():
        assert row["images_per_s"] > 0 and row["ratio"] > 0 and row["first_batch_s"] > 0, name
    assert report["results"]["open_clip"]["ratio"] == 1.0
    assert all(v > 0 for v in report["read_cost"].values())
    assert "| ours_indexed |" in capsys.readouterr().out
