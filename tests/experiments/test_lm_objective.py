"""A new LM objective is one class plus one registry entry: the LLM trainer trains it (fused and full-logits
paths agree) and the saved model evaluates with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lm_runs import REPO, metrics
from tempnet.losses.objectives import OBJECTIVES, Objective
from tempnet.modules import GlobalTemperature
from tempnet.train.lm_trainer import main

pytestmark = pytest.mark.slow



class GlobalTauCE(Objective):
    """A toy objective: one learned tau for every position, plain tempered cross-entropy."""

    robust = False

    def build_head(self):
        s = self.settings
        return GlobalTemperature(s.tau, s.tau_min, s.tau_max)


def test_a_registered_objective_trains_and_evaluates(tmp_path, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "global_ce", GlobalTauCE)
    runs = {}
    for fused in (True, False):
        out = tmp_path / f"fused_{fused}"
        main(["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir", str(out), "objective=global_ce",
              "tempnet.tau=0.8", f"tempnet.fused_loss={str(fused).lower()}", "train.max_steps=3",
              "train.progress_bar=false", "train.save_every=3"])
        runs[fused] = metrics(out)
    for a, b in zip(runs[True], runs[False]):
        for key in ("loss", "ce", "tau_mean", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key, a[key], b[key])
    first, last = runs[True][0], runs[True][-1]
    assert first["tau_mean"] == pytest.approx(0.8, rel=1e-6) and last["tau_mean"] != first["tau_mean"]  # tau trains
    assert first["loss"] == pytest.approx(first["ce"], rel=1e-6)  # the tempered CE, not the robust loss

    from tempnet.integrations.hf import tempnet_model_from_pretrained

    model = tempnet_model_from_pretrained(tmp_path / "fused_True" / "final").eval()
    assert isinstance(model.tempnet, GlobalTemperature) and model.tempnet_config.objective == "global_ce"
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        scored = model(input_ids=ids, labels=ids)
        scaled = model(input_ids=ids).logits  # logits / tau
    expected = F.cross_entropy(scaled[:, :-1].reshape(-1, scaled.shape[-1]), ids[:, 1:].reshape(-1))
    assert scored.loss.item() == pytest.approx(expected.item(), rel=1e-5)
