"""Products a small model cannot compute in its head, but can with a calculator.

"347*58=" or "347*58*21=": the answer is the exact product. With the `tools` environment
and a calculator limited to one operation per call (`max_operations=1`), a two-factor
problem needs one call and a three-factor problem two, the second using the first's result:

    347*58*21=<calculator>347*58</calculator>=20126
    <calculator>20126*21</calculator>=422646
    422646

The demonstration (`metadata['demonstration_turns']`) is that episode as (text, is_model)
segments, so a warm start trains on the model's parts only, never on the calculator's
results; they are written as the `tools` environment's compact format writes them, with the
same `result_width` (config validation checks the two agree). The verifier reads the final
turn's last line.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example, Task, last_line


class ToolArithmeticTask(Task):
    """Products of 2 or 3 factors (difficulty = the most factors).

    Args:
      digits: factors have 2..`digits` digits.
      max_factors: 2 or 3; with 3, `three_factor_share` of the problems have three factors.
      three_factor_share: the share of three-factor problems when `max_factors` is 3 (a
        warm start's demonstrations can weight the two-call episodes: `sft.task_kwargs`).
      long_factor_share: the share of factors with the most digits (`digits`), the others
        spread evenly over 2..digits-1; None (the default) spreads all factors evenly over
        2..digits. A warm start's demonstrations can weight the long copies with it.
      result_width: the demonstrations' calculator results left-aligned in a field of this
        many characters, as the `tools` environment writes them with its `result_width`
        (`envs.tool_calls.compact_result`); 0 (the default) writes them as they are.
    """

    name = "tool_arithmetic"

    def __init__(self, digits: int = 3, max_factors: int = 3, three_factor_share: float = 0.5,
                 long_factor_share: float | None = None, result_width: int = 0):
        if not 2 <= digits <= 6 or max_factors not in (2, 3):
            raise ValueError(f"ToolArithmeticTask: need 2 <= digits <= 6 and max_factors in "
                             f"(2, 3), got {digits}, {max_factors}")
        if isinstance(three_factor_share, bool) or not 0.0 <= three_factor_share <= 1.0:
            raise ValueError(f"ToolArithmeticTask: three_factor_share must be in [0, 1], got "
                             f"{three_factor_share!r}")
        if max_factors == 2 and three_factor_share != 0.5:
            raise ValueError("ToolArithmeticTask: three_factor_share applies only with "
                             "max_factors=3")
        if long_factor_share is not None and (
                isinstance(long_factor_share, bool) or not 0.0 <= long_factor_share <= 1.0):
            raise ValueError(f"ToolArithmeticTask: long_factor_share must be None or in [0, 1], "
                             f"got {long_factor_share!r}")
        if digits == 2 and long_factor_share not in (None, 1.0):
            raise ValueError("ToolArithmeticTask: with digits=2 every factor has 2 digits; "
                             f"long_factor_share={long_factor_share!r} cannot apply")
        if isinstance(result_width, bool) or not isinstance(result_width, int) or (
                result_width < 0):
            raise ValueError(f"ToolArithmeticTask: result_width must be an int >= 0, got "
                             f"{result_width!r}")
        self.digits, self.max_factors = int(digits), int(max_factors)
        self.result_width = result_width
        self.three_factor_share = float(three_factor_share)
        self.long_factor_share = (None if long_factor_share is None
                                  else float(long_factor_share))

    @property
    def config(self) -> dict[str, Any]:
        out = {"digits": self.digits, "max_factors": self.max_factors}
        if self.three_factor_share != 0.5:
            out["three_factor_share"] = self.three_factor_share
        if self.long_factor_share is not None:
            out["long_factor_share"] = self.long_factor_share
        if self.result_width:
            out["result_width"] = self.result_width
        return out

    @property
    def difficulty(self) -> int:
        return self.max_factors

    def with_difficulty(self, difficulty: int) -> ToolArithmeticTask:
        return ToolArithmeticTask(self.digits, difficulty,
                                  self.three_factor_share if difficulty == 3 else 0.5,
                                  self.long_factor_share, self.result_width)

    def max_answer_chars(self) -> int:
        return self.max_factors * self.digits

    def example(self, seed: int) -> Example:
        rng = np.random.default_rng(seed)
        # One draw decides (none with max_factors=2): at the default share the examples of
        # every seed are those of the task before the share was a setting.
        k = 2 if self.max_factors == 2 or rng.random() < 1.0 - self.three_factor_share else 3
        factors = []
        for _ in range(k):
            d = self._factor_digits(rng)
            factors.append(int(rng.integers(10 ** (d - 1), 10 ** d)))
        turns, value = [], factors[0]
        for f in factors[1:]:
            turns.append([f"<calculator>{value}*{f}</calculator>", True])
            value *= f
            turns.append([f"={str(value).ljust(self.result_width)}\n", False])
        turns.append([str(value), True])
        prompt = "*".join(map(str, factors)) + "="
        return Example(prompt=prompt, answer=str(value),
                       metadata=self._metadata(seed, factors=factors,
                                               demonstration_turns=turns))

    def _factor_digits(self, rng: np.random.Generator) -> int:
        if self.long_factor_share is None:  # the draws of the task before the share existed
            return int(rng.integers(2, self.digits + 1))
        if self.digits == 2 or rng.random() < self.long_factor_share:
            return self.digits
        return int(rng.integers(2, self.digits))

    def verify(self, example: Example, completion: str) -> float:
        """1.0 iff the completion's last line is exactly the product."""
        if not isinstance(completion, str):
            return 0.0
        return float(last_line(completion) == example.answer)
