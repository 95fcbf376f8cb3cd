"""User errors and the one place that turns them into `error: ...` and exit status 2.

A user error is something the person running a command can fix: a bad config value or override, a
missing or unreadable file, a run directory that would be overwritten, a resume that changes what
was trained. Those print one line without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable, Iterable, Sequence

__all__ = ["UserError", "ConfigError", "DataError", "USER_ERRORS", "run_cli", "user_message", "check_model_path",
           "check_model_dir", "unknown_keys"]


class UserError(Exception):
    """An error the user can fix; its message names the field, file or value."""


class ConfigError(UserError, ValueError):
    """A config file, field or command-line override that cannot be used (also a ValueError)."""


class DataError(UserError, ValueError):
    """A data file, record or sample, or a weights file, whose content cannot be used; the message names the
    file and the entry (also a ValueError, as before these were user errors)."""


#: Exceptions an entry point reports as `error: ...` (exit 2). OSError subclasses about paths are the
#: user's: a missing file, a directory where a file was expected, no permission.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def user_message(exc: BaseException) -> str:
    """The one-line message of a user error, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type, with a message that
    holds the worker's whole traceback ("Caught X in DataLoader worker process N. Original Traceback
    ..."); the user's message is what follows the last `module.Type: ` of that traceback.
    """
    message = str(exc)
    if _WORKER_TRACEBACK in message:
        tail = message.split(_WORKER_TRACEBACK, 1)[1]
        names = [f"{t.__module__}.{t.__qualname__}: " if t.__module__ != "builtins" else f"{t.__qualname__}: "
                 for t in type(exc).__mro__]
        starts = [(tail.rfind(n), n) for n in names if n in tail]
        if starts:
            at, name = max(starts)
            message = tail[at + len(name):].strip()
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.strerror or message}: {exc.filename}"
    return " ".join(message.split()) if "\n" in message else message


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; a user error prints `error: MESSAGE` on stderr and exits with status 2.

    Under torchrun the failing rank prints its line and exits 2; the launcher then stops the other
    ranks and adds its own ChildFailedError report (with the launcher's traceback) after it.
    """
    try:
        result = main(argv)
    except USER_ERRORS as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return result if isinstance(result, int) else 0


def unknown_keys(given: Iterable[str], valid: Iterable[str], where: str, library: str) -> None:
    """A ConfigError naming the first key of `given` not in `valid`, with the nearest valid key
    (keyword arguments handed to another library, which would otherwise ignore or choke on them)."""
    valid = sorted(set(valid))
    for key in given:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {where}.{near[0]}?" if near else f"; valid keys: {valid}"
            raise ConfigError(f"{where}.{key} is not a parameter of {library}{hint}")


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def check_model_path(name: str | os.PathLike, what: str) -> str:
    """`name` if it is an existing local path or could be a Hub repo id ("gpt2", "org/model"); a
    FileNotFoundError naming `what` for a local-looking path that does not exist (so the user sees
    "no such directory", never a Hub repo-id error)."""
    text = os.fspath(name)
    if os.path.exists(text):
        return text
    first = text.split(os.sep, 1)[0]
    local = text.startswith(("/", ".", "~")) or os.sep in text.strip(os.sep).split(os.sep, 1)[-1] \
        or not _REPO_ID.match(text) or (os.sep in text and os.path.isdir(first))  # "runs/final": ./runs exists
    if local:
        raise FileNotFoundError(f"{what}: no such file or directory: {text}")
    return text


def check_model_dir(name: str | os.PathLike, what: str) -> str:
    """`check_model_path`, and a local directory must be a Hugging Face model (hold config.json), so every command
    that loads a model refuses a trainer's `checkpoint-<step>/` (the state to resume from) with the same line."""
    text = check_model_path(name, what)
    if os.path.isdir(text) and not os.path.isfile(os.path.join(text, "config.json")):
        hint = ("; a trainer's checkpoint-<step>/ is the state --resume reads: give the run's final/ directory"
                if os.path.isfile(os.path.join(text, "trainer_state.json")) else "")
        raise UserError(f"{what} {text} is not a model checkpoint: it has no config.json{hint}")
    return text
