"""Frozen TempNet on two non-LLaMA families through LLaMA-2/train.py (configs/debug.yaml, model.arch switched):
Qwen2 (the fused loss) and Gemma 2 (soft-capped logits: the full-logits path). Each trains only TempNet on the
frozen base, saves a checkpoint of its own family, resumes exactly, and 1- and 2-process runs of the same global
batches agree (1e-5), as the LLaMA runs do (test_lm_llama2.py, test_lm_engines.py). On Gemma 2 the default
`tempnet.fused_loss` (null: auto) falls back to the full-logits path and says so once; an explicit true stops
with one error line naming the reason. The 1-process runs are main(argv) in this process; the 2-process runs of
both families are one torchrun launch that trains one family, then the other (lm_runs.several_runs_cmd).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch

from helpers import OFFLINE_ENV, REPO, run, torchrun
from lm_runs import FAMILIES, metrics, several_runs_cmd, short_run, train_cmd, train_here
from tempnet.train.checkpoint import RUN_FILES

pytestmark = pytest.mark.slow


STEPS = 6
COMMON = short_run(STEPS)


def _args(family):
    return (*COMMON, *FAMILIES[family])


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def reference(request, tmp_path_factory):
    """The uninterrupted run, main(argv) in this process (lm_runs.train_here: bit for bit the numbers of
    `python LLaMA-2/train.py`, which test_an_explicit_fused_loss... runs as a subprocess), with what it logged
    through the TempNet integration's logger (a subprocess writes those lines to stderr)."""
    out = tmp_path_factory.mktemp(f"{request.param}_ref")
    logger, said = logging.getLogger("tempnet.integrations.hf"), []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logger.addHandler(handler)
    try:
        train_here("LLaMA-2", out, *_args(request.param))
    finally:
        logger.removeHandler(handler)
    return request.param, out, said


def test_frozen_run_trains_only_tempnet_in_its_family(reference):
    family, out, said = reference
    rows = metrics(out)
    assert len(rows) == STEPS and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    stored = json.loads((out / "final" / "config.json").read_text())
    assert stored["model_type"] == f"{family}_tempnet" and stored["tempnet"]["rho"] == 3.0
    from transformers import AutoModelForCausalLM

    from tempnet.integrations.hf import tempnet_class_for, tempnet_model_from_pretrained

    final = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(final) is tempnet_class_for(family)
    base = tempnet_model_from_pretrained(out / "debug_assets" / f"base-{family}", fresh_tempnet=True).state_dict()
    state = final.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in base.items() if not k.startswith("tempnet."))
    assert not all(torch.equal(v, state[k]) for k, v in base.items() if k.startswith("tempnet."))  # TempNet trained
    # the fused loss where it reproduces the family's logits; Gemma 2's soft-capping takes the full-logits path
    declined = [line for line in said if "fused loss is not used" in line]
    assert len(declined) == (family == "gemma2"), said  # said once where the family declines it


def test_an_explicit_fused_loss_on_a_family_that_declines_it_is_one_error_line(tmp_path):
    """tempnet.fused_loss=true on Gemma 2 (soft-capped logits): exit 2, one `error:` line with the reason,
    no run files (the default, auto, takes the full-logits path: test_frozen_run_trains_only_tempnet_in_its_family)."""
    cmd = [sys.executable, *train_cmd("LLaMA-2", tmp_path, *_args("gemma2"), "tempnet.fused_loss=true")]
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, env=OFFLINE_ENV, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "tempnet.fused_loss=true: the family's forward post-processes its LM head's output" in line, line
    assert "gemma2" in line and "tempnet.fused_loss=null" in line, line
    assert not [p.name for p in tmp_path.glob("*") if p.name in RUN_FILES or p.name.startswith("checkpoint")]


def test_resume_reproduces_the_uninterrupted_losses(reference, tmp_path):
    family, out, _ = reference
    train_here("LLaMA-2", tmp_path, *_args(family), "train.stop_after_steps=3")
    train_here("LLaMA-2", tmp_path, *_args(family), resume=True)
    a, b = metrics(out), metrics(tmp_path)
    for key in ("loss", "ce", "tau_mean", "tau_min", "tau_max", "lr_tempnet", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The 2-process runs (torchrun, DDP) of both families, in one launch: LLaMA-2/train.py's main(argv) for
    one family, then for the other, in the same 2 processes (lm_runs.several_runs_cmd). family -> output dir."""
    root = tmp_path_factory.mktemp("two_processes")
    outs = {family: root / family for family in sorted(FAMILIES)}
    argvs = [train_cmd("LLaMA-2", out, *_args(family))[1:] for family, out in outs.items()]
    run([*torchrun(2), *several_runs_cmd("LLaMA-2", root, *argvs)])
    return outs


def test_one_and_two_processes_agree(reference, two_processes):
    family, out, _ = reference
    two = two_processes[family]
    a, b = metrics(out), metrics(two)  # (a frozen run logs TempNet's lr only: lm_runs.assert_runs_match wants "lr")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for key in ("loss", "ce", "tau_mean"):
        assert max(abs(x[key] - y[key]) for x, y in zip(a, b)) <= 1e-5, (key, a, b)
    assert max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b)) <= 1e-5 * max(r["grad_norm"] for r in a)
    assert [r["lr_tempnet"] for r in a] == [r["lr_tempnet"] for r in b]
    assert json.loads((two / "final" / "config.json").read_text())["model_type"] == f"{family}_tempnet"
    assert (two / f"checkpoint-{STEPS}" / "rng_state_1.pt").exists()  # a run of 2 ranks
