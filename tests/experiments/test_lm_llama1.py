"""LLaMA-1 end to end on configs/debug.yaml (a tiny random LLaMA saved as a plain checkpoint, then
finetuned with a fresh TempNet): train, checkpoint, resume, load, and the accelerate engine.

accelerate's FSDP cannot run on a CPU: accelerate turns FSDP on only for GPU-like backends
(`AcceleratorState`, accelerate/state.py), so `accelerate launch --config_file accelerate_fsdp.yaml`
runs MULTI_CPU data parallel here. The test runs that real launch with 2 processes (the engine's
accumulate / backward / clip / save_state path), checks the trainer says FSDP was not applied, and
compares with the 1-process run (tolerance 1e-5 absolute on loss and tau_mean).
"""

from __future__ import annotations

import pytest
import torch

from lm_runs import free_port, max_difference, metrics, run, train, train_cmd

pytestmark = pytest.mark.slow

STEPS = 8
COMMON = (f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=2")
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama1_ref")
    train("LLaMA-1", out, *COMMON)
    return out


def test_debug_finetune_trains(reference):
    rows = metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"], [r["loss"] for r in rows]
    assert all(0.01 <= r["tau_min"] <= r["tau_max"] <= 2.0 for r in rows)
    assert sorted(p.name for p in reference.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]
    assert (reference / "debug_assets" / "base-llama" / "config.json").exists()  # the stand-in pretrained model


def test_resume_reproduces_the_uninterrupted_losses(reference, tmp_path):
    train("LLaMA-1", tmp_path, *COMMON, "train.stop_after_steps=3")
    train("LLaMA-1", tmp_path, *COMMON, resume=True)
    a, b = metrics(reference), metrics(tmp_path)
    for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max", "lr", "lr_tempnet", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key


def test_final_model_loads_with_the_hf_integration(reference):
    from tempnet.integrations.hf import LlamaTempNetForCausalLM, tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(reference / "final").eval()
    assert isinstance(model, LlamaTempNetForCausalLM) and model.tempnet_config.tau_max == 2.0
    base = tempnet_model_from_pretrained(reference / "debug_assets" / "base-llama", fresh_tempnet=True)
    changed = [k for k, v in base.state_dict().items() if not k.startswith("tempnet.")
               and not torch.equal(v, model.state_dict()[k])]
    assert changed, "finetune mode must train the base model"
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and ((out.tau >= 0.01) & (out.tau <= 2.0)).all()


def test_accelerate_launch_two_processes_match_one(reference, tmp_path):
    proc = run(["accelerate", "launch", "--config_file", "LLaMA-1/configs/accelerate_fsdp.yaml", "--num_processes", "2",
                "--main_process_port", free_port(),
                *train_cmd("LLaMA-1", tmp_path, f"train.max_steps={STEPS}", "engine.name=accelerate")])
    assert "asks for FSDP but accelerate runs DistributedType.MULTI_CPU" in proc.stderr
    a, b = metrics(reference), metrics(tmp_path)
    assert max_difference(a, b, "loss") <= TOL and max_difference(a, b, "tau_mean") <= TOL
    ckpt = tmp_path / "checkpoint-8"
    assert (ckpt / "optimizer.bin").exists() and (ckpt / "random_states_1.pkl").exists()  # accelerate's save_state
    assert (tmp_path / "final" / "model.safetensors").exists()
