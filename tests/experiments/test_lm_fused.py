"""The LLM trainer with the fused loss (`tempnet.fused_loss`, the default) against the full-logits path:
the same run logs the same losses, temperatures and gradient norms over several steps.

Tolerance: 1e-5 relative. The two paths sum the same float32 terms in another order (the fused op goes
chunk by chunk of tokens), and the runs measured here agree to ~1e-7; a wrong term (a missing 1/tau, the
rho - log V term, a gradient scaled by the chunk count) moves the loss or the grad norm by percents.
"""

from __future__ import annotations

import pytest

from lm_runs import REPO, metrics
from tempnet.train.lm_trainer import main

pytestmark = pytest.mark.slow



@pytest.mark.parametrize("objective", ["tempnet_dro", "dro"])
def test_fused_and_full_logits_runs_agree(tmp_path, objective):
    runs = {}
    for fused in (True, False):
        out = tmp_path / f"fused_{fused}"
        main(["--config", str(REPO / "GPT_2/configs/debug.yaml"), "--output-dir", str(out), f"objective={objective}",
              f"tempnet.fused_loss={str(fused).lower()}", "train.max_steps=6", "train.progress_bar=false",
              "train.save_every=6"])
        runs[fused] = metrics(out)
    for a, b in zip(runs[True], runs[False]):
        for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key, a[key], b[key])
    assert runs[True][-1]["loss"] < runs[True][0]["loss"]
