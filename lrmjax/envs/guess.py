"""`guess_number`: find a secret integer from higher/lower replies (needs several turns).

The prompt gives the range (`data.tasks.guess.GuessNumberTask`: "#0412 1-32?"); each turn
the model writes a number and a newline (the turn's stop string), and the environment answers
`higher`, `lower` (the secret is above / below the guess) or ends the episode with reward
`reward` when the guess is right (0 when the run's reward functions already score success,
e.g. the task's verifier on the last guess). A turn that is not a number in range is
answered `?` and counts as a turn. Binary search needs at most ceil(log2(range)) turns, so
with `max_turns` below the range size the model must use the replies.
"""

from __future__ import annotations

import re

from lrmjax.data.tasks.base import Example
from lrmjax.envs.base import Environment, StepResult, register_env

_NUMBER = re.compile(r"-?\d{1,9}")


@register_env("guess_number")
class GuessNumberEnv(Environment):
    """Args: max_turns: guesses allowed; reward: for the right guess. The example's
    metadata holds 'secret', 'low' and 'high'."""

    def __init__(self, max_turns: int = 7, reward: float = 1.0):
        if max_turns < 1:
            raise ValueError(f"GuessNumberEnv: max_turns must be >= 1, got {max_turns}")
        self.max_turns, self.reward = int(max_turns), float(reward)

    def stop_strings(self) -> tuple[str, ...]:
        """A guess ends at its newline."""
        return ("\n",)

    def reset(self, example: Example) -> str:
        meta = example.metadata
        self.secret, self.low, self.high = int(meta["secret"]), int(meta["low"]), int(meta["high"])
        self.guesses = 0
        return example.prompt

    def step(self, action: str) -> StepResult:
        self.guesses += 1
        found = _NUMBER.findall(action)
        guess = int(found[-1]) if found else None
        if guess is None or not self.low <= guess <= self.high:
            return StepResult("?\n", info={"invalid_guesses": 1})
        if guess == self.secret:
            return StepResult(reward=self.reward, done=True, info={"invalid_guesses": 0})
        reply = "higher\n" if guess < self.secret else "lower\n"
        return StepResult(reply, info={"invalid_guesses": 0})
