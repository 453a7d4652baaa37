"""Arithmetic with a scratchpad of free length before the answer: the response's length is the
model's choice and costs or earns nothing, which is what a study of length biases needs
(Dr. GRPO, Liu et al. 2025, arXiv:2503.20783).

Prompts are `ArithmeticTask`'s (`"123+456="`). A completion is any scratchpad, a marker (`#`),
then the answer: `"....#975"`. The verifier reads only the text after the last marker, with
`ArithmeticTask.verify`'s rules (so it must be the canonical result, reversed if the task
reverses answers); a completion without the marker scores 0. The scratchpad carries nothing the
verifier reads, so a change of response length under RL comes from the objective, not from
the task rewarding longer reasoning.

Demonstrations (`metadata['demonstration']`, for the supervised warm start) pad the scratchpad
with 0..`max_pad` filler characters (uniform, drawn from the example's seed), so the warm-started
model has a spread of lengths for RL to move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lrmjax.data.tasks.arithmetic import ArithmeticTask
from lrmjax.data.tasks.base import Example, Task


class ScratchpadArithmeticTask(Task):
    """`ArithmeticTask` prompts; answers after a scratchpad and a marker.

    Args:
      digits, ops, reverse_answer, min_digits: the arithmetic (`ArithmeticTask`).
      max_pad: the longest filler a demonstration's scratchpad has (>= 0).
      marker: the one character that ends the scratchpad (not a digit).
      pad: the filler character of demonstrations (not the marker).
    """

    name = "scratchpad_arithmetic"

    def __init__(self, digits: int = 3, ops: Sequence[str] = ("+",), reverse_answer: bool = False,
                 min_digits: int = 1, max_pad: int = 8, marker: str = "#", pad: str = "."):
        self.arithmetic = ArithmeticTask(digits, ops, reverse_answer, min_digits)
        if not isinstance(max_pad, int) or isinstance(max_pad, bool) or max_pad < 0:
            raise ValueError(f"ScratchpadArithmeticTask: max_pad must be an int >= 0, "
                             f"got {max_pad!r}")
        if len(marker) != 1 or marker.isdigit() or marker.isspace():
            raise ValueError(f"ScratchpadArithmeticTask: marker must be one character, not a "
                             f"digit or space, got {marker!r}")
        if len(pad) != 1 or pad == marker:
            raise ValueError(f"ScratchpadArithmeticTask: pad must be one character other than "
                             f"the marker {marker!r}, got {pad!r}")
        self.max_pad, self.marker, self.pad = max_pad, marker, pad

    @property
    def config(self) -> dict[str, Any]:
        return {**self.arithmetic.config, "max_pad": self.max_pad, "marker": self.marker,
                "pad": self.pad}

    @property
    def difficulty(self) -> int:
        return self.arithmetic.digits

    def with_difficulty(self, difficulty: int) -> ScratchpadArithmeticTask:
        a = self.arithmetic.with_difficulty(difficulty)
        return ScratchpadArithmeticTask(a.digits, a.ops, a.reverse_answer, a.min_digits,
                                        self.max_pad, self.marker, self.pad)

    def max_answer_chars(self) -> int:
        """The longest demonstration: the full filler, the marker and the longest answer."""
        return self.max_pad + 1 + self.arithmetic.max_answer_chars()

    def example(self, seed: int) -> Example:
        inner = self.arithmetic.example(seed)
        # A stream of its own, so the arithmetic is the same as ArithmeticTask's for the seed.
        filler = int(np.random.default_rng([seed, 1]).integers(0, self.max_pad + 1))
        demo = self.pad * filler + self.marker + inner.answer
        return Example(prompt=inner.prompt, answer=inner.answer,
                       metadata=self._metadata(seed, result=inner.metadata["result"],
                                               demonstration=demo))

    def verify(self, example: Example, completion: str) -> float:
        """1.0 iff the text after the last marker is a correct answer (`ArithmeticTask`)."""
        if not isinstance(completion, str) or self.marker not in completion:
            return 0.0
        return self.arithmetic.verify(example, completion.rsplit(self.marker, 1)[1])
