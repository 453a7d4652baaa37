"""Multi-digit integer arithmetic, small enough for a CPU-tiny model with a character tokenizer.

Prompts look like `"123+456="` and a correct completion is the result in canonical decimal
(no leading zeros, no '+' sign), optionally written least-significant digit first
(`reverse_answer=True`, "975" for 579). Writing the answer reversed lets a causal model emit
each digit after the carries it depends on, which makes addition learnable by tiny transformers
(Lee et al. 2023, "Teaching Arithmetic to Small Transformers"; Shen et al. 2023).

Difficulty is the maximum number of digits per operand. Subtraction orders its operands so
results are never negative (the answer alphabet stays digits only).

`ArithmeticTask.verify(example, text)` is the host verifier. Its twin on token ids, jittable,
is `lrmjax.data.tasks.arithmetic_device.arithmetic_device_reward`: a module of its own, so that
reward workers, which import this one, import no JAX.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example, Task

_OPS = ("+", "-", "*")
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
# Prompt is 2 * digits + 2 characters; 10 digits keeps it under 24.
MAX_DIGITS = 10


class ArithmeticTask(Task):
    """`a <op> b =` with operands of 1..`digits` digits.

    Args:
      digits: difficulty knob: the most digits an operand has (1..10). Each operand first draws
        its digit count uniformly from [min_digits, digits], then a value uniformly among the
        numbers with that many digits, so short and long operands are equally common.
      ops: the operators to draw from, a subset of ('+', '-', '*').
      reverse_answer: write the answer least-significant digit first.
      min_digits: the fewest digits an operand has.
    """

    name = "arithmetic"

    def __init__(self, digits: int = 3, ops: Sequence[str] = ("+",), reverse_answer: bool = False,
                 min_digits: int = 1):
        ops = tuple(ops)
        if not ops or any(op not in _OPS for op in ops):
            raise ValueError(f"ArithmeticTask: ops must be a non-empty subset of {_OPS}, got {ops}")
        if not 1 <= min_digits <= digits <= MAX_DIGITS:
            raise ValueError("ArithmeticTask: need 1 <= min_digits <= digits <= "
                             f"{MAX_DIGITS}, got min_digits={min_digits}, digits={digits}")
        self.digits = int(digits)
        self.ops = ops
        self.reverse_answer = bool(reverse_answer)
        self.min_digits = int(min_digits)

    @property
    def config(self) -> dict[str, Any]:
        return {"digits": self.digits, "ops": list(self.ops),
                "reverse_answer": self.reverse_answer, "min_digits": self.min_digits}

    @property
    def difficulty(self) -> int:
        return self.digits

    def with_difficulty(self, difficulty: int) -> ArithmeticTask:
        return ArithmeticTask(difficulty, self.ops, self.reverse_answer,
                              min(self.min_digits, difficulty))

    def max_answer_chars(self) -> int:
        """The most characters an answer has: the digits of the largest result of any of the
        task's operators (reversal keeps the length; results are never negative)."""
        largest = 10**self.digits - 1
        smallest = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        results = {"+": 2 * largest, "-": largest - smallest, "*": largest * largest}
        return max(len(str(results[op])) for op in self.ops)

    def _operand(self, rng: np.random.Generator) -> int:
        n = int(rng.integers(self.min_digits, self.digits + 1))
        low = 0 if n == 1 else 10 ** (n - 1)
        return int(rng.integers(low, 10**n))

    def format_answer(self, value: int) -> str:
        """The canonical answer text for an integer result."""
        text = str(value)
        return text[::-1] if self.reverse_answer else text

    def example(self, seed: int) -> Example:
        rng = np.random.default_rng(seed)
        op = self.ops[int(rng.integers(len(self.ops)))]
        a, b = self._operand(rng), self._operand(rng)
        if op == "-" and a < b:
            a, b = b, a
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        return Example(prompt=f"{a}{op}{b}=", answer=self.format_answer(result),
                       metadata=self._metadata(seed, result=result))

    def verify(self, example: Example, completion: str) -> float:
        """1.0 iff `completion`, stripped of surrounding whitespace (and un-reversed if the task
        reverses answers), is the canonical decimal of the result (so "0579" and "+579" fail)."""
        if not isinstance(completion, str):
            return 0.0
        text = completion.strip()
        if self.reverse_answer:
            text = text[::-1]
        if not _CANONICAL_INT.fullmatch(text):
            return 0.0
        expected = example.metadata.get("result")
        if expected is None:  # An example rebuilt without metadata: parse its answer text.
            expected = int(example.answer[::-1] if self.reverse_answer else example.answer)
        return float(int(text) == int(expected))
