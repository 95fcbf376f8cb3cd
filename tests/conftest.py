"""Suite-wide settings: deterministic CPU runs, GPU tests skipped where there is no CUDA; tests/helpers.py
(free port, JSONL reader, offline environment, module loader, launchers) importable from every test."""

import os
import sys
from pathlib import Path

# One intra-op thread per test process (set before torch is imported; a value the caller set is kept): the suite
# runs as 2 workers on 2 cores beside the runs they spawn, and tiny models gain nothing from more threads. With
# 2 threads each the workers oversubscribe the cores and OpenMP's waiting threads take the CPU time (a 2-layer
# LLaMA's forward + backward loop took 80 s on 2 threads against 1.8 s on one, beside other busy processes).
# Subprocesses get the same (helpers.OFFLINE_ENV).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # (in case a plugin imported torch first)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

os.environ.setdefault("TEMPNET_CHECKS", "1")  # value checks (id ranges, NaN) on in every test


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/assets/losses/ from this run's curves (a change meant to move numbers: "
                          "commit them with the reason)")


GOLDEN = Path(__file__).resolve().parent / "assets" / "losses"


@pytest.fixture
def golden(request):
    """check(name, run_dir): the run's curve (scripts/loss_compare.py) against tests/assets/losses/<name>.json,
    failing with the first step and key that moved; with --update-golden it rewrites that file instead.
    The default bound (loss_compare.RTOL, 1e-5 of each key's largest value in the run) is 23x the largest spread
    measured between CPU kernels and thread counts on the launch-script runs (4.3e-7; LLM runs 1.6e-7); the demo's
    longer runs pass their own (tests/README.md)."""
    from helpers import REPO, load_module

    lc = load_module("loss_compare", REPO / "scripts" / "loss_compare.py")
    update = request.config.getoption("--update-golden")

    def check(name: str, run_dir, rtol: float = lc.RTOL) -> None:
        path, new = GOLDEN / f"{name}.json", lc.curve(run_dir)
        if update:
            lc.save(new, path)
            return
        assert path.is_file(), f"no golden curve {path}: create it with --update-golden"
        moved = lc.first_moved(lc.load(path), new, rtol)
        assert moved is None, f"{name} moved at {moved} (a change meant to move numbers: --update-golden, see README)"

    return check
