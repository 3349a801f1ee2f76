"""A job's probe in a process of its own, that the worker watches and can kill.

Regexes, C kernels and allocators can hold the GIL or never return; a thread cannot stop them,
and Celery's time limits do not apply under ``--pool=solo``. So the worker runs each probe in a
child process (:mod:`lrprobe.worker.probe_process`), keeps renewing the job's lease itself, and
ends the child with SIGKILL at the job's time limit, on cancel, or when the lease is lost.

Children come from a *forkserver*: a clean process, started once per worker, that has imported
torch and the intake but never run a torch operation. Forking it is fast (no per-job import)
and safe, where forking the worker itself is not (a process that ran torch's thread pools hangs
its forked children). The forkserver exits when the worker dies, and each child is armed with
``PR_SET_PDEATHSIG``, so no probe outlives its worker. Like any ``multiprocessing`` child, a
probe process imports the worker's ``__main__`` module by path (``celery``'s and ``pytest``'s
guard their entry point).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import signal
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

from lrprobe.service.lifecycle import Progress
from lrprobe.worker.probe_process import (
    OUT_OF_MEMORY_ADVICE,
    Failed,
    Outcome,
    ProbeWork,
    Succeeded,
    child_main,
    ready,
)

log = logging.getLogger(__name__)

# How long a child that sent its outcome may take to exit before it is killed.
EXIT_GRACE_SECONDS = 5.0
# Imported once by the forkserver, so that no job pays for them: the probe itself, and what
# the probe, the built-in datasets and the tabular formats import on first use (torch imports
# torch._dynamo at the first functional transform, scikit-learn importlib's resource readers
# at the first load; seconds per job otherwise). Only imports: none of these starts a thread,
# which would make forking unsafe.
PRELOAD = (
    "lrprobe.worker.probe_process", "torch._dynamo", "sklearn.datasets", "pandas",
    "importlib.resources.readers",
)  # fmt: skip


@functools.cache
def _context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


class ProbeProcess:
    """One running probe child; :meth:`receive` its messages, :meth:`kill` it at any time."""

    def __init__(self, work: ProbeWork) -> None:
        context = _context()
        receiver, sender = context.Pipe(duplex=False)
        self._process: Any = context.Process(
            target=child_main, args=(work, sender), name=f"probe-{work.job_id}", daemon=True
        )
        self._process.start()
        sender.close()  # the child holds the only write end: EOF means it is gone
        self._receiver: Connection = receiver
        self.job_id = work.job_id

    @property
    def pid(self) -> int | None:
        return int(self._process.pid) if self._process.pid is not None else None

    def receive(self, timeout: float) -> Progress | Outcome | None:
        """The child's next message, or None when none came within ``timeout`` seconds.

        When the child is gone without an outcome (killed, crashed), returns the
        :class:`Failed` that says so.
        """
        try:
            if not self._receiver.poll(max(timeout, 0.0)):
                return None
            message: Progress | Outcome = self._receiver.recv()
            return message
        except (EOFError, OSError):
            return self._death()

    def kill(self) -> None:
        """SIGKILL the child if it still runs, and reap it."""
        if self._process.exitcode is None:
            self._process.kill()
        self._process.join()
        self._receiver.close()

    def finish(self) -> None:
        """Wait briefly for a child that sent its outcome to exit, then kill it."""
        self._process.join(EXIT_GRACE_SECONDS)
        self.kill()

    def _death(self) -> Failed:
        self._process.join(EXIT_GRACE_SECONDS)
        code = self._process.exitcode
        if code is None:  # closed its pipe but still runs: not a probe we can trust
            self._process.kill()
            self._process.join()
            code = self._process.exitcode
        log.warning("job %s: the probe process ended without an outcome (exit code %s)",
                    self.job_id, code)  # fmt: skip
        if code == -signal.SIGKILL:
            # Nobody here sent it: on Linux that is the out-of-memory killer.
            return Failed(
                "out_of_memory",
                f"The probe's process was killed by the system (most likely for using too much "
                f"memory). {OUT_OF_MEMORY_ADVICE}",
            )
        how = _signal_name(-code) if code is not None and code < 0 else f"exit code {code}"
        return Failed(
            "internal_error",
            f"The probe's process crashed ({how}); retry the job, and report it if it happens "
            "again.",
        )


def _signal_name(number: int) -> str:
    try:
        return f"signal {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


@functools.cache
def warm_up() -> None:
    """Start the forkserver and wait until it has imported :data:`PRELOAD` (once per process,
    tens of seconds on a busy machine), so that no job's time limit pays for it."""
    process = _context().Process(target=ready, name="probe-warm-up", daemon=True)
    process.start()
    process.join()


def start(work: ProbeWork) -> ProbeProcess:
    return ProbeProcess(work)


__all__ = ["Failed", "Outcome", "ProbeProcess", "Succeeded", "start"]
