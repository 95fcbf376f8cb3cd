"""scripts/gpu_check.sh: without a GPU it says so and dry-runs every command (exit 0); the dry run fails
naming a missing file, an unknown flag or a bad override; the generation check's own code runs on CPU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from helpers import OFFLINE_ENV, REPO, load_module

gpu_check = load_module("gpu_check", REPO / "scripts" / "gpu_check.py")
NAMES = ["pytest_gpu", "llm_fp16", "llm_bf16", "clip_fp16", "clip_bf16", "generate_released", "bench_loss",
         "bench_contrastive", "serving_vllm"]


@pytest.mark.slow
def test_the_script_dry_runs_every_command_without_a_gpu(tmp_path):
    """The command a user types; on a machine with CUDA the same checks through --dry-run (nothing runs)."""
    cmd = ["bash", "scripts/gpu_check.sh", "--out", str(tmp_path / "out"),
           *(["--dry-run"] if torch.cuda.is_available() else [])]
    proc = subprocess.run(cmd, cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    if not torch.cuda.is_available():
        assert lines[0].startswith("gpu_check: this needs a CUDA GPU; none here, so only a dry run")
    assert [line.split(":")[0] for line in lines if line.startswith(("ok ", "BAD "))] == [f"ok {n}" for n in NAMES]
    assert lines[-1] == f"dry run: {len(NAMES)} commands, 0 problems"
    assert not (tmp_path / "out").exists()  # nothing ran


def _checkout_without(tmp_path, *missing: str):
    """A checkout whose top-level entries link to this one's, except the folders of `missing` (copies
    without those files)."""
    root = tmp_path / "checkout"
    root.mkdir()
    folders = {m.split("/")[0] for m in missing}
    for entry in REPO.iterdir():
        if entry.name in folders:
            shutil.copytree(entry, root / entry.name, ignore=shutil.ignore_patterns("__pycache__"))
        elif not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    for m in missing:
        (root / m).unlink()
    return root


def test_dry_run_names_a_missing_script_or_config(tmp_path, capsys):
    root = _checkout_without(tmp_path, "scripts/bench_loss.py", "Bimodal-CL/configs/debug.yaml")
    assert gpu_check.main(["--dry-run", "--root", str(root), "--only", "bench_loss", "clip_bf16", "llm_bf16"]) == 1
    out = capsys.readouterr().out
    assert f"problem: bench_loss: scripts/bench_loss.py does not exist under {root}" in out
    assert f"problem: clip_bf16: Bimodal-CL/configs/debug.yaml does not exist under {root}" in out
    assert "ok llm_bf16:" in out and "BAD bench_loss:" in out and "BAD clip_bf16:" in out
    assert out.splitlines()[-1].endswith("3 commands, 3 problems")  # + the config that cannot load


def test_dry_run_names_an_unknown_flag_and_a_bad_override(monkeypatch, capsys):
    real = gpu_check.checks

    def broken(out):
        found = {c.name: c for c in real(out)}
        found["bench_contrastive"].argv.append("--batchsize")
        found["llm_fp16"].argv.append("train.precison=fp16")
        return list(found.values())

    monkeypatch.setattr(gpu_check, "checks", broken)
    assert gpu_check.main(["--dry-run", "--only", "bench_contrastive", "llm_fp16"]) == 1
    out = capsys.readouterr().out
    assert "problem: bench_contrastive: scripts/bench_contrastive.py does not accept --batchsize" in out
    assert "problem: llm_fp16: the overrides do not load into LMTrainConfig" in out and "precison" in out


def test_list_and_unknown_check(capsys):
    assert gpu_check.main(["--list"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == NAMES
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "nothing"])


def test_generation_from_the_released_layout_runs_on_cpu(tmp_path):
    """The generate_released check's own code (on CPU here: fp16 weights, float32 TempNet)."""
    numbers = gpu_check.generate_released(tmp_path / "released", "cpu")
    assert numbers["new_tokens"] == 24 and numbers["lm_head_dtype"] == "torch.float16"
    assert numbers["tempnet_dtypes"] == ["torch.float32"] and numbers["tau_min"] < numbers["tau_max"]
    stored = json.loads((tmp_path / "released" / "config.json").read_text())
    assert stored["model_type"] == "llama" and "tempnet" not in stored  # no TempNet settings, as released


def test_key_numbers_of_each_kind_of_check(tmp_path):
    by_name = {c.name: c for c in gpu_check.checks(tmp_path)}
    assert gpu_check.key_numbers(by_name["pytest_gpu"], "6 passed, 1 skipped in 3.2s") == {"passed": 6, "skipped": 1}
    (tmp_path / "llm_bf16").mkdir()
    (tmp_path / "llm_bf16" / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "loss": 9.0}) + "\n" + json.dumps({"step": 2, "loss": 8.5, "tau_mean": 2.0}) + "\n")
    assert gpu_check.key_numbers(by_name["llm_bf16"], "") == {"steps": 2, "loss": 8.5, "tau_mean": 2.0}
    (tmp_path / "bench_contrastive.json").write_text(json.dumps({"results": {"clip": {"median_ms": 1.23456}}}))
    assert gpu_check.key_numbers(by_name["bench_contrastive"], "") == {"clip": 1.235}
    log = 'noise\n{"new_tokens": 24}\n'
    assert gpu_check.key_numbers(by_name["generate_released"], log) == {"new_tokens": 24}


def test_the_runner_records_status_seconds_and_logs(tmp_path):
    """run_checks on two trivial commands: one passes, one outruns its limit; both are in the summary."""
    fast = gpu_check.Check("fast", [gpu_check.PY, "-c", "print('hello')"], 30)
    slow = gpu_check.Check("slow", [gpu_check.PY, "-c", "import time; print('start', flush=True); time.sleep(30)"], 2)
    summary = gpu_check.run_checks([fast, slow], tmp_path / "out", REPO)
    assert [(r["name"], r["status"]) for r in summary] == [("fast", "passed"), ("slow", "timeout")]
    assert summary[1]["seconds"] < 10 and summary[0]["command"] == " ".join(fast.argv)
    assert (tmp_path / "out" / "fast.log").read_text().strip() == "hello"
