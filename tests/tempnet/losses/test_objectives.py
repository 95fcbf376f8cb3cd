"""The LM objective registry: one class plus one `OBJECTIVES` entry is a new objective, in both loss paths."""

from __future__ import annotations

import pytest
import torch

from tempnet.losses import OBJECTIVES, Objective, TempNetSettings, build_objective, tempered_ce_loss
from tempnet.losses.fused import linear_tempnet_dro_loss
from tempnet.modules import GlobalTemperature


class GlobalTauCE(Objective):
    """A toy objective: one learned tau for every position, plain tempered cross-entropy."""

    robust = False

    def build_head(self):
        s = self.settings
        return GlobalTemperature(s.tau, s.tau_min, s.tau_max)


@pytest.fixture
def global_ce(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "global_ce", GlobalTauCE)
    return "global_ce"


def test_a_registered_objective_trains_a_step_in_both_loss_paths(global_ce):
    torch.manual_seed(0)
    n, d, v = 12, 8, 15
    h = torch.randn(n, d, requires_grad=True)
    w = torch.randn(v, d, requires_grad=True)
    y = torch.randint(0, v, (n,))
    y[3] = -100
    objective = build_objective(global_ce, v, tau=0.7, tau_min=0.1, tau_max=2.0)
    assert isinstance(objective.temperature, GlobalTemperature) and objective.robust is False
    plain = objective(h @ w.t(), y)
    assert plain["loss"].item() == pytest.approx(tempered_ce_loss(h @ w.t(), y, 0.7).item(), rel=1e-6)
    fused = linear_tempnet_dro_loss(h, w, y, objective.temperature, objective.rho, objective=global_ce, chunk_size=5)
    assert fused["loss"].item() == pytest.approx(plain["loss"].item(), rel=1e-6)
    grads = {}
    for name, terms in (("plain", plain), ("fused", fused)):
        grads[name] = torch.autograd.grad(terms["loss"], [h, w, objective.temperature.logit])
    for a, b in zip(grads["plain"], grads["fused"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    before = objective.temperature.logit.detach().clone()
    optimizer = torch.optim.SGD(objective.parameters(), lr=0.5)
    objective(h.detach() @ w.detach().t(), y)["loss"].backward()
    optimizer.step()
    assert not torch.equal(objective.temperature.logit, before)  # the objective's tau is trained


def test_objective_settings_are_parsed_once_for_a_vocabulary():
    settings = TempNetSettings(target_entropy=1.0)
    objective = OBJECTIVES["tempnet_dro"](settings, 100)
    assert objective.robust and objective.rho == pytest.approx(torch.log(torch.tensor(100.0)).item() - 1.0)
    assert OBJECTIVES["ce"].trains_temperature is False and not list(OBJECTIVES["ce"](settings, 100).build_head()
                                                                      .parameters())
    with pytest.raises(ValueError, match="unknown objective 'foo'"):
        linear_tempnet_dro_loss(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long),
                                objective.build_head(), 1.0, objective="foo")
