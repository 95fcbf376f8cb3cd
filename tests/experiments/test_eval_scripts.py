"""The evaluation launch scripts (GPT_2, LLaMA-1, LLaMA-2 `scripts/eval_*.sh`, Bimodal-CL `scripts/eval_*.sh`).

A script of each LLM folder runs for real on CPU: lm-eval through `scripts/eval_lm.py` on a tiny LLaMA checkpoint
with a TempNet and local tasks, into a fresh RESULTS_DIR, in the layout `scripts/make_tables.py` reads (one of
them whole as a user types it, the others' commands in one interpreter: see `real`). A stub
launcher on PATH checks, in milliseconds, each script's command: the paper's task list, defaults, env
variables, NPROC and the pass-through of extra arguments.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from entry_points import run_cases
from eval_runs import local_tasks, tiny_checkpoint, train_tokenizer
from helpers import lm_eval_by_hand, load_module
from lm_runs import ENV, REPO

SEVEN = "piqa,hellaswag,arc_easy,arc_challenge,openbookqa,lambada_openai,wikitext"
FOURTEEN = SEVEN + ",winogrande,boolq,sciq,social_iqa,mathqa,logiqa,swag"
# script -> (default row, default checkpoint, apply_tempnet, default tasks)
LLM_SCRIPTS = {
    "GPT_2/scripts/eval_scratch_baseline.sh": ("gpt2_scratch_baseline", "runs/gpt2_scratch_baseline/final", "true", SEVEN),
    "GPT_2/scripts/eval_scratch_tempnet.sh": ("gpt2_scratch_tempnet", "runs/gpt2_scratch_tempnet/final", "true", SEVEN),
    "GPT_2/scripts/eval_finetune_baseline.sh": ("gpt2_finetune_baseline", "runs/gpt2_finetune_baseline/final", "true",
                                                SEVEN),
    "GPT_2/scripts/eval_finetune_tempnet.sh": ("gpt2_finetune_tempnet", "runs/gpt2_finetune_tempnet/final", "true",
                                               SEVEN),
    "GPT_2/scripts/eval_ablation_ce.sh": ("ce", "runs/gpt2_ablation_ce/final", "true", SEVEN),
    "GPT_2/scripts/eval_ablation_dro.sh": ("dro", "runs/gpt2_ablation_dro/final", "true", SEVEN),
    "GPT_2/scripts/eval_ablation_tempnet_ce.sh": ("tempnet_ce", "runs/gpt2_ablation_tempnet_ce/final", "true", SEVEN),
    "GPT_2/scripts/eval_ablation_tempnet_dro.sh": ("tempnet_dro", "runs/gpt2_ablation_tempnet_dro/final", "true",
                                                   SEVEN),
    "LLaMA-1/scripts/eval_7b_baseline.sh": ("llama1_7b_baseline", "runs/llama1_finetune_7b_baseline/final", "true",
                                            FOURTEEN),
    "LLaMA-1/scripts/eval_7b_tempnet.sh": ("llama1_7b_tempnet", "runs/llama1_finetune_7b/final", "true", FOURTEEN),
    "LLaMA-2/scripts/eval_frozen_7b_base.sh": ("llama2_7b", "runs/llama2_frozen_7b/final", "false", SEVEN),
    "LLaMA-2/scripts/eval_frozen_7b_tempnet.sh": ("llama2_7b_tempnet", "runs/llama2_frozen_7b/final", "true", SEVEN),
    "LLaMA-2/scripts/eval_frozen_13b_base.sh": ("llama2_13b", "runs/llama2_frozen_13b/final", "false", SEVEN),
    "LLaMA-2/scripts/eval_frozen_13b_tempnet.sh": ("llama2_13b_tempnet", "runs/llama2_frozen_13b/final", "true",
                                                   SEVEN),
}
CLIP_SCRIPTS = {"Bimodal-CL/scripts/eval_flickr30k.sh": "flickr30k", "Bimodal-CL/scripts/eval_mscoco.sh": "mscoco",
                "Bimodal-CL/scripts/eval_zeroshot.sh": "zeroshot"}


def test_every_eval_script_is_listed():
    found = {str(p.relative_to(REPO)) for folder in ("GPT_2", "LLaMA-1", "LLaMA-2", "Bimodal-CL")
             for p in (REPO / folder / "scripts").glob("eval_*.sh")}
    assert found == set(LLM_SCRIPTS) | set(CLIP_SCRIPTS)


# ---- the commands, with stub launchers --------------------------------------------------------------------

@pytest.fixture
def stub_path(tmp_path) -> tuple[dict, Path]:
    """(env, log): `python`, `accelerate` and `torchrun` on PATH only write their argv (JSON) to the log."""
    bin_dir, log = _stub_bin(tmp_path)
    env = {k: v for k, v in ENV.items() if k not in ("CKPT", "RESULTS_DIR", "ROW", "TASKS", "NPROC", "DTYPE",
                                                      "BATCH_SIZE", "APPLY_TEMPNET", "OUT")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env, log


def _stub_bin(root: Path) -> tuple[Path, Path]:
    """(ROOT/bin, ROOT/argv.jsonl): stub `python`, `accelerate` and `torchrun` that append their argv (JSON) to the log."""
    bin_dir, log = root / "bin", root / "argv.jsonl"
    bin_dir.mkdir()
    for name in ("python", "accelerate", "torchrun"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\n"{os.sys.executable}" -c \'import json, sys; '
                        f'print(json.dumps(["{name}"] + sys.argv[1:]))\' "$@" >> "{log}"\n')
        stub.chmod(0o755)
    return bin_dir, log


def _argv(script: str, env: dict, log: Path, *extra: str) -> list[str]:
    log.unlink(missing_ok=True)
    subprocess.run(["bash", script, *extra], cwd=REPO, env=env, check=True, capture_output=True, timeout=60)
    (line,) = log.read_text().splitlines()
    return json.loads(line)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("script", sorted(LLM_SCRIPTS))
def test_llm_script_command(script, stub_path):
    env, log = stub_path
    row, ckpt, apply, tasks = LLM_SCRIPTS[script]
    argv = _argv(script, env, log)
    assert argv[:3] == ["python", "scripts/eval_lm.py", "run"] and _flag(argv, "--model") == "tempnet"
    model_args = dict(kv.split("=", 1) for kv in _flag(argv, "--model_args").split(","))
    assert model_args["pretrained"] == ckpt and model_args["apply_tempnet"] == apply
    assert _flag(argv, "--tasks") == tasks
    assert _flag(argv, "--output_path") == f"results/llm/{row}"

    argv = _argv(script, {**env, "CKPT": "/m", "RESULTS_DIR": "/r", "ROW": "x", "TASKS": "toy", "NPROC": "4",
                          "DTYPE": "float16", "APPLY_TEMPNET": "false"}, log, "--limit", "2", "--device", "cpu")
    assert argv[:2] == ["accelerate", "launch"] and _flag(argv, "--num_processes") == "4"
    assert argv[argv.index("scripts/eval_lm.py") + 1] == "run"
    assert _flag(argv, "--model_args") == "pretrained=/m,dtype=float16,apply_tempnet=false"
    assert _flag(argv, "--tasks") == "toy" and _flag(argv, "--output_path") == "/r/llm/x"
    assert argv[-4:] == ["--limit", "2", "--device", "cpu"]


@pytest.mark.parametrize("script", sorted(CLIP_SCRIPTS))
def test_clip_script_writes_into_the_results_layout(script, stub_path):
    env, log = stub_path
    part = CLIP_SCRIPTS[script]
    argv = _argv(script, {**env, "CKPT": "ck"}, log)
    assert argv[0] == "torchrun" and _flag(argv, "--output-dir") == f"results/clip/isogclr_tempnet/{part}"
    argv = _argv(script, {**env, "CKPT": "ck", "RESULTS_DIR": "/r", "ROW": "clip"}, log, "eval.batch_size=8")
    assert _flag(argv, "--output-dir") == f"/r/clip/clip/{part}" and argv[-1] == "eval.batch_size=8"
    argv = _argv(script, {**env, "CKPT": "ck", "OUT": "/elsewhere"}, log)
    assert _flag(argv, "--output-dir") == "/elsewhere"
    proc = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "set CKPT" in proc.stderr


# ---- real runs on CPU ------------------------------------------------------------------------------------

# One script runs whole, as a user types it: GPT_2's (bash, then `python scripts/eval_lm.py ...` with lm-eval).
# The other real runs (LLaMA-1's and the LLaMA-2 pair of the table test) run their script with the stub launcher
# (the script for real, its `python ...` command recorded), and the three recorded commands then run one after the
# other in one tests/experiments/entry_points.py interpreter, each exactly as `python scripts/eval_lm.py ...`
# would (lm-eval's imports paid once, not per script). The scripts export nothing: the command and the
# environment are all the `python` they start gets.
WHOLE = "GPT_2/scripts/eval_scratch_tempnet.sh"
BATCHED = ("LLaMA-1/scripts/eval_7b_baseline.sh", "LLaMA-2/scripts/eval_frozen_7b_base.sh",
           "LLaMA-2/scripts/eval_frozen_7b_tempnet.sh")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A tiny checkpoint, local tasks, a fresh RESULTS_DIR, and `run(script)`: each script of WHOLE and BATCHED
    run once (as said above), its row's results directory."""
    root = tmp_path_factory.mktemp("eval_scripts")
    ckpt = tiny_checkpoint(root / "final", train_tokenizer(root / "tokenizer"))
    tasks = local_tasks(root / "data")
    results = root / "results"
    env = {**ENV, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CKPT": str(ckpt), "RESULTS_DIR": str(results),
           "TASKS": "toy_mc,toy_ppl", "DTYPE": "float32", "NPROC": "1"}
    extra = ["--include_path", str(tasks), "--device", "cpu", "--batch_size", "2"]

    proc = subprocess.run(["bash", WHOLE, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{WHOLE} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    bin_dir, log = _stub_bin(root)
    commands = {}
    for script in BATCHED:
        log.unlink(missing_ok=True)
        subprocess.run(["bash", script, *extra], cwd=REPO, env={**env, "PATH": f"{bin_dir}:{env['PATH']}"},
                       check=True, capture_output=True, timeout=60)
        (line,) = log.read_text().splitlines()
        launcher, target, *argv = json.loads(line)
        assert launcher == "python" and target == "scripts/eval_lm.py", line
        commands[script] = [target, argv]
    for script, got in run_cases(commands, root / "commands.json", env=env, timeout=600).items():
        assert got["code"] == 0, f"{script} failed:\n{got['stderr'][-5000:]}"

    def run(script: str) -> Path:
        assert script in (WHOLE, *BATCHED), script
        return results / "llm" / LLM_SCRIPTS[script][0]

    hand = {}

    def by_hand(apply_tempnet: bool):  # (acc, word_perplexity) of the checkpoint on the local tasks (once per mode)
        from transformers import AutoTokenizer

        from tempnet.integrations.hf import tempnet_model_from_pretrained

        if apply_tempnet not in hand:
            docs = [json.loads(line) for line in (root / "data" / "mc.jsonl").read_text().splitlines()]
            lines = (root / "data" / "ppl.txt").read_text().splitlines()
            hand[apply_tempnet] = lm_eval_by_hand(tempnet_model_from_pretrained(ckpt).eval(),
                                                  AutoTokenizer.from_pretrained(ckpt), docs, lines, apply_tempnet)
        return hand[apply_tempnet]

    run.by_hand = by_hand
    return run, results


def _results(row_dir: Path) -> dict:
    (file,) = row_dir.rglob("results*.json")
    return json.loads(file.read_text())


# One real lm-eval run per folder (the LLaMA-2 pair runs in the table test below; see `real` for which runs whole);
# every script's command line is checked against the stub launcher above. The scores themselves are checked
# against an independent computation in tests/tempnet/integrations/test_lm_eval.py.
REAL_RUNS = [WHOLE, "LLaMA-1/scripts/eval_7b_baseline.sh"]


@pytest.mark.slow
@pytest.mark.parametrize("script", REAL_RUNS)
def test_llm_script_runs_lm_eval_into_the_layout(script, real):
    run, results = real
    data = _results(run(script))
    assert set(data["results"]) == {"toy_mc", "toy_ppl"}
    acc, ppl = run.by_hand(LLM_SCRIPTS[script][2] == "true")
    assert data["results"]["toy_mc"]["acc,none"] == pytest.approx(acc)
    assert data["results"]["toy_ppl"]["word_perplexity,none"] == pytest.approx(ppl, rel=1e-4)
    assert data["config"]["model"] == "tempnet"
    args = data["config"]["model_args"]
    assert args["apply_tempnet"] is (LLM_SCRIPTS[script][2] == "true") and args["dtype"] == "float32"
    assert str(args["pretrained"]).startswith(str(results.parent))  # CKPT reached lm-eval


@pytest.mark.slow
def test_both_columns_from_one_checkpoint_make_a_table(real):
    """LLaMA-2 base (apply_tempnet=false) and TempNet rows of the same checkpoint -> make_tables' LLaMA-2 table."""
    run, results = real
    base = _results(run("LLaMA-2/scripts/eval_frozen_7b_base.sh"))["results"]
    tempnet = _results(run("LLaMA-2/scripts/eval_frozen_7b_tempnet.sh"))["results"]
    assert base["toy_ppl"]["word_perplexity,none"] != pytest.approx(tempnet["toy_ppl"]["word_perplexity,none"],
                                                                     rel=1e-3)  # TempNet changes the scores

    make_tables = load_module("make_tables", REPO / "scripts" / "make_tables.py")
    tables = make_tables.build_tables(results)
    llama2 = next(t for t in tables if t.key == "llama2")
    assert [c.key for c in llama2.columns] == ["toy_mc", "avg", "toy_ppl"]
    rows = {r.name: r.cells for r in llama2.rows}
    for name, res in (("llama2_7b", base), ("llama2_7b_tempnet", tempnet)):
        assert rows[name]["toy_mc"].value == pytest.approx(100 * res["toy_mc"]["acc,none"])
        assert rows[name]["avg"].value == pytest.approx(100 * res["toy_mc"]["acc,none"])
        assert rows[name]["toy_ppl"].value == pytest.approx(res["toy_ppl"]["word_perplexity,none"])
    markdown = make_tables.to_markdown(tables)
    assert "| row | toy_mc | Avg. | toy_ppl (ppl) |" in markdown
    assert f"{tempnet['toy_ppl']['word_perplexity,none']:.2f}" in markdown
    out = subprocess.run([os.sys.executable, "scripts/make_tables.py", str(results), "--paper"], cwd=REPO,
                         env={**ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| llama2_7b_tempnet |" in out.stdout and "| llama2_7b_tempnet (paper) |" in out.stdout


# The Bimodal-CL evaluation scripts run for real (Flickr30K and zero-shot, pointed at synthetic sets through "$@",
# into RESULTS_DIR/clip/ROW/<set>/eval.json, merged by make_tables into one row) on the checkpoint of the
# cc3m_isogclr_tempnet.sh launch in test_launch_scripts.py::test_clip_script_then_evaluation.
