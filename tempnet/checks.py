"""One switch for the checks that cost a host-device synchronisation (value checks: id ranges, NaN).

Shape checks are free and always run; a check that reads a tensor's values (`int(ids.max())`,
`torch.isnan(x).any()` in an `if`) stalls a GPU step, so it runs only while this switch is on.
Off by default; on with the environment variable TEMPNET_CHECKS=1 (the test suite sets it), with
`set_enabled(True)`, or for a block with `with checking(): ...`.
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["enabled", "set_enabled", "checking"]

_override: bool | None = None  # set_enabled / checking; None defers to the environment variable


def enabled() -> bool:
    """Whether value checks run: set_enabled's value if given, else TEMPNET_CHECKS (1/true/yes = on)."""
    if _override is not None:
        return _override
    return os.environ.get("TEMPNET_CHECKS", "").strip().lower() in ("1", "true", "yes", "on")


def set_enabled(flag: bool | None) -> None:
    """Turn the value checks on or off for the whole process; None goes back to TEMPNET_CHECKS."""
    global _override
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"set_enabled takes True, False or None, got {flag!r}")
    _override = flag


@contextlib.contextmanager
def checking(flag: bool = True):
    """Turn the value checks on (or off) inside the block, then restore the previous setting."""
    global _override
    previous = _override
    set_enabled(flag)
    try:
        yield
    finally:
        _override = previous
