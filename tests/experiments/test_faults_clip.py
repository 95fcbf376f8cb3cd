"""Real faults in the CLIP trainer, through the real `Bimodal-CL/train.py` (see test_faults.py, its LLM twin):
SIGKILL while a checkpoint or the best checkpoint is written or mid-step, SIGTERM / SIGINT mid-epoch,
divergence, a resume with a changed loss argument; `--resume` ends exactly where an uninterrupted run ends
(metrics, evaluations, TempNets, the per-sample state, the best checkpoint), and a NaN model never scores."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from bimodal_runs import argv, metrics, run_main, train_module
from fault_runs import cli_error_line, error_line, faulty, hashes, python_run, same_run, same_weights

pytestmark = pytest.mark.slow


# ---- the CLIP trainer -----------------------------------------------------------------------------------
CLIP = ["loss=isogclr_tempnet", "train.epochs=2", "train.save_every=5", "train.keep_last=4",
        "train.progress_bar=false", "eval.select_best=synthetic/r_mean"]


def _clip(out, *extra):
    return ["Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", out, *CLIP, *extra]


@pytest.fixture(scope="module")
def clip_reference(tmp_path_factory):
    """The uninterrupted run, in-process (its numbers are what counts; every faulted run is train.py's process)."""
    out = tmp_path_factory.mktemp("clip_faults") / "reference"
    run_main(out, *CLIP)
    return out


def _same_clip_run(out, reference):
    same_run(out, reference)
    assert (out / "eval_log.jsonl").read_text() == (reference / "eval_log.jsonl").read_text()  # rewound, no repeat
    assert json.loads((out / "eval.json").read_text()) == json.loads((reference / "eval.json").read_text())
    same_weights(out / "checkpoint-20" / "tempnets.safetensors", reference / "checkpoint-20" / "tempnets.safetensors")
    state_a = torch.load(out / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    state_b = torch.load(reference / "checkpoint-20" / "optimizer.pt", weights_only=True)["criterion"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_b)  # the per-sample moving averages too
    best, best_ref = json.loads((out / "best.json").read_text()), json.loads((reference / "best.json").read_text())
    assert (best["step"], best["value"]) == (best_ref["step"], best_ref["value"])
    assert best["checkpoint"] == str(out / "checkpoint-best")
    same_weights(out / "checkpoint-best" / "model.safetensors", reference / "checkpoint-best" / "model.safetensors")


def test_clip_killed_and_signalled_at_every_point_then_resumed_equals_an_uninterrupted_run(clip_reference, tmp_path,
                                                                                          capsys):
    """One run through every fault, each resumed from what the last one left (the resume after each fault is the
    next fault's run; a resume that restored anything wrongly shows at the end): SIGKILL in epoch 1's best-checkpoint
    update, SIGTERM mid-epoch, SIGKILL mid-step (after an update, its row not logged; the row before it logged after
    the last save), SIGINT, SIGKILL while checkpoint-20's files are written (after epoch 2's evaluation was logged);
    the last resume ends exactly where the uninterrupted run ends. Then a resume with a changed loss argument,
    through train.py's CLI wrapper in-process (exit 2, one `error:` line), changes no file."""
    out = tmp_path / "run"
    faulty(tmp_path, "best", 10, _clip(out), expect=-signal.SIGKILL)  # epoch 1 saved, its best copy unfinished
    assert (out / "checkpoint-10" / "COMPLETE").is_file() and not (out / "best.json").exists()
    proc = faulty(tmp_path, "SIGTERM", 11, [*_clip(out), "--resume"], expect=128 + signal.SIGTERM)
    assert f"resumed from {out / 'checkpoint-10'}" in proc.stderr
    assert json.loads((out / "best.json").read_text())["step"] == 10  # the interrupted update was finished
    assert proc.stderr.splitlines()[-1] == f"preempted at step 12: saved {out / 'checkpoint-12'}"
    assert json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["step_in_epoch"] == 2  # mid-epoch
    # killed in step 17: step 15 saved (save_every=5), step 16 logged but not saved, step 17 updated, not logged
    faulty(tmp_path, "step", 17, [*_clip(out), "--resume"], expect=-signal.SIGKILL)
    assert (out / "checkpoint-15" / "COMPLETE").is_file() and [r["step"] for r in metrics(out)][-2:] == [15, 16]
    proc = faulty(tmp_path, "SIGINT", 18, [*_clip(out), "--resume"], expect=128 + signal.SIGINT)
    assert f"resumed from {out / 'checkpoint-15'}" in proc.stderr  # the periodic checkpoint
    assert proc.stderr.splitlines()[-1] == f"preempted at step 19: saved {out / 'checkpoint-19'}"
    faulty(tmp_path, "checkpoint", 20, [*_clip(out), "--resume"], expect=-signal.SIGKILL)
    # killed after epoch 2's evaluation was logged, before its checkpoint was complete
    assert len((out / "eval_log.jsonl").read_text().splitlines()) == 2 and not (out / "checkpoint-20").exists()
    python_run(*_clip(out), "--resume")
    _same_clip_run(out, clip_reference)

    before = hashes(out)  # a changed loss argument is refused as for the LLM, nothing rewritten
    from tempnet.train.cli import run_trainer

    line = cli_error_line(lambda a: run_trainer(train_module().main, a),
                          argv(out, *CLIP, "loss_args.gamma=0.5", "train.epochs=3", resume=True), capsys)
    assert "['loss_args.gamma']" in line and hashes(out) == before


def test_clip_divergence_stops_with_status_3_and_a_nan_model_never_scores(clip_reference, tmp_path):
    out = tmp_path / "run"
    # the update of step 3 leaves the weights NaN: step 4 diverges on every machine, before the first save (5)
    message = error_line(faulty(tmp_path, "nan", 3, _clip(out), expect=3, env={"TEMPNET_CHECKS": "0"}))
    assert message.startswith("error: training diverged at step 4: ") and "no checkpoint was written before it" in message
    assert not any(out.glob("checkpoint-*")) and not (out / "eval.json").exists() and not (out / "best.json").exists()

    broken = tmp_path / "broken"  # a model whose weights are NaN, evaluated on its own: NaN, never 100
    (broken / "checkpoint-20").mkdir(parents=True)
    for name in ("config.yaml", "trainer_state.json"):
        (broken / "checkpoint-20" / name).write_bytes((clip_reference / "checkpoint-20" / name).read_bytes())
    from safetensors.torch import save_file

    weights = load_file(clip_reference / "checkpoint-20" / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              broken / "checkpoint-20" / "model.safetensors")
    run_main(broken / "eval", "data.synthetic=true", evaluate=broken / "checkpoint-20")  # in-process: numbers only
    record = json.loads((broken / "eval" / "eval.json").read_text())
    scores = {k: v for k, v in record.items() if k.endswith(("_r1", "zeroshot_top1", "r_mean"))}
    assert scores and all(v != v for v in scores.values()), scores  # NaN
