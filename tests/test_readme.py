"""The README's core-API example runs as written (so the first code a reader copies works)."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_core_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    core = [b for b in blocks if "from tempnet import TempNet, PrototypeTempNet, dro_lm_loss" in b]
    assert len(core) == 1, "the README's core-API example is missing"
    scope: dict = {}
    exec(compile(core[0], "README.md", "exec"), scope)
    assert scope["tau"].shape == (8, 1) and scope["tempnet"].proj[0].weight.grad is not None
    assert set(scope["terms"]) == {"loss", "ce", "tau_mean", "tau_min", "tau_max"}
    assert scope["img"].shape == (256, 256) and bool(scope["loss_fn"].image_state.seen[:256].all())
