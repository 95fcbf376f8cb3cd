"""A contrastive loss is one class plus one entry in tempnet.losses.CONTRASTIVE_LOSSES: a toy loss registered that
way (with and without TempNets) is accepted by the config, listed by --help, built by the trainer from its own
loss_args and trained by one `ClipRun.step` (debug config, CPU, no randomness)."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import REPO
from tempnet.losses import CONTRASTIVE_LOSSES, ContrastiveLoss

pytest.importorskip("timm")

DEBUG = REPO / "Bimodal-CL" / "configs" / "debug.yaml"
NO_RANDOMNESS = ["data.augment=false", "tempnet.dropout=0.0", "model.text.config_overrides.dropout=0.0",
                 "model.text.config_overrides.attention_dropout=0.0", "model.image.kwargs.proj_drop_rate=0.0",
                 "data.synthetic_pairs=64", "optim.warmup_steps=0", "loss_args.tau=0.5"]


class AlignLoss(ContrastiveLoss):
    """Toy: scale * mean_i (1 - <I_i, T_i>), matched pairs only (scale = 1 / loss_args.tau)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    @classmethod
    def from_config(cls, args, num_samples: int) -> AlignLoss:
        return cls(scale=1.0 / args.tau)

    def forward(self, image_features, text_features, image_ids, text_ids, tau_image=None, tau_text=None):
        assert (tau_image is not None) == self.takes_tempnets and (tau_text is not None) == self.takes_tempnets
        weight = self.scale if tau_image is None else 1.0 / (tau_image + tau_text)  # [B] with TempNets
        loss = (weight * (1 - (image_features * text_features).sum(-1))).mean()
        tau = torch.full((), 1.0 / self.scale) if tau_image is None else tau_image.detach().mean()
        return {"loss": loss, "contrastive": loss.detach(), "tau_image": tau, "tau_text": tau}


class AlignTempNetLoss(AlignLoss):
    """Toy with TempNets: mean_i (1 - <I_i, T_i>) / (tau_image_i + tau_text_i)."""

    takes_tempnets = True


def _run(monkeypatch, tmp_path, loss_cls):
    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import ClipRun

    monkeypatch.setitem(CONTRASTIVE_LOSSES, "toy", loss_cls)  # the one registry entry
    cfg = load_config(BimodalConfig, DEBUG, ["loss=toy", *NO_RANDOMNESS])
    run = ClipRun(cfg, tmp_path, torch.device("cpu"))
    run.dataset.set_epoch(0)
    run.sampler.set_epoch(0)
    return run


def test_an_unregistered_loss_is_refused_and_a_registered_one_is_listed(monkeypatch):
    from tempnet.config import load_config
    from tempnet.errors import ConfigError
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import _parser

    with pytest.raises(ConfigError, match=r"unknown loss 'toy'; choose one of clip \| .* \| isogclr_tempnet$"):
        load_config(BimodalConfig, DEBUG, ["loss=toy"])
    monkeypatch.setitem(CONTRASTIVE_LOSSES, "toy", AlignLoss)
    assert load_config(BimodalConfig, DEBUG, ["loss=toy"]).loss == "toy"
    assert "isogclr_tempnet | toy" in " ".join(_parser("x").format_help().split())


@pytest.mark.parametrize("loss_cls", [AlignLoss, AlignTempNetLoss], ids=["plain", "tempnets"])
def test_a_registered_toy_loss_trains_one_clip_step(monkeypatch, tmp_path, loss_cls):
    run = _run(monkeypatch, tmp_path, loss_cls)
    assert type(run.criterion) is loss_cls and run.criterion.scale == pytest.approx(2.0)  # from loss_args.tau
    assert (run.tempnets is not None) == loss_cls.takes_tempnets
    batch = next(iter(run.loader))
    images, captions, image_ids, text_ids = batch
    ids, mask = run.tokenizer(captions)
    with torch.no_grad():  # the loss by hand, from the model's (and a copy of the TempNets') state before the step
        img, txt = run.model(images, ids, mask)
        taus = {}
        if loss_cls.takes_tempnets:
            tempnets = copy.deepcopy(run.tempnets)
            tempnets.init_from_first_batch(img, txt, lambda: run.model(images, ids, mask, normalize=False))
            taus = dict(zip(("tau_image", "tau_text"), tempnets(img, txt)))
        expected = loss_cls(2.0)(img, txt, image_ids, text_ids, **taus)["loss"]
    model_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    tempnets_before = None if run.tempnets is None else copy.deepcopy(run.tempnets)
    metrics = run.step(batch)
    assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
    moved = [k for k, v in run.model.state_dict().items() if not torch.equal(v, model_before[k])]
    assert len(moved) > 0.9 * len(model_before), "the model's optimizer did not step"
    if loss_cls.takes_tempnets:  # the TempNets got the loss's gradient and their optimizer stepped
        assert bool(run.tempnets.initialised) and float(metrics["grad_norm_tempnet"]) > 0
        assert not torch.equal(run.tempnets.image.proj.weight, tempnets_before.image.proj.weight)
    else:
        assert run.opt_t is None and "lr_tempnet" not in metrics
