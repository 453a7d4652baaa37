"""Worker processes that run host tasks with a per-task deadline: the machinery under the
reward pool (`lrmjax.rewards.pool`) and the environment pool (`lrmjax.envs.pool`).

A `Crew` holds one worker per slot plus warm spares. Each worker loads one pickled task
function `fn` at start (by reference, so its module is imported there) and then serves tasks:
`fn(*args)` must return `(status, result)` and never raise. `run_tasks` hands a list of
argument tuples to the crew and returns every task's `(status, result)`: `TIMEOUT` for a task
past its deadline (its worker is SIGKILLed and a warm spare takes the slot), `ERROR` with a
message for a task whose worker died or whose arguments or result could not be pickled.

Workers start with `spawn` (the trainer process has JAX threads; fork is unsafe), ignore
SIGINT (the trainer handles Ctrl-C and stops them), and die with the process that started them
(PR_SET_PDEATHSIG where the starting thread is the main thread, and a watchdog thread that
exits when the lifeline pipe to the parent closes). This module imports no JAX.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

OK, ERROR, READY, TIMEOUT = "ok", "error", "ready", "timeout"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _tie_to_parent(lifeline: Connection, pdeathsig: bool) -> None:
    """Makes this worker exit when the process that started it does, even mid-task."""
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog below still covers it
            pass

    def watchdog() -> None:
        # The parent never writes to the lifeline: it becomes readable (EOF) only when the
        # parent closes it or dies. Also catches a parent that died before the prctl above.
        wait([lifeline])
        os._exit(1)

    threading.Thread(target=watchdog, name="worker-watchdog", daemon=True).start()


def _worker_main(conn: Connection, lifeline: Connection, payload: bytes,
                 pdeathsig: bool) -> None:
    """Worker process: load the task function, then serve tasks until told to stop."""
    # Ctrl-C in a terminal reaches the whole process group: the trainer handles it and stops
    # the workers (a KeyboardInterrupt here would print a traceback per worker). SIGINT was
    # blocked since the start (see Worker): ignore it, then unblock it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _tie_to_parent(lifeline, pdeathsig)
    try:
        fn = pickle.loads(payload)  # imports the function's module (and its registrations)
    except BaseException as e:  # noqa: BLE001 - ImportError, AttributeError, SystemExit, ...
        conn.send((ERROR, f"could not load the task function in a worker process: "
                          f"{type(e).__name__}: {e}"))
        return
    conn.send((READY, None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, args = msg
        status, result = fn(*args)
        try:
            conn.send((task_id, status, result))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable result
            conn.send((task_id, ERROR, f"could not send result: {e}"))


class Worker:
    def __init__(self, ctx: Any, payload: bytes, what: str):
        self.what = what
        self.conn, child = ctx.Pipe(duplex=True)
        their_lifeline, self.lifeline = ctx.Pipe(duplex=False)
        pdeathsig = threading.current_thread() is threading.main_thread()
        self.proc = ctx.Process(target=_worker_main, daemon=True,
                                args=(child, their_lifeline, payload, pdeathsig))
        # The child inherits this thread's signal mask: with SIGINT blocked, a Ctrl-C while
        # it starts up cannot interrupt it (once running it ignores SIGINT, see _worker_main).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        their_lifeline.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = math.inf

    def on_start(self, msg: tuple[str, Any] | None) -> None:
        """Handles the start-up message (None: the worker died before sending one)."""
        if msg is None:
            raise RuntimeError(f"{self.what} worker died while starting; check that it imports "
                               "in a fresh process")
        if msg[0] != READY:
            raise RuntimeError(f"{self.what} worker failed to start: {msg[1]}")
        self.ready = True

    def poll_ready(self) -> bool:
        """True once the worker has loaded its task function (never blocks)."""
        if not self.ready and self.conn.poll(0):
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = None
            self.on_start(msg)
        return self.ready

    def kill(self) -> None:
        """SIGKILLs the worker without waiting for it to exit (`Crew.kill` reaps it later)."""
        if self.proc.is_alive():
            self.proc.kill()
        self.conn.close()
        self.lifeline.close()


class Crew:
    """The pool's processes: active workers (one per slot), warm spares, and killed ones
    not yet reaped. Separate from the pool so that its shutdown can run at interpreter exit
    (multiprocessing's exit hook) without keeping the pool alive."""

    def __init__(self, start: Callable[[], Worker], workers: int, spares: int) -> None:
        self.start = start
        self.workers = [start() for _ in range(workers)]
        self.spares = [start() for _ in range(spares)]
        self.dying: list[Any] = []

    def kill(self, w: Worker) -> None:
        w.kill()
        self.dying.append(w.proc)
        alive = []
        for p in self.dying:
            if p.is_alive():  # waitpid(WNOHANG): collects it once it has exited
                alive.append(p)
            else:
                p.close()
        self.dying = alive

    def replace(self, k: int) -> None:
        """Kills worker k; a warm spare takes its slot and a fresh spare starts in the
        background, or without a warm spare a fresh worker takes the slot."""
        self.kill(self.workers[k])
        for s in list(self.spares):
            if s.poll_ready() and not s.proc.is_alive():  # died while idle
                self.spares.remove(s)
                self.kill(s)
                self.spares.append(self.start())
        warm = next((s for s in self.spares if s.ready), None)
        if warm is None:
            self.workers[k] = self.start()
        else:
            self.spares.remove(warm)
            self.workers[k] = warm
            self.spares.append(self.start())

    def shutdown(self) -> None:
        """Stops every process: idle ready workers are asked to exit, the rest (busy,
        starting) are killed; waits at most a few seconds in all. Idempotent."""
        everyone, self.workers, self.spares = self.workers + self.spares, [], []
        for w in everyone:
            try:
                if w.ready and w.task is None:
                    w.conn.send(None)
                    continue
            except (OSError, ValueError):
                pass
            if w.proc.is_alive():
                w.proc.kill()
        deadline = time.monotonic() + 2.0
        for p in [w.proc for w in everyone] + self.dying:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                p.kill()
                p.join(5)
            if p.exitcode is not None:
                p.close()
        for w in everyone:
            w.conn.close()
            w.lifeline.close()
        self.dying = []


def run_tasks(crew: Crew, tasks: Sequence[tuple], timeout_s: float) -> list[tuple[str, Any]]:
    """Runs `fn(*args)` for each args tuple of `tasks` on the crew's workers, in order of
    dispatch, each within `timeout_s` of its dispatch. Returns each task's (status, result)."""
    results: list[tuple[str, Any] | None] = [None] * len(tasks)
    workers = crew.workers
    pending = list(range(len(tasks)))[::-1]  # pop() from the end = in order
    remaining = len(tasks)
    while remaining:
        now = time.monotonic()
        for k, w in enumerate(workers):
            if w.ready and w.task is None and pending:
                t = pending.pop()
                try:
                    w.conn.send((t, tasks[t]))
                except Exception as e:  # noqa: BLE001 - e.g. unpicklable arguments
                    if isinstance(e, (BrokenPipeError, OSError)):
                        crew.replace(k)
                    results[t] = (ERROR, f"could not send task: {e}")
                    remaining -= 1
                    continue
                w.task, w.deadline = t, now + timeout_s
        if not remaining:
            break
        next_deadline = min((w.deadline for w in workers), default=math.inf)
        ready = wait([w.conn for w in workers],
                     timeout=None if next_deadline == math.inf
                     else max(0.0, next_deadline - time.monotonic()))
        ready_ids = {id(c) for c in ready}
        for k, w in enumerate(workers):
            if id(w.conn) in ready_ids:
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    # The worker died (segfault, os._exit, OOM kill): its task failed.
                    if not w.ready:
                        w.on_start(None)  # raises
                    if w.task is not None:
                        w.proc.join(1)  # for its exit code
                        results[w.task] = (ERROR, f"worker died: exit code {w.proc.exitcode}")
                        remaining -= 1
                    crew.replace(k)
                    continue
                if not w.ready:
                    w.on_start(msg)
                else:
                    t, status, payload = msg
                    if t == w.task:
                        results[t] = (status, payload)
                        remaining -= 1
                        w.task, w.deadline = None, math.inf
            elif w.task is not None and time.monotonic() >= w.deadline:
                results[w.task] = (TIMEOUT, None)
                remaining -= 1
                crew.replace(k)
    return results  # type: ignore[return-value]
