"""One run per output directory: OUT/.lock names the host and pid of the run that holds it.

The launch's main process (global rank 0) takes it before it writes anything and keeps it until it
exits; the other ranks and nodes of the same launch share the directory without taking it. The lock
is an OS-level `flock` where the filesystem provides one (local disks, NFSv4, Lustre mounted with
`flock`), which the kernel drops when the process dies, however it dies. Where `flock` is not
available the file's content decides: a live pid on this host holds it; a dead pid on this host is
taken over with a warning; another host's lock cannot be checked from here and is refused (delete
OUT/.lock by hand once that run is gone).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import warnings
from pathlib import Path

from tempnet.errors import UserError

__all__ = ["RunLock", "LOCK_FILE"]

LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class RunLock:
    def __init__(self, output_dir: str | Path):
        self.out, self.path, self._fd = Path(output_dir), Path(output_dir) / LOCK_FILE, None
        self.host, self.pid = socket.gethostname(), os.getpid()

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def _refuse(self, holder: dict) -> UserError:
        return UserError(f"{self.out} is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')} "
                         f"(its lock file {self.path}): choose another --output-dir or wait for that run to end")

    def acquire(self) -> "RunLock":
        """Take the lock (the directory must exist); a UserError if another run holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os_lock = True
        except BlockingIOError:
            holder = self._holder()
            os.close(fd)
            raise self._refuse(holder) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            os_lock = False  # no flock on this filesystem: the file's content decides
        holder = self._holder()
        if holder and (holder.get("host"), holder.get("pid")) != (self.host, self.pid):
            same_host = holder.get("host") == self.host
            if not os_lock and (not same_host or _alive(int(holder.get("pid", 0)))):
                os.close(fd)
                raise self._refuse(holder)
            if os_lock or same_host:
                warnings.warn(f"{self.path}: taking over the lock of pid {holder.get('pid')} on {holder.get('host')}, "
                              "which no longer holds it (a run that died)", stacklevel=2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps({"host": self.host, "pid": self.pid}) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the file and drop the lock (the file stays: removing it would race with a waiting run)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None
