"""GPT_2 end to end on configs/debug.yaml: train, checkpoint, resume, load.

The multi-process comparisons of GPT_2 (DDP with 2 processes x accumulation 2, DeepSpeed ZeRO-2 and ZeRO-3 with
2 processes, each against 1 process) are in test_lm_engines.py, beside the hand-computed step. The runs here are
the trainer's main(argv) in this process (lm_runs.train_here: the same numbers as `python GPT_2/train.py`, which
the launch-script tests run as a subprocess).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from helpers import ActivationDtypes, order_agreement, record_indices
from lm_runs import REPO, load_train_module, metrics, train_here

pytestmark = pytest.mark.slow


STEPS = 8
COMMON = (f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=2")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 1-process run (accumulation 2)."""
    out = tmp_path_factory.mktemp("gpt2_ref")
    train_here("GPT_2", out, *COMMON)
    return out


def test_debug_run_trains_and_writes_everything(reference):
    rows = metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max", "lr", "lr_tempnet", "grad_norm", "tokens_per_s"):
        assert key in rows[0], key
    assert rows[-1]["loss"] < 0.95 * rows[0]["loss"], [r["loss"] for r in rows]
    # a personal tau per position (not one value), and TempNet learns (its mean tau moves)
    assert all(r["tau_min"] < r["tau_mean"] < r["tau_max"] for r in rows)
    assert abs(rows[-1]["tau_mean"] - rows[0]["tau_mean"]) > 1e-3, [r["tau_mean"] for r in rows]
    # keep-last-2 of the checkpoints at steps 2, 4, 6, 8; each complete with model, optimizer, RNG, config
    ckpts = sorted(p.name for p in reference.glob("checkpoint-*"))
    assert ckpts == ["checkpoint-6", "checkpoint-8"]
    for name in ("COMPLETE", "model.safetensors", "optimizer.pt", "rng_state_0.pt", "trainer_state.json", "config.yaml"):
        assert (reference / "checkpoint-8" / name).exists(), name
    assert (reference / "config.yaml").exists() and any((reference / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_losses(reference, tmp_path):
    train_here("GPT_2", tmp_path, *COMMON, "train.stop_after_steps=4")
    assert not (tmp_path / "final").exists()  # a simulated crash: no final model
    assert [r["step"] for r in metrics(tmp_path)] == [1, 2, 3, 4]
    train_here("GPT_2", tmp_path, *COMMON, resume=True)
    assert metrics(tmp_path) == [{**r, "tokens_per_s": m["tokens_per_s"]} for r, m in
                                 zip(metrics(reference), metrics(tmp_path))]  # every logged value but speed equal
    from safetensors.torch import load_file

    a, b = load_file(reference / "final" / "model.safetensors"), load_file(tmp_path / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dro_checkpoint_holds_all_state_and_resumes_exactly(tmp_path):
    """objective=dro (one learned tau, its own optimizer group): the checkpoint's weights are the whole state
    dict of a freshly built model, optimizer.pt holds Adam state for every trainable parameter, and a run
    stopped after step 1 and resumed ends with the uninterrupted run's weights and metrics, bit for bit."""
    from safetensors.torch import load_file

    from tempnet.config import load_config
    from tempnet.train.lm_config import LMTrainConfig
    from tempnet.train.lm_model import build_model, load_tokenizer

    main = load_train_module("GPT_2").main
    common = ["objective=dro", "train.max_steps=2", "train.save_every=1", "train.keep_last=2"]
    argv = lambda out, *extra: ["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir", str(out),  # noqa: E731
                                *common, *extra]
    main(argv(tmp_path / "full"))
    main(argv(tmp_path / "crashed", "train.stop_after_steps=1"))
    main(argv(tmp_path / "crashed", "--resume"))
    cfg = load_config(LMTrainConfig, tmp_path / "full" / "config.yaml")
    fresh = build_model(cfg, load_tokenizer(cfg))
    saved = load_file(tmp_path / "full" / "checkpoint-1" / "model.safetensors")
    assert set(saved) == set(fresh.state_dict()) and "tempnet.logit" in saved
    adam = torch.load(tmp_path / "full" / "checkpoint-1" / "optimizer.pt", weights_only=True)["optimizer"]
    trainable = [p for p in fresh.parameters() if p.requires_grad]
    assert len(adam["state"]) == len(trainable) == sum(len(g["params"]) for g in adam["param_groups"])
    assert all(set(st) >= {"exp_avg", "exp_avg_sq"} for st in adam["state"].values())
    a, b = (load_file(tmp_path / d / "final" / "model.safetensors") for d in ("full", "crashed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "crashed")) == strip(metrics(tmp_path / "full"))


def test_final_model_loads_with_the_hf_integration(reference):
    from tempnet.integrations.hf import GPT2TempNetForCausalLM, tempnet_model_from_pretrained
    from transformers import AutoTokenizer

    model = tempnet_model_from_pretrained(reference / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(reference / "final")
    assert isinstance(model, GPT2TempNetForCausalLM)
    assert (model.tempnet_config.objective, model.tempnet_config.tau_min, model.tempnet_config.tau_max) == \
        ("tempnet_dro", 0.5, 5.0)
    ids = tokenizer("count one two three four", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss) and out.tau.shape == (*ids.shape, 1)
    # the loaded head reads the model's own logits: tau = TempNet(logits), and logits come back divided by it
    raw = model.lm_head(model.transformer(input_ids=ids).last_hidden_state)
    assert torch.allclose(out.tau, model.tempnet(raw), rtol=1e-5) and out.tau.std() > 0
    assert out.logits is None  # with labels the fused loss keeps no full-vocabulary tensor
    with torch.no_grad():
        gen = model(input_ids=ids)  # without labels (generation): the logits divided by tau
    assert torch.allclose(gen.logits, raw / gen.tau, rtol=1e-4, atol=1e-5)


def test_objective_names_select_the_ablation_rows(tmp_path):
    """`objective=NAME` through the real main(argv), in-process: 2 steps of each ablation row."""
    main = load_train_module("GPT_2").main
    taus = {}
    for name in ("ce", "dro", "tempnet_ce", "tempnet_dro"):
        out = tmp_path / name
        main(["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir", str(out), f"objective={name}",
              "train.max_steps=2"])
        rows = metrics(out)
        assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
        taus[name] = rows[-1]
    assert taus["ce"]["tau_mean"] == 1.0 and taus["ce"]["loss"] == taus["ce"]["ce"]  # fixed tau, plain CE
    dro = taus["dro"]  # one learned tau in its own constant-lr group, and the robust loss of that one tau
    assert dro["lr_global_tau"] == 1e-2 and "lr_tempnet" not in dro and dro["tau_min"] == dro["tau_max"]
    rho, log_v = 3.0, math.log(384)  # the debug config's rho and vocabulary
    assert dro["loss"] == pytest.approx(dro["tau_mean"] * (dro["ce"] + rho - log_v), rel=1e-5)
    assert taus["tempnet_ce"]["loss"] == taus["tempnet_ce"]["ce"]  # TempNet, no DRO: loss is CE of z / tau
    assert "lr_tempnet" in taus["tempnet_dro"] and taus["tempnet_dro"]["tau_min"] < taus["tempnet_dro"]["tau_max"]


def test_mixed_precision_paths_run(reference, tmp_path):
    """fp16 (autocast + GradScaler) and bf16 (autocast) through the real main(argv), 2 steps in-process: the
    model's matmuls (GPT-2's Conv1D) run in the autocast dtype, TempNet and its loss in float32, the saved
    weights stay float32 (master weights), and the first loss is within 1% of the float32 run's."""
    from safetensors.torch import load_file

    main = load_train_module("GPT_2").main
    fp32 = metrics(reference)[0]["loss"]
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        out = tmp_path / precision
        with ActivationDtypes(training_only=True) as activations:  # (not the fused-path probe's fp32 no-grad forward)
            main(["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir", str(out),
                  f"train.precision={precision}", "train.max_steps=2"])
        assert activations.seen["Conv1D"] == {dtype} and activations.seen["GPT2MLP"] == {dtype}, activations.seen
        assert activations.seen["TempNet"] == {torch.float32}, activations.seen
        weights = load_file(out / "final" / "model.safetensors")
        assert {v.dtype for v in weights.values()} == {torch.float32} and any(k.startswith("tempnet.") for k in weights)
        rows = metrics(out)
        assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in rows)
        assert abs(rows[0]["loss"] - fp32) < 1e-2 * fp32, (precision, rows[0]["loss"], fp32)


def test_a_run_past_one_epoch_reads_each_epoch_in_a_new_order(tmp_path, monkeypatch):
    """12 documents pack into 8 blocks: 6 steps of 4 are 3 epochs. The trainer reads every block once per
    epoch, and each epoch in another order than the one before."""
    from tempnet.data.lm import PackedBlocks

    seen = record_indices(monkeypatch, PackedBlocks)
    load_train_module("GPT_2").main(["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir",
                                     str(tmp_path), "data.synthetic_documents=12", "train.max_steps=6"])
    n = len(set(seen))
    assert n == 8 and len(seen) == 6 * 4
    epochs = [seen[k:k + n] for k in range(0, len(seen), n)]
    assert all(sorted(e) == list(range(n)) for e in epochs), epochs
    assert all(order_agreement(a, b) < 0.5 for a, b in zip(epochs, epochs[1:])), epochs


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
