"""One step of the Bimodal-CL trainer (`ClipRun.step`) on the debug config, checked from outside: its loss is
the loss function applied to the model's own features of the batch, and the step moves the model and the
TempNets (their own optimizer). Augmentation and dropout are off, so features can be recomputed."""

from __future__ import annotations

import copy

import pytest
import torch

from helpers import REPO

pytest.importorskip("timm")

DEBUG = REPO / "Bimodal-CL" / "configs" / "debug.yaml"
NO_RANDOMNESS = ["loss=isogclr_tempnet", "data.augment=false", "tempnet.dropout=0.0",
                 "model.text.config_overrides.dropout=0.0", "model.text.config_overrides.attention_dropout=0.0",
                 "model.image.kwargs.proj_drop_rate=0.0", "data.synthetic_pairs=64", "optim.warmup_steps=0"]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import ClipRun

    cfg = load_config(BimodalConfig, DEBUG, NO_RANDOMNESS)
    run = ClipRun(cfg, tmp_path_factory.mktemp("clip_run"), torch.device("cpu"))
    run.dataset.set_epoch(0)
    run.sampler.set_epoch(0)
    return run


def _expected_loss(run, batch):
    """The batch's loss by hand: features from the model's current state, a fresh copy of the TempNets
    (prototypes from this first batch, as the trainer does) and of the loss with its per-sample state."""
    images, captions, image_ids, text_ids = batch
    ids, mask = run.tokenizer(captions)
    tempnets, criterion = copy.deepcopy(run.tempnets), copy.deepcopy(run.criterion)
    with torch.no_grad():
        img, txt = run.model(images, ids, mask)  # [B, E] each
        assert not bool(tempnets.initialised)
        tempnets.init_prototypes(img, txt)
        tau_image, tau_text = tempnets(img, txt)
        out = criterion(img, txt, image_ids, text_ids, tau_image=tau_image, tau_text=tau_text)
    return out, tempnets, (tau_image, tau_text)


def test_one_step_is_the_loss_of_the_models_features_and_moves_every_trained_weight(clip_run):
    run = clip_run
    batch = next(iter(run.loader))
    expected, tempnets_at_start, (tau_image, tau_text) = _expected_loss(run, batch)
    model_before = {k: v.clone() for k, v in run.model.state_dict().items()}
    metrics = run.step(batch)
    assert float(metrics["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-5, abs=1e-6)
    for key in ("contrastive", "temperature"):
        assert float(metrics[key]) == pytest.approx(float(expected[key]), rel=1e-5, abs=1e-6), key
    assert float(metrics["tau_image"]) == pytest.approx(float(tau_image.mean()), rel=1e-5)
    assert float(metrics["tau_text"]) == pytest.approx(float(tau_text.mean()), rel=1e-5)
    assert bool(run.tempnets.initialised)
    # every TempNet parameter moved by its own optimizer (from the prototypes set on this batch)
    start = dict(tempnets_at_start.named_parameters())
    unchanged = [n for n, p in run.tempnets.named_parameters() if torch.equal(p, start[n])]
    assert not unchanged, f"the step left TempNet parameters unchanged: {unchanged}"
    assert run.opt_t.state and all(int(s["step"]) == 1 for s in run.opt_t.state.values())
    moved = [k for k, v in run.model.state_dict().items() if not torch.equal(v, model_before[k])]
    assert len(moved) > 0.9 * len(model_before), "the model's optimizer did not step"
