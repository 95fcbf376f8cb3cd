"""Config checks, optimizer groups, schedule, DeepSpeed JSON filling and the scalar-parameter fix (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch import nn

from tempnet.config import load_config
from tempnet.modules import GlobalTemperature, TempNet
from tempnet.train.engines import fill_deepspeed_config
from tempnet.train.lm_config import LMTrainConfig
from tempnet.train.optim import build_lm_optimizer, build_lm_scheduler, lm_param_groups


@pytest.mark.parametrize("override, message", [
    ("tempnet.tau_min=3.0", "tau_min must be smaller than tau_max"),
    ("tempnet.rho=-1", "rho"),
    ("model.mode=pretrain", "model.mode must be one of"),
    ("objective=robust", "objective must be one of"),
    ("train.precision=fp8", "train.precision"),
    ("train.global_batch_size=5", "multiple of"),
    ("train.stop_after_steps=0", "stop_after_steps"),
    ("optim.min_lr=1.0", "min_lr"),
    ("tempnet.lr_schedule=linear", "tempnet.lr_schedule"),
    ("train.max_steps=abc", "train.max_steps needs an integer, got 'abc'"),
    ("data.synthetic=maybe", "data.synthetic needs a boolean"),
    ("optim.betas=0.9", "optim.betas needs a list"),
    ("engine.name=deepspeed", "deepspeed_config"),
    ("data.format=chat", "data.format"),
])
def test_bad_values_are_rejected_with_the_field_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(LMTrainConfig, None, [override])


def test_frozen_mode_needs_a_learnable_temperature_and_runs_need_a_model_and_data():
    with pytest.raises(ValueError, match="no trainable temperature"):
        load_config(LMTrainConfig, None, ["model.mode=frozen", "objective=ce"])
    with pytest.raises(ValueError, match="model.base"):
        load_config(LMTrainConfig, None, []).check_runnable()
    with pytest.raises(ValueError, match="model.path"):
        load_config(LMTrainConfig, None, ["model.mode=finetune"]).check_runnable()
    with pytest.raises(ValueError, match="no training data"):
        load_config(LMTrainConfig, None, ["model.base={n_layer: 1}"]).check_runnable()
    with pytest.raises(ValueError, match="not divisible"):
        load_config(LMTrainConfig, None, ["train.micro_batch_size=4", "train.global_batch_size=8"]
                    ).train.accumulation_steps(3)


class _Toy(nn.Module):
    def __init__(self, head=None):
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10)
        self.tempnet = head if head is not None else TempNet(10, 8, 0.5, 5.0, 0.0)


def _groups(model, cfg):
    return {g["name"]: g for g in lm_param_groups(model, cfg.optim, cfg.tempnet)}


def test_param_groups_give_tempnet_its_own_lr_and_weight_decay():
    cfg = load_config(LMTrainConfig, None, ["optim.lr=1e-3", "tempnet.lr=2e-6", "optim.weight_decay=0.1",
                                            "tempnet.weight_decay=0.05"])
    model = _Toy()
    groups = _groups(model, cfg)
    assert set(groups) == {"decay", "no_decay", "tempnet_decay", "tempnet_no_decay"}
    assert groups["tempnet_decay"]["lr"] == 2e-6 and groups["tempnet_decay"]["weight_decay"] == 0.05
    assert groups["tempnet_no_decay"]["weight_decay"] == 0.0
    head = {id(p) for g in ("tempnet_decay", "tempnet_no_decay") for p in groups[g]["params"]}
    assert head == {id(p) for p in model.tempnet.parameters()}
    assert groups["decay"]["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert groups["no_decay"]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("tempnet."))  # frozen mode
    assert set(_groups(model, cfg)) == {"tempnet_decay", "tempnet_no_decay"}
    assert build_lm_optimizer(model, cfg.optim, cfg.tempnet).defaults["betas"] == (0.9, 0.95)


def test_the_global_tau_of_objective_dro_has_its_own_constant_lr():
    """The "DRO only" row: at TempNet's lr (2e-6) the one tau would hardly move in a run."""
    cfg = load_config(LMTrainConfig, None, ["objective=dro", "tempnet.lr=2e-6", "tempnet.global_lr=0.05"])
    model = _Toy(GlobalTemperature(1.0, 0.5, 5.0))
    groups = _groups(model, cfg)
    assert groups["global_tau"]["lr"] == 0.05 and groups["global_tau"]["params"] == [model.tempnet.logit]
    assert not any(g.startswith("tempnet_") for g in groups)
    opt = build_lm_optimizer(model, cfg.optim, cfg.tempnet)
    sched = build_lm_scheduler(opt, cfg.optim, cfg.tempnet, max_steps=10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert {g["name"]: g["lr"] for g in opt.param_groups}["global_tau"] == 0.05


def _kl_to_uniform(z, tau):
    p = np.exp((z - z.max()) / tau)
    p /= p.sum()
    return float(np.sum(p * np.log(p * len(z) + 1e-300)))


def test_dro_only_tau_reaches_the_dro_optimum_at_the_configured_lr():
    """With the default tempnet.global_lr the single tau of objective=dro reaches, within 300 Adam steps,
    the DRO optimum of fixed logits: the tau where KL(softmax(z / tau) || uniform) = rho (found here by
    float64 bisection). At TempNet's own lr (2e-6) it would not move."""
    import torch

    from tempnet.losses.lm import dro_lm_loss

    rho, vocab = 1.0, 64
    z = torch.randn(vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    lo, hi = 1e-3, 1e3  # KL falls as tau grows
    for _ in range(200):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if _kl_to_uniform(z.numpy(), mid) > rho else (lo, mid)
    optimum = lo
    cfg = load_config(LMTrainConfig, None, ["objective=dro", "tempnet.tau_min=0.05", "tempnet.tau_max=5.0"])
    model = _Toy(GlobalTemperature(1.0, 0.05, 5.0))
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("tempnet."))
    opt = build_lm_optimizer(model, cfg.optim, cfg.tempnet)
    sched = build_lm_scheduler(opt, cfg.optim, cfg.tempnet, max_steps=300)
    logits, labels = z.float().expand(16, vocab), torch.randint(0, vocab, (16,), generator=torch.Generator().manual_seed(1))
    for _ in range(300):
        dro_lm_loss(logits, labels, model.tempnet(logits), rho).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    tau = float(model.tempnet(logits)[0])
    assert abs(_kl_to_uniform(z.numpy(), tau) - rho) < 0.02 and tau == pytest.approx(optimum, rel=0.02), (tau, optimum)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_schedule_warms_up_then_decays_the_model_and_tempnet_as_configured(schedule):
    cfg = load_config(LMTrainConfig, None, ["optim.lr=1e-3", "optim.min_lr=1e-4", "tempnet.lr=1e-5",
                                            "optim.warmup_steps=2", f"tempnet.lr_schedule={schedule}"])
    opt = build_lm_optimizer(_Toy(), cfg.optim, cfg.tempnet)
    sched = build_lm_scheduler(opt, cfg.optim, cfg.tempnet, max_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
    model = [step["decay"] for step in lrs]
    assert model[0] == 0.0 and model[1] == pytest.approx(5e-4) and model[2] == pytest.approx(1e-3)
    assert model[-1] == pytest.approx(1e-4) and all(a >= b for a, b in zip(model[2:], model[3:]))
    tempnet = [step["tempnet_decay"] for step in lrs]
    if schedule == "constant":  # the authors' GPT-2 code: TempNet's lr reset to its value every step
        assert tempnet == [1e-5] * 11
    else:  # the model's shape, scaled to TempNet's peak: min_lr / lr of it at the end
        assert tempnet[0] == 0.0 and tempnet[2] == pytest.approx(1e-5) and tempnet[-1] == pytest.approx(1e-6)


def test_deepspeed_json_autos_are_filled_and_conflicts_refused(tmp_path):
    cfg = load_config(LMTrainConfig, None, ["train.micro_batch_size=2", "train.global_batch_size=8",
                                            "train.precision=bf16", "optim.grad_clip=0.5",
                                            "engine.name=deepspeed", "engine.deepspeed_config=x.json"])
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
                                "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                                "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2}}))
    ds = fill_deepspeed_config(path, cfg, accum=2, world_size=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (8, 2, 2)
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ValueError, match="disagrees"):
        fill_deepspeed_config(path, cfg, accum=2, world_size=2)
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="optimizer"):
        fill_deepspeed_config(path, cfg, accum=2, world_size=2)
    with pytest.raises(FileNotFoundError):
        fill_deepspeed_config(tmp_path / "missing.json", cfg, accum=2, world_size=2)
