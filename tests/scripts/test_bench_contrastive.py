"""scripts/bench_contrastive.py runs at a tiny size and writes every variant's median time and ratio."""

import json
import pathlib

import pytest

from helpers import load_module

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench_contrastive.py"
VARIANTS = {"open_clip", "clip", "cyclip", "sogclr", "isogclr", "rgcl", "rgcl_tempnet", "tempnets"}


def _load():
    return load_module("bench_contrastive", SCRIPT)


def test_bench_tiny_writes_json(tmp_path, capsys):
    pytest.importorskip("open_clip")
    out = tmp_path / "bench.json"
    report = _load().main(["--batch", "12", "--dim", "8", "--prototypes", "4", "--repeats", "3", "--warmup", "1",
                           "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["reference"] == "open_clip" and set(report["results"]) == VARIANTS
    assert report["config"] == {**report["config"], "batch": 12, "dim": 8, "device": "cpu", "repeats": 3,
                                "prototypes": 4}
    for name, row in report["results"].items():
        assert set(row) == {"median_ms", "ratio"} and row["median_ms"] > 0 and row["ratio"] > 0, name
    assert report["results"]["open_clip"]["ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| variant | median ms | x open_clip ClipLoss |" in table and "| rgcl_tempnet |" in table


def test_bench_rejects_bad_sizes():
    with pytest.raises(SystemExit):
        _load().main(["--batch", "1"])


def test_state_sweep_reports_bytes_ratios_web_scale_and_save(tmp_path, capsys):
    report = _load().main(["--num-samples", "64", "4096", "--batch", "16", "--dim", "8", "--repeats", "2",
                           "--warmup", "1", "--save-dir", str(tmp_path)])
    assert set(report["num_samples"]) == {"64", "4096"}
    big = report["num_samples"]["4096"]
    assert big["rgcl"]["bytes_per_sample"] == 18 and big["isogclr"]["bytes_per_sample"] == 34
    assert report["num_samples"]["64"]["rgcl"]["ratio_to_smallest_n"] == 1.0 and big["rgcl"]["ratio_to_smallest_n"] > 0
    assert report["web_scale"]["rgcl"]["state_gb"] == pytest.approx(7.2)
    assert report["save"]["num_samples"] == 4096 and report["save"]["bytes"] > 18 * 4096
    assert "| 4e+08 | rgcl (arithmetic) |" in capsys.readouterr().out
