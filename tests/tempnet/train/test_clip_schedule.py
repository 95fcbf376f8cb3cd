"""The CLIP trainer's learning-rate schedule (per step, or per epoch as the authors' code, warm-up from a start lr)
and the best-checkpoint selection."""

import json
import math

import pytest

from tempnet.errors import ConfigError
from tempnet.train.clip_trainer import keep_if_best
from tempnet.train.optim import warmup_cosine


def test_per_epoch_cosine_with_a_warm_up_from_a_start_lr():
    lr, start, min_lr, per_epoch, epochs = 8e-4, 1e-5, 1e-5, 10, 4
    f = warmup_cosine(5, per_epoch * epochs, min_lr / lr, start / lr, steps_per_epoch=per_epoch)
    lrs = [lr * f(step) for step in range(per_epoch * epochs)]
    assert lrs[0] == pytest.approx(start) and lrs[5] == pytest.approx(lr)  # warm-up from 1e-5 to lr over 5 steps
    assert lrs[1] == pytest.approx(start + (lr - start) / 5)
    for epoch in range(1, epochs):  # after the warm-up: one value per epoch, the cosine of epoch / epochs
        expected = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        assert lrs[epoch * per_epoch: (epoch + 1) * per_epoch] == pytest.approx([expected] * per_epoch)
    per_step = warmup_cosine(5, 40, min_lr / lr)  # the default: from 0, moving every step
    assert per_step(0) == 0.0 and per_step(6) != per_step(7)


def test_the_best_checkpoint_is_kept_and_a_bad_key_is_named(tmp_path):
    ckpts = []
    for step in (10, 20, 30):
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "model.safetensors").write_text(str(step))
        ckpts.append(path)
    assert keep_if_best(tmp_path, ckpts[0], {"epoch": 1, "step": 10, "coco_val/r_mean": 40.0}, "coco_val/r_mean")
    assert keep_if_best(tmp_path, ckpts[1], {"epoch": 2, "step": 20, "coco_val/r_mean": 45.0}, "coco_val/r_mean")
    assert not keep_if_best(tmp_path, ckpts[2], {"epoch": 3, "step": 30, "coco_val/r_mean": 44.0}, "coco_val/r_mean")
    assert (tmp_path / "checkpoint-best" / "model.safetensors").read_text() == "20"
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 2
    with pytest.raises(ConfigError, match="select_best='coco/r1' is not a key"):
        keep_if_best(tmp_path, ckpts[2], {"epoch": 3, "step": 30, "r_mean": 1.0}, "coco/r1")


@pytest.mark.parametrize("init", ["features", "projections"])
def test_prototypes_come_from_the_first_batch_as_configured(tmp_path, init):
    """The image TempNet's prototypes are the first global batch's text embeddings, normalised ("features")
    or the raw projections ("projections", the authors'); TempNet's lr is tiny so one step keeps them."""
    import torch

    from helpers import REPO
    from tempnet.config import load_config
    from tempnet.train.clip_config import BimodalConfig
    from tempnet.train.clip_trainer import ClipRun

    cfg = load_config(BimodalConfig, REPO / "Bimodal-CL/configs/debug.yaml", [
        "loss=isogclr_tempnet", "data.augment=false", "tempnet.dropout=0.0", "model.text.config_overrides.dropout=0.0",
        "model.text.config_overrides.attention_dropout=0.0", "model.image.kwargs.proj_drop_rate=0.0",
        "data.synthetic_pairs=64", f"tempnet.prototype_init={init}", "tempnet.lr=1e-9"])
    run = ClipRun(cfg, tmp_path, torch.device("cpu"))
    run.dataset.set_epoch(0)
    run.sampler.set_epoch(0)
    batch = next(iter(run.loader))
    images, captions = batch[0], batch[1]
    ids, mask = run.tokenizer(captions)
    with torch.no_grad():
        _, text = run.model(images, ids, mask, normalize=init == "features")
    run.step(batch)
    m = run.tempnets.image.num_prototypes
    assert torch.allclose(run.tempnets.image.prototypes, text[:m], atol=1e-5)
    norms = run.tempnets.image.prototypes.norm(dim=-1)
    assert torch.allclose(norms, torch.ones(m), atol=1e-5) is (init == "features")
