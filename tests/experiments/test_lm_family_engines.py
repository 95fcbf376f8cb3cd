"""DeepSpeed ZeRO-1/2/3 and accelerate on two non-LLaMA families, frozen and finetune, 2 processes (gloo, CPU).

Qwen2 (the fused loss, except under ZeRO-3 where the full-logits path serves) and Gemma 2 (soft-capped logits:
always the full-logits path), through the LLaMA debug configs with `model.arch` switched: LLaMA-2's (frozen:
only TempNet trains) and LLaMA-1's (finetune: everything trains). Each of the 4 runs below is one engine on one
family in one mode (every engine once, each family in both modes; the full product of 16 would cost about 40-110 s
a run on 2 cores). Each run: finite losses, a `final/` checkpoint of its own
family that loads back through `tempnet_model_from_pretrained` with the logged run's weights (frozen: the base
untouched, TempNet moved; finetune: both moved), and one DeepSpeed and one accelerate run resume exactly from their
checkpoint.

Each test is one launch: with a resume, the launched processes run the uninterrupted run, then a run stopped after
step 2 (train.stop_after_steps: checkpoint-2, no final/) and its --resume, in turn (lm_runs.several_runs_cmd: the
folder's main(argv) per run in the same processes, one process group for all).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import accelerate_launch, torchrun
from lm_runs import FAMILIES, metrics, run, several_runs_cmd, short_run, train_cmd

pytestmark = pytest.mark.slow


STEPS = 4
COMMON = short_run(STEPS)
MODES = {"frozen": "LLaMA-2", "finetune": "LLaMA-1"}  # the folder whose debug.yaml is that mode
ENGINES = {"zero1": ("engine.name=deepspeed", "engine.deepspeed_config=GPT_2/configs/ds_zero1.json"),
           "zero2": ("engine.name=deepspeed", "engine.deepspeed_config=GPT_2/configs/ds_zero2.json"),
           "zero3": ("engine.name=deepspeed", "engine.deepspeed_config=GPT_2/configs/ds_zero3.json"),
           "accelerate": ("engine.name=accelerate",)}
#: (family, mode, engine, resume too): each engine once, each family in both modes, a resume under DeepSpeed and
#: under accelerate. ZeRO-3 makes its own debug assets (rank 0 builds the base model outside ZeRO-3's zero.Init).
RUNS = [("qwen2", "frozen", "zero1", True), ("gemma2", "finetune", "zero2", False),
        ("gemma2", "frozen", "zero3", False), ("qwen2", "finetune", "accelerate", True)]


def _launch(engine: str, family: str, mode: str, runs: list, script_dir):
    """One 2-process launch (torchrun, or accelerate launch) of RUNS: (output dir, extra overrides, resume)."""
    argvs = [train_cmd(MODES[mode], out, *COMMON, *FAMILIES[family], *ENGINES[engine], *extra, resume=resume)[1:]
             for out, extra, resume in runs]
    if engine == "accelerate":
        launcher = accelerate_launch(2, "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no",
                                     "--dynamo_backend", "no")
    else:
        launcher = torchrun(2)
    return run([*launcher, *several_runs_cmd(MODES[mode], script_dir, *argvs)], timeout=600)


@pytest.mark.parametrize("family,mode,engine,resume", RUNS, ids=[f"{f}-{m}-{e}" for f, m, e, _ in RUNS])
def test_two_process_engine_run_of_a_family(family, mode, engine, resume, tmp_path):
    from transformers import AutoModelForCausalLM

    from tempnet.integrations.hf import tempnet_class_for, tempnet_model_from_pretrained

    out, again = tmp_path / "first", tmp_path / "resumed"
    resumes = [(again, ("train.stop_after_steps=2",), False), (again, (), True)] if resume else []
    proc = _launch(engine, family, mode, [(out, (), False), *resumes], tmp_path)
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss", "ce", "tau_mean", "grad_norm")), rows
    stored = json.loads((out / "final" / "config.json").read_text())
    assert stored["model_type"] == f"{family}_tempnet" and stored["tempnet"]["rho"] == 3.0
    final = tempnet_model_from_pretrained(out / "final")
    assert type(final) is tempnet_class_for(family)
    assert type(AutoModelForCausalLM.from_pretrained(out / "final")) is type(final)
    start = tempnet_model_from_pretrained(out / "debug_assets" / f"base-{family}", fresh_tempnet=True).state_dict()
    state = final.state_dict()
    base_same = all(torch.equal(v, state[k]) for k, v in start.items() if not k.startswith("tempnet."))
    assert base_same is (mode == "frozen"), "the base trains exactly when the mode is finetune"
    assert not all(torch.equal(v, state[k]) for k, v in start.items() if k.startswith("tempnet."))  # TempNet trained
    with torch.no_grad():  # the checkpoint runs: finite loss and tau from the saved weights
        ids = torch.arange(3, 19)[None]
        loaded = final.eval()(input_ids=ids, labels=ids)
    assert torch.isfinite(loaded.loss) and bool((loaded.tau > 0).all())
    if resume:  # stopped after step 2, resumed from checkpoint-2 with the same engine: the same losses
        assert f"resumed from {again / 'checkpoint-2'}" in proc.stderr, proc.stderr[-3000:]
        assert (again / "final").is_dir() and (again / f"checkpoint-{STEPS}" / "COMPLETE").is_file()
        assert [r["step"] for r in metrics(again)] == list(range(1, STEPS + 1))
        for key in ("loss", "ce", "tau_mean", "grad_norm"):
            assert [r[key] for r in metrics(again)] == [r[key] for r in rows], key
