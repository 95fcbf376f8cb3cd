"""Suite-wide settings: deterministic CPU runs, GPU tests skipped where there is no CUDA; tests/helpers.py
(free port, JSONL reader, offline environment, module loader, launchers) importable from every test."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

os.environ.setdefault("TEMPNET_CHECKS", "1")  # value checks (id ranges, NaN) on in every test


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
