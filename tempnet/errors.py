"""User errors and the one place that turns them into `error: ...` and exit status 2.

A user error is something the person running a command can fix: a bad config value or override, a
missing or unreadable file, a run directory that would be overwritten, a resume that changes what
was trained. Those print one line without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, Sequence

__all__ = ["UserError", "ConfigError", "USER_ERRORS", "run_cli", "check_model_path"]


class UserError(Exception):
    """An error the user can fix; its message names the field, file or value."""


class ConfigError(UserError, ValueError):
    """A config file, field or command-line override that cannot be used (also a ValueError)."""


#: Exceptions an entry point reports as `error: ...` (exit 2). OSError subclasses about paths are the
#: user's: a missing file, a directory where a file was expected, no permission.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a user error prints `error: MESSAGE` on stderr and exits with status 2."""
    try:
        result = main(argv)
    except USER_ERRORS as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{exc.strerror or message}: {exc.filename}"
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return result if isinstance(result, int) else 0


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def check_model_path(name: str | os.PathLike, what: str) -> str:
    """`name` if it is an existing local path or could be a Hub repo id ("gpt2", "org/model"); a
    FileNotFoundError naming `what` for a local-looking path that does not exist (so the user sees
    "no such directory", never a Hub repo-id error)."""
    text = os.fspath(name)
    if os.path.exists(text):
        return text
    local = text.startswith(("/", ".", "~")) or os.sep in text.strip(os.sep).split(os.sep, 1)[-1] \
        or not _REPO_ID.match(text)
    if local:
        raise FileNotFoundError(f"{what}: no such file or directory: {text}")
    return text
