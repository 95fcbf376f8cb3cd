"""LLaMA-2 end to end: a TempNet trained on a frozen tiny LLaMA (configs/debug.yaml, packed text) and on
a frozen chat model with Alpaca data (configs/debug_chat.yaml); resume with TempNet dropout on (so the
restored RNG states matter); final/ loads; the export script extracts the TempNet. The runs are the trainer's
main(argv) in this process (lm_runs.train_here: the same numbers as `python LLaMA-2/train.py`, which
test_lm_families.py and the launch-script tests run as a subprocess).
"""

from __future__ import annotations

import pytest
import torch

from lm_runs import metrics, run, train_here

pytestmark = pytest.mark.slow


STEPS = 8
COMMON = (f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=2", "tempnet.dropout=0.1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama2_ref")
    train_here("LLaMA-2", out, *COMMON)
    return out


def test_frozen_run_trains_only_tempnet(reference):
    rows = metrics(reference)
    assert rows[-1]["loss"] < 0.97 * rows[0]["loss"], [r["loss"] for r in rows]
    assert "lr" not in rows[0] and "lr_tempnet" in rows[0]  # a single parameter group: TempNet's
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    final = tempnet_model_from_pretrained(reference / "final").state_dict()
    base = tempnet_model_from_pretrained(reference / "debug_assets" / "base-llama", fresh_tempnet=True).state_dict()
    assert all(torch.equal(v, final[k]) for k, v in base.items() if not k.startswith("tempnet."))
    # the checkpoint holds the trainable weights only: the frozen base is reloaded from model.path
    from safetensors.torch import load_file

    saved = load_file(reference / "checkpoint-8" / "model.safetensors")
    assert saved and all(k.startswith("tempnet.") for k in saved)


def test_resume_reproduces_the_uninterrupted_losses(reference, tmp_path):
    train_here("LLaMA-2", tmp_path, *COMMON, "train.stop_after_steps=4")
    train_here("LLaMA-2", tmp_path, *COMMON, resume=True)
    a, b = metrics(reference), metrics(tmp_path)
    for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max", "lr_tempnet", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key


def test_export_script_extracts_the_tempnet(reference):
    run(["bash", "LLaMA-2/scripts/export_tempnet.sh"], env={"RUN": str(reference)})
    from safetensors.torch import load_file

    exported = load_file(reference / "tempnet.safetensors")
    assert {"proj.0.weight", "proj.3.weight", "scaler", "last.weight"} <= set(exported)
    assert all(v.dtype == torch.float16 for v in exported.values())


def test_chat_run_on_alpaca_data(tmp_path):
    train_here("LLaMA-2", tmp_path, f"train.max_steps={STEPS}", config="debug_chat.yaml")
    rows = metrics(tmp_path)
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < first, [r["loss"] for r in rows]
    from tempnet.integrations.hf import tempnet_model_from_pretrained

    config = tempnet_model_from_pretrained(tmp_path / "final").tempnet_config
    assert (config.tau_min, config.tau_max) == (0.01, 1.2)  # the released chat tau range
    assert all(r["tau_min"] < r["tau_max"] for r in rows)
