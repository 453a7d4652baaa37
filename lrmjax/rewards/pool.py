"""Run reward functions in worker processes with a per-task timeout.

A bad row must never crash or stall training. :class:`RewardPool` sends each row (or, for a
group-level reward, each group of rows sharing ``metadata["group_id"]``) to a worker
process as one task. A task that raises, returns the wrong shape, kills its worker, or
runs past ``timeout_s`` scores 0 for its rows and is counted; a NaN/inf score becomes 0 and
is counted. The first failure of each kind (per exception type) is logged with its message.
A reward that fails on every row of `max_failing_calls` consecutive calls raises
RuntimeError naming it and its error: a broken reward stops a run instead of training it on
zeros.

A worker past its deadline is SIGKILLed and a warm spare worker takes its place at once
(a fresh spare then starts in the background), so a hung task holds one worker for
``timeout_s`` and the call never waits for a worker to restart while a spare is warm.

Workers start with the ``spawn`` method (the trainer process has JAX threads; fork is
unsafe) and load the reward in their main thread, where math-verify's ``signal.alarm``
timeouts work. The reward goes to them pickled, i.e. by reference for a function: the
worker imports the function's module (re-running its ``@register``), so a custom reward
works there as long as it is defined at module level of an importable module or of the
script run as ``__main__``. A worker reports ready only after the reward is loaded, and
deadlines start at dispatch, so slow imports do not count against a task.

Workers die with the process that started them: on Linux they ask the kernel for SIGKILL
when their parent exits (PR_SET_PDEATHSIG, set only for workers started from the main
thread, since it fires when the starting *thread* exits), and a watchdog thread in each
worker exits when its lifeline pipe to the parent closes. They ignore SIGINT: Ctrl-C reaches
the whole process group, and the trainer handles it and stops them.

``num_workers=0`` runs in-process (tests, debugging): same error / NaN handling, but no
timeout (a hang blocks the caller; a timeout needs a process to kill).

Metrics returned by :meth:`RewardPool.score` (floats):
  ``reward/mean``, ``reward/std`` over the batch; ``reward/<component>`` means;
  ``reward/errors``, ``reward/timeouts``, ``reward/nonfinite``: number of rows affected;
  ``timing_s/reward``: wall time of the call.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing as mp
import pickle
import time
from collections.abc import Callable
from multiprocessing import util as mp_util
from typing import Any

import numpy as np

from lrmjax import workers
from lrmjax.rewards.base import as_result, check_batch, fn_name, is_group_level, resolve
from lrmjax.workers import ERROR as _ERROR
from lrmjax.workers import OK as _OK
from lrmjax.workers import TIMEOUT as _TIMEOUT

log = logging.getLogger(__name__)

# A reward that fails on every row of this many consecutive calls stops the run.
MAX_FAILING_CALLS = 3


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
        notes = "".join(f" ({note})" for note in getattr(e, "__notes__", ()))
        return _ERROR, f"{type(e).__name__}: {e}{notes}"[:1000]


class RewardPool:
    """Scores batches with a reward function in `num_workers` processes.

    Args:
      reward_fn: a registered name or a picklable callable (module-level function,
        ``functools.partial`` of one, ``CombinedReward``, ``ShapedReward``).
      num_workers: worker processes; 0 = in-process (no timeouts).
      timeout_s: per-task wall-clock limit (one row, or one group for group-level rewards).
        For the code reward keep it above the sandbox's own timeout.
      start_method: "spawn" (default) or "forkserver".
      spares: warm workers kept idle to replace a killed or dead worker at once.
      max_failing_calls: raise after this many consecutive calls in which every row failed
        (raised, timed out, killed its worker); None never raises.

    Use as a context manager or call :meth:`close` (idempotent; also run at interpreter
    exit and when the pool is garbage collected).
    """

    def __init__(self, reward_fn: str | Callable[..., Any], num_workers: int = 2,
                 timeout_s: float = 5.0, start_method: str = "spawn", spares: int = 1,
                 max_failing_calls: int | None = MAX_FAILING_CALLS):
        if num_workers < 0 or spares < 0:
            raise ValueError(f"num_workers and spares must be >= 0, got {num_workers}, "
                             f"{spares}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver' (fork is unsafe "
                             f"with JAX threads), got {start_method!r}")
        self.fn = resolve(reward_fn)  # validates a name in the parent, not in a worker
        self.name = fn_name(reward_fn)
        self.group_level = is_group_level(self.fn)
        self.process = bool(getattr(self.fn, "process", False))  # register_process: steps
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self.max_failing_calls = max_failing_calls
        self._failing_calls = 0
        self._logged: set[str] = set()
        self._closed = False
        self._crew: workers.Crew | None = None
        if num_workers == 0:
            return
        try:
            payload = pickle.dumps(functools.partial(_run_task, self.fn))
        except (pickle.PicklingError, AttributeError) as e:
            raise TypeError(
                f"reward {self.name!r} cannot go to worker processes ({e}): define it at "
                "module level, in an importable module or the script run as __main__, or "
                "use num_workers=0") from e
        ctx = mp.get_context(start_method)
        self._crew = workers.Crew(lambda: workers.Worker(ctx, payload, "reward"), num_workers,
                                  spares)
        # Stops the workers at close(), garbage collection or interpreter exit (before
        # multiprocessing terminates its daemon children), whichever comes first.
        self._finalizer = mp_util.Finalize(self, self._crew.shutdown, exitpriority=10)

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stops all workers (idempotent)."""
        self._closed = True
        if self._crew is not None:
            self._finalizer()  # runs the shutdown once; later calls do nothing

    @property
    def _workers(self) -> list[workers.Worker]:
        return self._crew.workers if self._crew is not None else []

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
        self._account(tasks, results)
        return tasks, results

    def _account(self, tasks: list[list[int]], results: list[tuple[str, Any]]) -> None:
        """Logs the first failure of each kind; raises after `max_failing_calls`
        consecutive calls in which every row failed."""
        failed, first = 0, None
        for rows, (status, payload) in zip(tasks, results, strict=True):
            if status == _OK:
                continue
            failed += len(rows)
            text = (payload if status == _ERROR else
                    f"Timeout: a task ran past timeout_s={self.timeout_s:g}")
            first = first or text
            kind = text.split(":", 1)[0]
            if kind not in self._logged:
                self._logged.add(kind)
                log.warning("reward %r: %s (the first failure of this kind; a failed row "
                            "scores 0 and is counted in reward/errors or reward/timeouts)",
                            self.name, text)
        rows = sum(len(r) for r in tasks)
        if not rows or failed < rows:
            self._failing_calls = 0 if rows else self._failing_calls
            return
        self._failing_calls += 1
        if self.max_failing_calls and self._failing_calls >= self.max_failing_calls:
            raise RuntimeError(f"reward {self.name!r} failed on every row of "
                               f"{self._failing_calls} consecutive calls: {first}")

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
            if status == _TIMEOUT:
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
            if status == _TIMEOUT:
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
        if self._closed or self._crew is None:
            raise RuntimeError("RewardPool is closed")
        args = [([prompts[i] for i in rows], [completions[i] for i in rows],
                 [metadata[i] for i in rows]) for rows in tasks]
        results[:] = workers.run_tasks(self._crew, args, self.timeout_s)
