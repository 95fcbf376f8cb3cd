"""Preemption: SIGTERM, SIGINT and SIGUSR1 stop a run at the next optimizer-step boundary with a checkpoint.

A handler only records the signal. At every step boundary the trainer asks `requested()`: the ranks
agree (the largest signal number over ranks, one tiny all-reduce on a CPU group, no GPU synchronisation),
so every rank stops after the same step, saves, and exits with 128 + the signal's number (143 for
SIGTERM), the status schedulers requeue. The trainers install the handlers before they write anything
(a signal during start-up ends in a checkpoint after the first step, which `--resume` continues).

Schedulers signal every process of the job: the DataLoader workers ignore these signals
(`loader_worker_init`), so only the trainer acts and shuts its loader down (a worker killed by anything
else still fails the run). Once the save has begun, a second signal aborts
at once (the previous checkpoint stays: a checkpoint is renamed into place only when complete); a signal
within `DUPLICATE_S` of the first is the same one delivered twice (a launcher forwarding what the
scheduler also sent to every process) and is ignored. Once the preemption checkpoint is saved the
process is on its way out with 128 + the first signal: the handlers stay installed and ignore repeats
(schedulers often repeat the signal).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from tempnet.distributed import max_over_ranks

__all__ = ["Preemption", "Preempted", "SIGNALS", "DUPLICATE_S", "loader_worker_init"]

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
DUPLICATE_S = 2.0


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; `status` is the exit status (128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.status = signum, 128 + signum


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader's `worker_init_fn`: the job's preemption signals are the trainer's to act on.

    The worker blocks them and a thread takes them: the SIGTERM with which the loader itself (the worker's
    parent) ends a worker that does not stop on its own still ends it; any other sender's is ignored.
    """
    parent = os.getppid()

    def take() -> None:
        while True:
            info = signal.sigwaitinfo(SIGNALS)
            if info.si_signo == signal.SIGTERM and info.si_pid == parent:
                os._exit(0)

    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # threads started from now on inherit the mask
    threading.Thread(target=take, name="job-signals", daemon=True).start()


class Preemption:
    """Installs the handlers on entry (main thread only); restores the previous ones on exit, unless
    the run ended preempted (then the process exits, and a repeated signal must not change its status)."""

    def __init__(self):
        self.signum, self.saving, self.saved, self._at, self._old = 0, False, False, 0.0, {}

    def __enter__(self) -> "Preemption":
        for sig in SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): no preemption
                break
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and issubclass(exc_type, Preempted):
            return
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame) -> None:
        if not self.signum:
            self.signum, self._at = signum, time.monotonic()
        elif self.saving and not self.saved and time.monotonic() - self._at > DUPLICATE_S:
            os.write(2, f"\nsecond signal ({signal.Signals(signum).name}) while saving the preemption checkpoint: "
                        "aborting; the previous checkpoint is kept\n".encode())
            os._exit(128 + signum)

    def requested(self) -> int:
        """The signal number some rank received (agreed over ranks), or 0; called at every step boundary."""
        return max_over_ranks(self.signum)
