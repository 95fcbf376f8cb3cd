"""The LM benchmark scripts and the CLIP training-step benchmark run end to end at tiny sizes and write their documented JSON (no timing claims)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_bench_loss_writes_memory_time_and_ratios(tmp_path):
    out = tmp_path / "loss.json"
    done = _run("bench_loss.py", "--n", "96", "--d", "16", "--vocab", "300", "500", "--tempnet-hidden", "8",
                "--chunk-size", "40", "--warmup", "0", "--repeats", "1", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["config"]["n"] == 96 and report["config"]["chunk_size"] == 40
    assert [row["vocab"] for row in report["results"]] == [300, 500]
    for row in report["results"]:
        for variant in ("ce", "naive", "fused"):
            assert set(row[variant]) == {"peak_mem_mb", "time_ms"}
            assert row[variant]["time_ms"] > 0 and row[variant]["peak_mem_mb"] >= 0
        for key in ("fused_vs_naive_mem", "fused_vs_naive_time", "fused_vs_ce_mem"):
            assert key in row
        assert row["fused_vs_naive_time"] == pytest.approx(row["fused"]["time_ms"] / row["naive"]["time_ms"], rel=1e-2)
    assert "fused/naive mem" in done.stdout  # the markdown table


def test_bench_train_step_writes_step_times_and_shares(tmp_path):
    out = tmp_path / "step.json"
    done = _run("bench_train_step.py", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--vocab", "200",
                "--seq-len", "8", "--batch-size", "2", "--tempnet-hidden", "8", "--warmup", "0", "--repeats", "1",
                "--device", "cpu", "--json", str(out))
    report = json.loads(out.read_text())
    assert set(report["step_ms"]) == {"ce", "naive", "fused"} and all(v > 0 for v in report["step_ms"].values())
    assert set(report["tempnet_time_share"]) == {"naive", "fused"}
    assert set(report["ratios"]) == {"naive_vs_ce", "fused_vs_ce", "fused_vs_naive"}
    # TempNet's training FLOPs per token, 2 (2VM + 2MM) + 2MM, against 6 * the base model's parameters
    tempnet = 2 * (2 * 200 * 8 + 2 * 8 * 8) + 2 * 8 * 8
    assert report["tempnet_flops_share"] == pytest.approx(tempnet / (6 * report["base_params"] + tempnet), abs=1e-4)
    assert "TempNet share of FLOPs" in done.stdout


def test_bench_train_step_clip_times_both_losses_and_the_tempnet_share(tmp_path):
    """--clip: the trainer's own step for clip and isogclr_tempnet (towers shrunk by overrides), the ratio of the
    medians, TempNets' FLOP share and the goal derived from it."""
    out = tmp_path / "clip.json"
    done = _run("bench_train_step.py", "--clip", "--batch-size", "8", "--warmup", "0", "--repeats", "1", "--device",
                "cpu", "--json", str(out), "model.image.name=resnet18", "model.image_size=32", "model.embed_dim=16",
                "model.text.config_overrides={dim: 32, n_layers: 1, n_heads: 2, hidden_dim: 64, vocab_size: 49408}")
    report = json.loads(out.read_text())
    assert report["towers"] == {**report["towers"], "image": "resnet18", "text": "distilbert", "image_size": 32,
                                "precision": "fp32", "num_prototypes": 8}
    ms = report["step_ms"]
    assert set(ms) == {"clip", "isogclr_tempnet"} and all(v > 0 for v in ms.values())
    assert report["ratio"] == pytest.approx(ms["isogclr_tempnet"] / ms["clip"], rel=1e-3)
    assert 0 < report["tempnet_flops_share"] < 0.5  # the TempNets were counted, beside far larger towers
    assert report["goal"] == pytest.approx(max(0.05, report["tempnet_flops_share"] + 0.02), abs=1e-4)
    assert report["within_goal"] == (report["ratio"] - 1 <= report["goal"])
    assert "TempNets' share of FLOPs" in done.stdout and "isogclr_tempnet" in done.stdout


def test_bench_train_step_clip_bad_override_is_one_error_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train_step.py"), "--clip", "model.image_sise=9"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "image_sise" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
