"""Preemption as a scheduler does it, through the real `train.py` of both trainers as a subprocess: SIGTERM,
SIGINT or SIGUSR1 to every process of the job (the trainer and its DataLoader workers: SLURM, Kubernetes,
`kill -TERM -PGID`), to one rank of two, during start-up, and again after the save. Every case ends as a
signal to the trainer alone does: the step finishes, every rank saves, `preempted at step N: saved
DIR/checkpoint-N` and exit 128 + signal. The signal is sent from inside the trainer once it is provably in
its loop (or has written config.yaml), see fault_runs.py; the LLM trainer's exact resume after a preemption
is in test_faults.py, the CLIP trainer's in test_faults_clip.py. The LLM runs train on the corpus, tokenizer and
token cache that the start-up case's run generated (data.synthetic=true), not generated again by each (lm_data)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from entry_points import run_cases
from fault_runs import faulty
from helpers import torchrun
from lm_runs import ENV, REPO, metrics
from shard_data import write_pair_shards

pytestmark = pytest.mark.slow

LM = ["train.max_steps=6", "train.save_every=100", "train.progress_bar=false", "train.tensorboard=false"]
CLIP = ["loss=isogclr_tempnet", "train.epochs=1", "train.save_every=100", "eval.every_epoch=false",
        "train.progress_bar=false", "train.tensorboard=false"]


def _lm(out, *extra):
    return ["GPT_2/train.py", "--config", "GPT_2/configs/debug.yaml", "--output-dir", out, *LM, *extra]


def _clip(out, *extra):
    return ["Bimodal-CL/train.py", "--config", "Bimodal-CL/configs/debug.yaml", "--output-dir", out, *CLIP, *extra]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """160 pairs in 4 webdataset shards: 5 steps of 32 per epoch."""
    from tempnet.data.shards import build_index, write_index

    root = tmp_path_factory.mktemp("shards")
    pattern, _ = write_pair_shards(root, num=160, per_shard=40)
    return pattern, write_index(build_index(pattern), root / "index.json")


@pytest.fixture(scope="module")
def lm_started(tmp_path_factory):
    """The LLM trainer (1 loader worker, data.synthetic=true) sent SIGTERM once config.yaml is written: (its argv,
    its directory, the process). Its generated data are lm_data; its resume is `started`'s."""
    root = tmp_path_factory.mktemp("start_up_lm")
    out = root / "run"
    argv = _argv("lm", out, 1, None)
    return argv, out, faulty(root, "SIGTERM", "start", argv, expect=128 + signal.SIGTERM)


@pytest.fixture(scope="module")
def lm_data(lm_started):
    """Overrides pointing an LLM run at lm_started's generated corpus and tokenizer and its token cache: the data
    data.synthetic=true generates, the same batches, without generating and tokenising them again."""
    out = lm_started[1]
    assets = out / "debug_assets"
    return ("data.synthetic=false", f"data.files=[{assets / 'corpus.jsonl'}]",
            f"model.tokenizer={assets / 'tokenizer-gpt2'}", f"data.cache_dir={out / 'token_cache'}")


def _argv(kind, out, workers, shards, lm_data=()):
    data = f"data.num_workers={workers}"
    if kind == "lm":
        return _lm(out, *lm_data, data)
    if kind == "clip-json":
        return _clip(out, data)
    pattern, index = shards
    return _clip(out, data, "data.format=webdataset", "data.synthetic=false", f"data.train_shards={pattern}",
                 f"data.train_index={index}", "data.shard_window=2")


def _preempted(proc, out, step: int) -> None:
    """The run ended as a preempted run does: the one line last, the checkpoint complete, no loader error."""
    assert proc.stderr.splitlines()[-1] == f"preempted at step {step}: saved {out / f'checkpoint-{step}'}"
    assert (out / f"checkpoint-{step}" / "COMPLETE").is_file()
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["step"] == step
    assert "DataLoader worker" not in proc.stderr


# each trainer and data format with 0, 1 and 2 loader workers, the three signals spread over them (SIGTERM, which
# killed the workers, with workers in each); `twice`: the job gets the signal again after the save (schedulers
# repeat it), which must not change the exit status. The LLM trainer's (lm, 2, SIGTERM:twice) and (lm, 1, SIGINT)
# are the two preemptions of test_faults.py's test_llm_sigterm_then_sigint_... (the same checks, and its
# directory then resumes exactly)
@pytest.mark.parametrize("kind, workers, point", [
    ("lm", 0, "SIGUSR1"),
    ("clip-json", 0, "SIGINT"), ("clip-json", 1, "SIGUSR1:twice"), ("clip-json", 2, "SIGTERM"),
    ("clip-shards", 0, "SIGINT:twice"), ("clip-shards", 1, "SIGTERM"), ("clip-shards", 2, "SIGUSR1"),
])
def test_a_signal_to_every_process_of_the_job_saves_and_exits_128_plus_signal(kind, workers, point, shards,
                                                                                tmp_path, request):
    out = tmp_path / "run"
    sig = getattr(signal, point.split(":")[0])
    lm_data = request.getfixturevalue("lm_data") if kind == "lm" else ()
    proc = faulty(tmp_path, point, 2, _argv(kind, out, workers, shards, lm_data), expect=128 + sig)  # in step 2
    _preempted(proc, out, 3)  # step 3 had begun when the ranks agreed: it finishes, then the save
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


def test_a_loader_worker_killed_by_something_else_still_fails_the_run(lm_data, tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "kill_worker.py"  # SIGKILL one DataLoader worker in step 2, then train on
    script.write_text(
        "import multiprocessing, os, runpy, signal, sys\n"
        "import tempnet.train.logging as logging\n"
        "log = logging.MetricsLogger.log\n"
        "def killing_log(self, step, metrics):\n"
        "    if step == 2:\n"
        "        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)\n"
        "    return log(self, step, metrics)\n"
        "logging.MetricsLogger.log = killing_log\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    argv = _lm(out, *lm_data, "data.num_workers=2")
    proc = subprocess.run([sys.executable, script, *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=400, start_new_session=True)
    # torch notices the dead worker by its watchdog ("DataLoader worker (pid ...) is killed") or by the broken
    # pipe of its queue (ConnectionResetError), whichever comes first: both fail the run, neither is a preemption
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "DataLoader worker (pid" in proc.stderr or "ConnectionResetError" in proc.stderr, proc.stderr[-3000:]
    assert "preempted" not in proc.stderr and not (out / "final").exists()


@pytest.fixture(scope="module")
def started(lm_started, shards, tmp_path_factory):
    """Each trainer (1 loader worker) sent SIGTERM once config.yaml is written, then the directory resumed as the
    SLURM requeue runs it (the directory holds a checkpoint): the two resumes one after the other in one
    tests/experiments/entry_points.py interpreter (each exactly as `python train.py ... --resume`, the imports
    paid once). {trainer: (out, the preempted run, the resume's {code, stderr})}."""
    root = tmp_path_factory.mktemp("start_up")
    preempted, resumes = {}, {}
    for trainer in ("lm", "clip-json"):
        if trainer == "lm":
            argv, out, proc = lm_started
            preempted[trainer] = out, proc
        else:
            (root / trainer).mkdir()
            out = root / trainer / "run"
            argv = _argv(trainer, out, 1, shards)
            preempted[trainer] = out, faulty(out.parent, "SIGTERM", "start", argv, expect=128 + signal.SIGTERM)
        resumes[trainer] = [str(argv[0]), [*map(str, argv[1:]), "--resume"]]
    done = run_cases(resumes, root / "resumes.json")
    return {trainer: (*preempted[trainer], done[trainer]) for trainer in preempted}


@pytest.mark.parametrize("trainer", ["lm", "clip-json"])
def test_a_signal_during_start_up_ends_in_a_checkpoint_that_resumes(trainer, started):
    out, proc, done = started[trainer]
    _preempted(proc, out, 1)
    assert done["code"] == 0, done["stderr"][-4000:]
    assert f"resumed from {out / 'checkpoint-1'}" in done["stderr"]
    assert [r["step"] for r in metrics(out)] == list(range(1, 7 if trainer == "lm" else 11))


def test_a_signal_to_one_rank_of_two_stops_both_after_the_same_step(lm_data, tmp_path):
    out = tmp_path / "run"
    proc = faulty(tmp_path, "SIGTERM:rank1", 2, _lm(out, *lm_data, "data.num_workers=1"), expect=1,
                  launcher=torchrun(2))  # torchrun's status
    assert f"preempted at step 3: saved {out / 'checkpoint-3'}" in proc.stderr.splitlines()
    assert {"rng_state_0.pt", "rng_state_1.pt", "COMPLETE"} <= {p.name for p in (out / "checkpoint-3").iterdir()}
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert "DataLoader worker" not in proc.stderr
