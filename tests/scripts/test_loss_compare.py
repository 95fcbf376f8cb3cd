"""scripts/loss_compare.py as a user runs it: run directories and curve files in, the first step and key that
moved out (exit 1), agreement within the relative tolerance (exit 0), bad input as one error line (exit 2)."""

import json
import subprocess
import sys

from helpers import OFFLINE_ENV, REPO, load_module

STEPS = [{"step": 1, "loss": 3.0114, "ce": 5.9621, "tau_mean": 1.0, "tau_min": 1.0, "tau_max": 1.0, "lr": 1.2e-06,
          "grad_norm": 3.23, "tokens_per_s": 751.2},
         {"step": 2, "loss": 3.0128, "ce": 5.9768, "tau_mean": 0.99557, "tau_min": 0.99557, "tau_max": 0.99557,
          "lr": 2.4e-06, "grad_norm": 3.14, "tokens_per_s": 1998.8}]
EVAL = {"epoch": 1, "step": 2, "checkpoint": "x/checkpoint-2", "synthetic/img_r1": 3.3333335, "img_r1": 3.3333335}


def _run_dir(path, steps=STEPS, evaluation=EVAL):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    if evaluation is not None:
        (path / "eval.json").write_text(json.dumps(evaluation))
    return path


def _compare(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "loss_compare.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=OFFLINE_ENV, timeout=120)


def test_identical_runs_agree_and_a_curve_keeps_loss_ce_tau_and_the_evaluation(tmp_path):
    a = _run_dir(tmp_path / "a")
    done = _compare(a, _run_dir(tmp_path / "b"))
    assert done.returncode == 0 and "agrees" in done.stdout, done.stdout + done.stderr
    curve = load_module("loss_compare", REPO / "scripts" / "loss_compare.py").curve(a)
    assert [sorted(s) for s in curve["steps"]] == [["ce", "loss", "step", "tau_max", "tau_mean", "tau_min"]] * 2
    assert curve["eval"] == {"synthetic/img_r1": 3.3333335, "img_r1": 3.3333335}  # no positions, no paths


def test_the_first_step_and_key_that_moved_is_named(tmp_path):
    golden = tmp_path / "golden.json"
    a = _run_dir(tmp_path / "a")
    golden.write_text(json.dumps({"steps": [{k: v for k, v in r.items() if k in ("step", "loss", "ce", "tau_mean")}
                                            for r in STEPS], "eval": {"synthetic/img_r1": 3.3333335}}))
    assert _compare(golden, a).returncode == 1  # the run holds keys the golden curve lacks (tau_max, img_r1)
    steps = [{k: v for k, v in r.items() if k in ("step", "loss", "ce", "tau_mean")} for r in STEPS]
    for name, key, factor, where in (("tau", "tau_mean", 1 + 3e-6, "step 2, tau_mean"),
                                     ("ce", "ce", 1 - 2e-6, "step 2, ce")):
        run = _run_dir(tmp_path / name, [{**r, key: r[key] * factor} if r["step"] == 2 else r for r in steps],
                       {"synthetic/img_r1": 3.3333335})
        done = _compare(golden, run, "--rtol", "1e-6")
        assert done.returncode == 1 and f"moved at {where}:" in done.stdout, done.stdout
    within = _run_dir(tmp_path / "within", [{**r, "loss": r["loss"] * (1 + 5e-7)} for r in steps],
                      {"synthetic/img_r1": 3.3333335})
    assert _compare(golden, within, "--rtol", "1e-6").returncode == 0
    assert _compare(golden, within, "--rtol", "1e-7").returncode == 1
    recall = _run_dir(tmp_path / "recall", steps, {"synthetic/img_r1": 6.666667})
    done = _compare(golden, recall)
    assert done.returncode == 1 and "moved at eval, synthetic/img_r1: 3.3333335 -> 6.666667" in done.stdout


def test_folders_of_curves_are_compared_by_name(tmp_path):
    for folder, factor in (("old", 1.0), ("new", 1.001)):
        (tmp_path / folder).mkdir()
        for name, f in (("same", 1.0), ("other", factor)):
            steps = [{"step": r["step"], "loss": r["loss"] * f} for r in STEPS]
            (tmp_path / folder / f"{name}.json").write_text(json.dumps({"steps": steps}))
    (tmp_path / "new" / "extra.json").write_text(json.dumps({"steps": []}))
    done = _compare(tmp_path / "old", tmp_path / "new")
    assert done.returncode == 1
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert lines["same"].startswith("agrees") and lines["other"].startswith("moved at step 1, loss")
    assert lines["extra"] == f"only in {tmp_path / 'new'}"


def test_bad_input_is_one_error_line(tmp_path):
    a = _run_dir(tmp_path / "a")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "empty").mkdir()
    for other, says in ((tmp_path / "missing", "no such file or directory"), (tmp_path / "bad.json", "not a curve file"),
                        (tmp_path / "list.json", "not a curve file"), (tmp_path / "empty", "no curve files")):
        done = _compare(a, other)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and says in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
