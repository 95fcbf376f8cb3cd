"""One precision vocabulary for every trainer: fp32 | fp16 (autocast + loss scaling) | bf16 (autocast)."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "grad_scaler", "autocast_dtype"]

PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str):
    """torch.autocast for fp16 / bf16, a no-op context for fp32."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (fp16 gradients underflow without loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=autocast_dtype(precision) is torch.float16)
