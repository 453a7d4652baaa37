"""Guess the number: a task for the `guess_number` environment (several turns, feedback).

Each example hides a secret in [1, high]; the prompt ("#0412 1-32?\n") shows the range and
a tag that tells episodes apart (the secret is the environment's hidden state, so without the
tag every prompt would be the same, and the trainer keeps held-out prompts out of training).
A turn is a guess ending in a newline; the environment answers "higher\n" or "lower\n", or
ends the episode when the guess is right. The demonstration (`metadata['demonstration_turns']`)
is binary search: `ceil(log2(high + 1))` guesses at most, which is what `max_turns` allows in
`configs/guess_grpo.py`, so only an exact search always succeeds. The verifier reads the last
guess of the episode (the text the reward functions score is the final turn).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example, Task

_NUMBER = re.compile(r"-?\d{1,9}")


def binary_search_turns(secret: int, high: int) -> list[list[Any]]:
    """The demonstration: [text, is_model] segments of binary search over [1, high]."""
    lo, hi, turns = 1, high, []
    while True:
        guess = (lo + hi) // 2
        turns.append([f"{guess}\n", True])
        if guess == secret:
            return turns
        if guess < secret:
            lo = guess + 1
            turns.append(["higher\n", False])
        else:
            hi = guess - 1
            turns.append(["lower\n", False])


class GuessNumberTask(Task):
    """Secrets uniform in [1, high] (difficulty = high)."""

    name = "guess_number"

    def __init__(self, high: int = 32):
        if not 2 <= high <= 10**6:
            raise ValueError(f"GuessNumberTask: high must be in [2, 1e6], got {high}")
        self.high = int(high)

    @property
    def config(self) -> dict[str, Any]:
        return {"high": self.high}

    @property
    def difficulty(self) -> int:
        return self.high

    def with_difficulty(self, difficulty: int) -> GuessNumberTask:
        return GuessNumberTask(difficulty)

    def max_answer_chars(self) -> int:
        return len(str(self.high)) + 1

    def example(self, seed: int) -> Example:
        rng = np.random.default_rng(seed)
        secret = int(rng.integers(1, self.high + 1))
        tag = int(rng.integers(0, 10_000))
        return Example(prompt=f"#{tag:04d} 1-{self.high}?\n", answer=str(secret),
                       metadata=self._metadata(seed, secret=secret, low=1, high=self.high,
                                               demonstration_turns=binary_search_turns(
                                                   secret, self.high)))

    def verify(self, example: Example, completion: str) -> float:
        """1.0 iff the last number in `completion` (the episode's final guess) is the secret."""
        if not isinstance(completion, str):
            return 0.0
        found = _NUMBER.findall(completion)
        return float(bool(found) and found[-1] == example.answer)
