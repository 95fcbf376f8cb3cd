"""Config checks, optimizer groups, schedule, DeepSpeed JSON filling and the scalar-parameter fix (CPU, seconds)."""

from __future__ import annotations

import json

import pytest
from torch import nn

from tempnet.config import load_config
from tempnet.modules import TempNet
from tempnet.train.engines import fill_deepspeed_config
from tempnet.train.lm_config import LMTrainConfig
from tempnet.train.lm_optim import build_optimizer, build_scheduler, param_groups


@pytest.mark.parametrize("override, message", [
    ("tempnet.tau_min=3.0", "tau_min must be smaller than tau_max"),
    ("tempnet.rho=-1", "rho"),
    ("model.mode=pretrain", "model.mode must be one of"),
    ("objective=robust", "objective must be one of"),
    ("train.precision=fp8", "train.precision"),
    ("train.global_batch_size=5", "multiple of"),
    ("train.stop_after_steps=0", "stop_after_steps"),
    ("optim.min_lr=1.0", "min_lr"),
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
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10)
        self.tempnet = TempNet(10, 8, 0.5, 5.0, 0.0)


def test_param_groups_give_tempnet_its_own_lr_and_no_weight_decay():
    cfg = load_config(LMTrainConfig, None, ["optim.lr=1e-3", "optim.tempnet_lr=2e-6", "optim.weight_decay=0.1"])
    model = _Toy()
    groups = {g["name"]: g for g in param_groups(model, cfg.optim)}
    assert set(groups) == {"decay", "no_decay", "tempnet"}
    assert groups["tempnet"]["lr"] == 2e-6 and groups["tempnet"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["tempnet"]["params"]} == {id(p) for p in model.tempnet.parameters()}
    assert groups["decay"]["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in groups["decay"]["params"])
    assert groups["no_decay"]["weight_decay"] == 0.0
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("tempnet."))  # frozen mode
    assert [g["name"] for g in param_groups(model, cfg.optim)] == ["tempnet"]
    assert build_optimizer(model, cfg.optim).defaults["betas"] == (0.9, 0.95)


def test_schedule_warms_up_then_decays_every_group_to_its_min_ratio():
    cfg = load_config(LMTrainConfig, None, ["optim.lr=1e-3", "optim.min_lr=1e-4", "optim.tempnet_lr=1e-5",
                                            "optim.warmup_steps=2"])
    opt = build_optimizer(_Toy(), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, max_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0][0] == 0.0 and lrs[1][0] == pytest.approx(5e-4) and lrs[2][0] == pytest.approx(1e-3)
    assert lrs[-1][0] == pytest.approx(1e-4) and lrs[-1][-1] == pytest.approx(1e-6)  # min_lr / lr of each peak
    assert all(a[0] >= b[0] for a, b in zip(lrs[2:], lrs[3:]))


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
