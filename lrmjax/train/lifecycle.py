"""A run's hold on its workdir: one run per workdir, a clean stop on SIGINT / SIGTERM, and
everything it opened closed on every way out.

`Run` is entered once per `train()` call:

- `lock()` takes `workdir/.lock` (an `fcntl.flock`, by process 0 of a multi-host run) and
  writes the holder's host and pid into it. A second run on the same workdir is refused at once
  with `WorkdirBusy` naming that holder. The kernel drops a flock when its process dies, however
  it dies, so a file left by a killed run (SIGKILL included) never blocks its resume; the file
  itself stays and only says who held it last. The descriptor is not inherited by exec'd
  children (reward workers, sandboxes), so they cannot keep the lock alive. flock is advisory
  and local to the machine unless the file system forwards it (Linux NFSv4 does).
- While entered, SIGINT and SIGTERM only set a flag. The loops ask `stop_requested()` at each
  step boundary (every host agrees), save the step they are at and call `stop()`, which logs
  how to resume and raises `Stopped`. A second Ctrl-C raises KeyboardInterrupt at once. The
  previous handlers come back on exit.
- `own(obj)` registers `obj.close()` (if it has one) for exit, newest first: the checkpointer
  waits for its saves in flight before the metrics writer and the inputs close. On the way out
  of an exception the first error stays the one that propagates; later close errors are logged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class WorkdirBusy(RuntimeError):
    """Another live run holds the workdir's lock."""


class Stopped(Exception):
    """Raised by `train()` after a SIGINT / SIGTERM once the current step was saved.

    Attributes:
      signum: the signal that asked for the stop.
      where: the step it stopped after, e.g. "RL step 7".
    """

    def __init__(self, message: str, signum: int, where: str):
        super().__init__(message)
        self.signum = signum
        self.where = where


def resume_command(workdir: str) -> str:
    """The command that resumes this run: the same command line when it came from
    `lrmjax.main`, else a call of `train` with the same workdir."""
    argv = sys.argv
    if argv and argv[0].endswith(os.path.join("lrmjax", "main.py")):
        return shlex.join(["python", "-m", "lrmjax.main", *argv[1:]])
    return f"train(cfg, {workdir!r}) with the same config"


class Run:
    """Lock, stop signals and closing for one `train()` call (see the module docstring)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._lock_fd: int | None = None
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._owned: list[Any] = []
        self.log = print  # the metrics writer's log, once there is one

    # ------------------------------------------------------------ enter / exit
    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            for obj in reversed(self._owned):
                try:
                    obj.close()
                except Exception:
                    if exc is None:
                        raise
                    log.exception("while closing %s after an error", type(obj).__name__)
        finally:
            self._owned.clear()
            self._unlock()
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def own(self, obj: Any) -> Any:
        """Closes `obj` (if it has a `close` method) when the run exits. Returns `obj`."""
        if getattr(obj, "close", None) is not None:
            self._owned.append(obj)
        return obj

    # ------------------------------------------------------------ the workdir lock
    def lock(self, is_main: bool) -> None:
        """Takes the workdir's lock on process 0; every host raises `WorkdirBusy` if it is
        held by another live run."""
        from lrmjax import parallel

        error = None
        if is_main:
            try:
                self._lock_fd = _acquire(os.path.join(self.workdir, LOCK_FILE))
            except WorkdirBusy as e:
                error = e
        if not parallel.same_on_all_hosts(error is None):
            raise error or WorkdirBusy(f"{self.workdir} is in use by another run (process 0 "
                                       "found its lock held)")

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------ stopping
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._signum = signum
        # os.write, not print: a handler can run in the middle of another write to stdout.
        os.write(2, f"\n{signal.Signals(signum).name} received: stopping after this step, "
                    "once it is saved (Ctrl-C again to stop at once)\n".encode())

    def stop_requested(self) -> bool:
        """Whether a stop signal reached any host (a collective in a multi-host run)."""
        import jax

        asked = self._signum is not None
        if jax.process_count() == 1:
            return asked
        from lrmjax import parallel

        return bool(parallel.global_to_host(np.array([asked])).any())

    def stop(self, where: str) -> None:
        """Logs that the run stopped after `where` (whose checkpoint is saved) and how to
        resume it, then raises `Stopped`."""
        signum = self._signum or signal.SIGTERM
        message = (f"stopped by {signal.Signals(signum).name} after {where}, which is saved; "
                   f"rerun with the same --workdir to resume: {resume_command(self.workdir)}")
        self.log(message)
        raise Stopped(message, signum, where)


def _acquire(path: str) -> int:
    """An exclusive flock on `path` holding this process's host and pid, or WorkdirBusy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inheritable (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = _holder(fd)
        os.close(fd)
        raise WorkdirBusy(
            f"{os.path.dirname(path) or '.'} is in use by another run (host "
            f"{holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{holder.get('started', '?')}): wait for it to finish, stop it, or give this run "
            "another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "argv": sys.argv}).encode(), 0)
    return fd


def _holder(fd: int) -> dict[str, Any]:
    """The holder's JSON from the lock file; the holder writes it right after locking, so an
    empty file is read again for a moment."""
    for _ in range(20):
        with contextlib.suppress(ValueError):
            data = os.pread(fd, 1 << 16, 0)
            if data:
                return json.loads(data)
        time.sleep(0.05)
    return {}
