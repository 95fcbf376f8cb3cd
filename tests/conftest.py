"""Suite-wide settings: deterministic CPU runs, GPU tests skipped where there is no CUDA."""

import os

import pytest
import torch

os.environ.setdefault("TEMPNET_CHECKS", "1")  # value checks (id ranges, NaN) on in every test


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
