"""The environment protocol and its registry.

An `Environment` is one episode's state, on the host. The trainer makes a fresh one per
episode (`make_env(name, **kwargs)`), calls `reset(example)` once, then `step(action)` with the
text of each model turn until the step says `done` or the episode runs out of turns or
tokens::

    @register_env("guess")
    class GuessEnv(Environment):
        max_turns = 6

        def reset(self, example):
            self.secret = example.metadata["secret"]
            return example.prompt

        def step(self, action):
            guess = int(action.strip() or -1)
            if guess == self.secret:
                return StepResult("", reward=1.0, done=True)
            return StepResult("higher\\n" if guess < self.secret else "lower\\n")

(`make_env` lives in `lrmjax.envs`, which imports the shipped environments.)
`reset` returns the prompt text (the data pipeline encodes it); `step` returns a
`StepResult`. Rewards: the episode's outcome is the sum of its steps' rewards plus the
run's reward functions (`reward.fns`) applied to the final turn's text; per-step rewards also
reach the token-level estimators at the token that ended the turn (`train.rollouts`).
Environments run in worker processes (`envs.pool.EnvPool`) with a per-step timeout; they
must be picklable (the state goes to the worker and back every step) and import no JAX.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from lrmjax.data.tasks.base import Example


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What an environment answers to one model turn.

    Attributes:
      observation: text the model reads before its next turn ("" when done).
      reward: this step's reward (finite float).
      done: the episode ends here.
      info: counters summed into the metrics as `env/<key>` (e.g. tool_calls, tool_errors:
        numbers only), and for chat models optionally 'messages': the chat messages of the
        observation (default: one `tool` message holding `observation`).
    """

    observation: str = ""
    reward: float = 0.0
    done: bool = False
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Environment(abc.ABC):
    """One episode. Subclasses set `max_turns` (model turns per episode) and implement
    `step`; `reset` defaults to the example's prompt."""

    max_turns: int = 1

    def reset(self, example: Example) -> str:
        """Starts the episode on `example`; returns the prompt text."""
        self.example = example
        return example.prompt

    @abc.abstractmethod
    def step(self, action: str) -> StepResult:
        """Answers one model turn (the decoded text of its tokens)."""

    def tools(self) -> list[dict]:
        """Tool schemas for a chat template's `tools=` (none by default)."""
        return []


ENVIRONMENTS: dict[str, Callable[..., Environment]] = {}


def register_env(name: str) -> Callable[[type[Environment]], type[Environment]]:
    """Class decorator: makes `make_env(name, **kwargs)` build the class."""

    def wrap(cls: type[Environment]) -> type[Environment]:
        if name in ENVIRONMENTS and ENVIRONMENTS[name] is not cls:
            raise ValueError(f"environment {name!r} is already registered")
        ENVIRONMENTS[name] = cls
        return cls

    return wrap
