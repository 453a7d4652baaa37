"""Run environment steps in worker processes, each within a deadline.

`EnvPool.call(envs, method, args)` runs `env.reset(example)` or `env.step(action)` for a batch
of episodes on the pool's workers (`lrmjax.workers`): each environment goes to a worker
pickled with its argument and comes back with its new state and its result. A step that
raises, hangs past `timeout_s`, kills its worker, or returns something that is not a
`StepResult` with a text observation, a finite reward and a bool `done` ends that episode:
its `EnvOutcome` has `failure` set ('error' or 'timeout', with the message in `detail`) and
the trainer scores the episode 0 and counts it (`env/errors`, `env/timeouts`). An observation
longer than `max_observation_chars` is cut in the worker (before it is pickled back) and
flagged `truncated`.

`num_workers=0` runs in-process (tests, debugging): the same checks, no timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import numbers
import pickle
from collections.abc import Sequence
from multiprocessing import util as mp_util
from typing import Any

from lrmjax import workers
from lrmjax.envs.base import Environment, StepResult

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EnvOutcome:
    """One episode's answer to one call.

    Attributes:
      env: the environment's state after the call (the input state when the call failed).
      result: the StepResult (for reset: its observation holds the prompt), or None on
        failure.
      failure: None, 'error' or 'timeout'.
      detail: the failure's message.
      truncated: the observation was cut to `max_observation_chars`.
    """

    env: Environment
    result: StepResult | None
    failure: str | None = None
    detail: str = ""
    truncated: bool = False


def _checked(result: Any, method: str) -> StepResult:
    if method == "reset":
        if not isinstance(result, str):
            raise TypeError(f"reset returned {type(result).__name__}, not the prompt text")
        return StepResult(observation=result)
    if not isinstance(result, StepResult):
        raise TypeError(f"step returned {type(result).__name__}, not a StepResult")
    if not isinstance(result.observation, str):
        raise TypeError(f"step's observation is {type(result.observation).__name__}, not str")
    if not isinstance(result.done, bool):
        raise TypeError(f"step's done is {type(result.done).__name__}, not bool")
    if not isinstance(result.reward, numbers.Real):  # not a str that float() would parse
        raise TypeError(f"step's reward {result.reward!r} is not a number")
    reward = float(result.reward)
    if not math.isfinite(reward):
        raise ValueError(f"step's reward is {reward}")
    return dataclasses.replace(result, reward=reward)


def _call(env: Environment, method: str, arg: Any, max_chars: int) -> tuple[str, Any]:
    """Runs one call; never raises. OK -> (env, result, truncated)."""
    try:
        result = _checked(getattr(env, method)(arg), method)
        truncated = len(result.observation) > max_chars
        if truncated:
            result = dataclasses.replace(result, observation=result.observation[:max_chars])
        return workers.OK, (env, result, truncated)
    except (Exception, SystemExit) as e:  # any env failure ends that episode, counted
        return workers.ERROR, f"{type(e).__name__}: {e}"[:1000]


class EnvPool:
    """Steps environments in `num_workers` processes (0: in-process, no timeout).

    Args:
      num_workers, spares, start_method: as `RewardPool`'s.
      timeout_s: per-call wall-clock limit.
      max_observation_chars: longer observations are cut (and flagged).
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 10.0, spares: int = 1,
                 max_observation_chars: int = 20_000, start_method: str = "spawn"):
        if num_workers < 0 or spares < 0 or not timeout_s > 0 or max_observation_chars < 1:
            raise ValueError(f"EnvPool: need num_workers, spares >= 0, timeout_s > 0 and "
                             f"max_observation_chars >= 1, got {num_workers}, {spares}, "
                             f"{timeout_s}, {max_observation_chars}")
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self.max_observation_chars = max_observation_chars
        self._logged: set[str] = set()
        self._crew: workers.Crew | None = None
        if num_workers:
            ctx = mp.get_context(start_method)
            payload = pickle.dumps(_call)
            self._crew = workers.Crew(lambda: workers.Worker(ctx, payload, "environment"),
                                      num_workers, spares)
            self._finalizer = mp_util.Finalize(self, self._crew.shutdown, exitpriority=10)

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        if self._crew is not None:
            self._finalizer()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def call(self, envs: Sequence[Environment], method: str, args: Sequence[Any]
             ) -> list[EnvOutcome]:
        """`env.<method>(arg)` for each pair; `method` is 'reset' or 'step'."""
        if method not in ("reset", "step"):
            raise ValueError(f"EnvPool.call: method must be 'reset' or 'step', got {method!r}")
        tasks = [(env, method, arg, self.max_observation_chars)
                 for env, arg in zip(envs, args, strict=True)]
        if self._crew is None:
            results = [_call(*t) for t in tasks]
        else:
            results = workers.run_tasks(self._crew, tasks, self.timeout_s)
        out = []
        for env, (status, payload) in zip(envs, results, strict=True):
            if status == workers.OK:
                new_env, result, truncated = payload
                out.append(EnvOutcome(new_env, result, truncated=truncated))
                continue
            failure = "timeout" if status == workers.TIMEOUT else "error"
            detail = (f"{method} ran past timeout_s={self.timeout_s:g}"
                      if status == workers.TIMEOUT else str(payload))
            kind = f"{failure}:{detail.split(':', 1)[0]}"
            if kind not in self._logged:
                self._logged.add(kind)
                log.warning("environment %s %s: %s (the first failure of this kind; the "
                            "episode ends with reward 0, counted in env/errors or "
                            "env/timeouts)", type(env).__name__, method, detail)
            out.append(EnvOutcome(env, None, failure, detail))
        return out
