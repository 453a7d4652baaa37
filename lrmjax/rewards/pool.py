"""Run reward functions in worker processes with a per-task timeout.

A reward must never crash or stall training. :class:`RewardPool` sends each row (or, for a
group-level reward, each group of rows sharing ``metadata["group_id"]``) to a worker
process as one task. A task that raises, returns the wrong shape, kills its worker, or
runs past ``timeout_s`` scores 0 for its rows and is counted; a NaN/inf score becomes 0 and
is counted. A worker past its deadline is SIGKILLed and replaced, so one hang costs at
most ``timeout_s`` of wall time while the other workers keep going.

Workers start with the ``spawn`` method (the trainer process has JAX threads; fork is
unsafe) and import the reward in their main thread, where math-verify's ``signal.alarm``
timeouts work. A worker reports ready only after the reward is imported, and deadlines
start at dispatch, so slow imports do not count against a task.

``num_workers=0`` runs in-process (tests, debugging): same error / NaN handling, but no
timeout (a hang blocks the caller; a timeout needs a process to kill).

Metrics returned by :meth:`RewardPool.score` (floats):
  ``reward/mean``, ``reward/std`` over the batch; ``reward/<component>`` means;
  ``reward/errors``, ``reward/timeouts``, ``reward/nonfinite``: number of rows affected;
  ``timing_s/reward``: wall time of the call.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from lrmjax.rewards.base import as_result, check_batch, is_group_level, resolve

_OK, _ERROR, _READY = "ok", "error", "ready"


def _run_task(fn: Callable[..., Any], prompts: list[str], completions: list[str],
              metadata: list[dict]) -> tuple[str, Any]:
    """Runs `fn` on one task; never raises (except process-killing signals)."""
    try:
        if getattr(fn, "process", False):  # a process reward: per row, its (end, value) steps
            steps = [list(row) for row in fn(prompts, completions, metadata)]
            if len(steps) != len(completions):
                raise ValueError(f"process reward returned {len(steps)} rows for "
                                 f"{len(completions)} completions")
            return _OK, steps
        res = as_result(fn(prompts, completions, metadata), len(completions))
        return _OK, (res.scores, res.components)
    except (Exception, SystemExit) as e:  # any reward failure is scored 0 and counted
        return _ERROR, f"{type(e).__name__}: {e}"[:1000]


def _worker_main(conn: Connection, fn_spec: str | Callable[..., Any]) -> None:
    """Worker process: resolve the reward, then serve tasks until told to stop."""
    try:
        fn = resolve(fn_spec)
    except Exception as e:  # noqa: BLE001
        conn.send((_ERROR, f"could not load reward {fn_spec!r}: {e}"))
        return
    conn.send((_READY, None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task_id, prompts, completions, metadata = msg
        status, payload = _run_task(fn, prompts, completions, metadata)
        try:
            conn.send((task_id, status, payload))
        except Exception as e:  # noqa: BLE001 - e.g. an unpicklable component
            conn.send((task_id, _ERROR, f"could not send result: {e}"))


class _Worker:
    def __init__(self, ctx: Any, fn_spec: Any):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(child, fn_spec), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.task: int | None = None
        self.deadline = math.inf

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class RewardPool:
    """Scores batches with a reward function in `num_workers` processes.

    Args:
      reward_fn: a registered name or a picklable callable (module-level function,
        ``functools.partial`` of one, ``CombinedReward``, ``ShapedReward``).
      num_workers: worker processes; 0 = in-process (no timeouts).
      timeout_s: per-task wall-clock limit (one row, or one group for group-level rewards).
        For the code reward keep it above the sandbox's own timeout.
      start_method: "spawn" (default) or "forkserver".

    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, reward_fn: str | Callable[..., Any], num_workers: int = 2,
                 timeout_s: float = 5.0, start_method: str = "spawn"):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe "
                             f"with JAX threads), got {start_method!r}")
        self.fn_spec = reward_fn
        self.fn = resolve(reward_fn)  # validates a name in the parent, not in a worker
        self.group_level = is_group_level(self.fn)
        self.process = bool(getattr(self.fn, "process", False))  # register_process: steps
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self._ctx = mp.get_context(start_method)
        self._workers = [_Worker(self._ctx, self.fn_spec) for _ in range(num_workers)]

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stops all workers (idempotent)."""
        for w in self._workers:
            w.stop()
        self._workers = []

    def _tasks(self, metadata: list[dict]) -> list[list[int]]:
        if getattr(self.fn, "batched", False):
            # Model-based rewards score a whole batch in one device call (one raise then
            # zeroes the batch, counted per row).
            return [list(range(len(metadata)))] if metadata else []
        if not self.group_level:
            return [[i] for i in range(len(metadata))]
        groups: dict[Any, list[int]] = {}
        singles = []
        for i, meta in enumerate(metadata):
            if isinstance(meta, dict) and "group_id" in meta:
                groups.setdefault(meta["group_id"], []).append(i)
            else:
                singles.append([i])  # the reward raises on it, naming the row
        return list(groups.values()) + singles

    def _run(self, prompts: list[str], completions: list[str], metadata: list[dict]
             ) -> tuple[list[list[int]], list[tuple[str, Any]]]:
        check_batch(prompts, completions, metadata)
        tasks = self._tasks(metadata)
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        if self.num_workers == 0:
            for t, rows in enumerate(tasks):
                results[t] = _run_task(self.fn, [prompts[i] for i in rows],
                                       [completions[i] for i in rows],
                                       [metadata[i] for i in rows])
        else:
            self._run_parallel(tasks, prompts, completions, metadata, results)
        return tasks, results

    def score_steps(self, prompts: list[str], completions: list[str], metadata: list[dict]
                    ) -> tuple[list[list[Any]], dict[str, float]]:
        """Runs a process reward (see lrmjax.rewards.process) over a batch.

        Returns the (end, value) steps of each row ([] where the row's task raised, returned
        the wrong number of rows, or timed out) and the counts `errors` and `timeouts`.
        """
        if not self.process:
            raise TypeError("score_steps needs a process reward (register_process)")
        tasks, results = self._run(prompts, completions, metadata)
        steps: list[list[Any]] = [[] for _ in completions]
        errors = timeouts = 0
        for rows, (status, payload) in zip(tasks, results, strict=True):
            if status == "timeout":
                timeouts += len(rows)
            elif status == _ERROR:
                errors += len(rows)
            else:
                for i, row_steps in zip(rows, payload, strict=True):
                    steps[i] = row_steps
        return steps, {"errors": float(errors), "timeouts": float(timeouts)}

    def score(self, prompts: list[str], completions: list[str], metadata: list[dict]
              ) -> tuple[np.ndarray, dict[str, float], dict[str, np.ndarray]]:
        """Scores a batch.

        Returns:
          scores: [B] float64, 0 for rows that errored, timed out or were non-finite.
          metrics: flat dict of floats (see module docstring).
          components: name -> [B] float64 (0 where the row failed or lacked the component).
        """
        if self.process:
            raise TypeError("a process reward returns steps, not scores: use score_steps")
        start = time.monotonic()
        n = len(completions)
        tasks, results = self._run(prompts, completions, metadata)

        scores = np.zeros(n, dtype=np.float64)
        comps: dict[str, np.ndarray] = {}
        errors = timeouts = nonfinite = 0
        for rows, (status, payload) in zip(tasks, results, strict=True):
            if status == "timeout":
                timeouts += len(rows)
                continue
            if status == _ERROR:
                errors += len(rows)
                continue
            task_scores, task_comps = payload
            for i, s in zip(rows, task_scores, strict=True):
                if math.isfinite(s):
                    scores[i] = s
                else:
                    nonfinite += 1
            for name, values in task_comps.items():
                arr = comps.setdefault(name, np.zeros(n, dtype=np.float64))
                for i, v in zip(rows, values, strict=True):
                    arr[i] = v if math.isfinite(v) else 0.0
        metrics = {
            "reward/mean": float(scores.mean()) if n else 0.0,
            "reward/std": float(scores.std()) if n else 0.0,
            "reward/errors": float(errors),
            "reward/timeouts": float(timeouts),
            "reward/nonfinite": float(nonfinite),
            "timing_s/reward": time.monotonic() - start,
        }
        for name, arr in comps.items():
            metrics[f"reward/{name}"] = float(arr.mean()) if n else 0.0
        return scores, metrics, comps

    def _run_parallel(self, tasks: list[list[int]], prompts: list[str],
                      completions: list[str], metadata: list[dict],
                      results: list[tuple[str, Any] | None]) -> None:
        if not self._workers:
            raise RuntimeError("RewardPool is closed")
        pending = list(range(len(tasks)))[::-1]  # pop() from the end = in order
        remaining = len(tasks)
        while remaining:
            now = time.monotonic()
            for k, w in enumerate(self._workers):
                if w.ready and w.task is None and pending:
                    t = pending.pop()
                    rows = tasks[t]
                    try:
                        w.conn.send((t, [prompts[i] for i in rows],
                                     [completions[i] for i in rows],
                                     [metadata[i] for i in rows]))
                    except Exception as e:  # noqa: BLE001 - e.g. unpicklable metadata
                        if isinstance(e, (BrokenPipeError, OSError)):
                            self._replace(k)
                        results[t] = (_ERROR, f"could not send task: {e}")
                        remaining -= 1
                        continue
                    w.task, w.deadline = t, now + self.timeout_s
            if not remaining:
                break
            next_deadline = min((w.deadline for w in self._workers), default=math.inf)
            ready = wait([w.conn for w in self._workers],
                         timeout=None if next_deadline == math.inf
                         else max(0.0, next_deadline - time.monotonic()))
            ready_ids = {id(c) for c in ready}
            for k, w in enumerate(self._workers):
                if id(w.conn) in ready_ids:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError) as e:
                        # The worker died (segfault, os._exit, OOM kill): its task failed.
                        if w.task is not None:
                            results[w.task] = (_ERROR, "worker died")
                            remaining -= 1
                        elif not w.ready:
                            raise RuntimeError("reward worker died while starting; check "
                                               "that the reward imports in a fresh process") from e
                        self._replace(k)
                        continue
                    if msg[0] == _READY:
                        w.ready = True
                    elif msg[0] == _ERROR and not w.ready:
                        raise RuntimeError(f"reward worker failed to start: {msg[1]}")
                    else:
                        t, status, payload = msg
                        if t == w.task:
                            results[t] = (status, payload)
                            remaining -= 1
                            w.task, w.deadline = None, math.inf
                elif w.task is not None and time.monotonic() >= w.deadline:
                    results[w.task] = ("timeout", None)
                    remaining -= 1
                    self._replace(k)

    def _replace(self, k: int) -> None:
        """Kills worker k and starts a fresh one in its slot (ready when it says so)."""
        self._workers[k].kill()
        self._workers[k] = _Worker(self._ctx, self.fn_spec)
