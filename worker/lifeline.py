"""The embedded worker and reaper live and die with ``lrprobe serve``.

``lrprobe serve`` (``lrprobe.service.embedded``) gives each child the read end of a pipe whose
write end only it holds, and a lock file per role. :func:`attach`, called first thing in the
child:

- takes the role's lock (``flock``), waiting while a previous serve's child still holds it, so
  that a restart never runs two workers or two reapers on one data dir;
- watches the pipe from a thread. The kernel closes the write end when serve exits for any
  reason, kill -9 included; the child then exits at once. A probe child follows it (its
  forkserver exits with the worker, and it is armed with ``PR_SET_PDEATHSIG``); the running
  job's lease expires and the next reaper gives it back.

Processes started any other way (compose, tests) have neither variable and are unaffected.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from typing import IO

log = logging.getLogger(__name__)

LIFELINE_FD_ENV = "LRPROBE_LIFELINE_FD"
LOCK_FILE_ENV = "LRPROBE_LIFELINE_LOCK"
# Exit status of a child whose serve died (distinct from a crash in the logs).
ORPHANED_EXIT_CODE = 75

_held: list[IO[str]] = []  # the lock lives as long as its open file


def attach() -> None:
    """Take this role's lock and start watching serve's pipe (no-op outside embedded mode)."""
    lock = os.environ.get(LOCK_FILE_ENV)
    if lock:
        _hold(lock)
    fd = os.environ.get(LIFELINE_FD_ENV)
    if fd and fd.isdigit():
        watch(int(fd))


def watch(fd: int) -> None:
    """Exit this process when every write end of the pipe ``fd`` reads from is closed."""
    threading.Thread(target=_wait_for_eof, args=(fd,), name="lrprobe-lifeline", daemon=True).start()


def _wait_for_eof(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    log.error("lrprobe serve is gone; exiting (pid %d)", os.getpid())
    # No clean shutdown: a warm one would finish the running probe while a restarted serve
    # starts its own worker beside this one.
    os._exit(ORPHANED_EXIT_CODE)


def _hold(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        log.warning("waiting for the previous holder of %s (pid %s) to exit", path,
                    handle.read().strip() or "?")  # fmt: skip
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _held.append(handle)
