"""Countdown: reach a target number from given numbers with + - * / (as in TinyZero).

Each example gives `num_numbers` integers and a target; a correct completion is an arithmetic
expression that uses every given number exactly once (and no other number) and evaluates to
the target. The generator builds the target from a random expression over the numbers, so
every example is solvable; that expression is the reference `answer`.

The verifier never calls `eval`: it parses with `ast` and accepts only integer literals, the
four binary operators and parentheses, evaluating with exact `Fraction` arithmetic.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example, Task, extract_answer_tag, last_line

TINYZERO_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work "
    "in <think> </think> tags. And return the final answer in <answer> </answer> tags, for "
    "example <answer> (1 + 2) / 3 </answer>."
)
SHORT_TEMPLATE = "{numbers} -> {target}\n"

_TEMPLATES = {"tinyzero": TINYZERO_TEMPLATE, "short": SHORT_TEMPLATE}
# Longer completions cannot be a valid answer for <= 8 two-digit numbers; bounding the parse
# input keeps a hostile completion from costing the reward worker time or memory.
_MAX_EXPR_CHARS = 200
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
# Bounds the generator's rejection sampling; typical settings succeed in a few draws.
_MAX_NUMBER_DRAWS = 1000
_SAFE_CHARS = re.compile(r"[0-9+\-*/()\s]*")
_TRAILING_EQUALS = re.compile(r"^(.*?)=\s*(-?\d+)\s*$", re.DOTALL)


class UnsafeExpression(ValueError):
    """The expression contains something other than integers, + - * / and parentheses."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Evaluates a whitelisted AST exactly, appending every literal to `used`."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _evaluate(node.left, used)
        right = _evaluate(node.right, used)
        return _BINOPS[type(node.op)](left, right)
    raise UnsafeExpression(f"disallowed syntax: {type(node).__name__}")


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]]:
    """Safely evaluates `expr` and returns (value, integer literals in order).

    Raises:
      UnsafeExpression: anything but integer literals, binary + - * / and parentheses
        (names, calls, attributes, unary minus, powers, floats, ...), or an over-long input.
      SyntaxError: unparsable text.
      ZeroDivisionError: division by zero.
    """
    if len(expr) > _MAX_EXPR_CHARS:
        raise UnsafeExpression(f"expression longer than {_MAX_EXPR_CHARS} characters")
    # Plain decimal digits only: rules out 0x10, 1_0, 1e3 and 1.5 before the AST sees them.
    if not _SAFE_CHARS.fullmatch(expr):
        raise UnsafeExpression(f"disallowed characters in {expr!r}")
    tree = ast.parse(expr.strip(), mode="eval")
    used: list[int] = []
    return _evaluate(tree, used), used


class CountdownTask(Task):
    """Countdown with `num_numbers` numbers in [1, max_number] (difficulty = `num_numbers`).

    Args:
      num_numbers: difficulty knob, how many numbers must be combined (2..8).
      max_number: the largest given number.
      max_target: targets lie in [1, max_target]; the generator redraws operators until the
        random expression's value does (and every intermediate value is a positive integer, so
        the reference solution never needs fractions or negatives).
      template: 'tinyzero' (asks for <answer> tags) or 'short' ("3 5 7 -> 22").
    """

    name = "countdown"

    def __init__(self, num_numbers: int = 4, max_number: int = 99, max_target: int = 999,
                 template: str = "tinyzero"):
        if not 2 <= num_numbers <= 8:
            raise ValueError(f"CountdownTask: num_numbers must be in [2, 8], got {num_numbers}")
        if max_number < 2 or max_target < 1:
            raise ValueError("CountdownTask: need max_number >= 2 and max_target >= 1")
        if template not in _TEMPLATES:
            raise ValueError(f"CountdownTask: unknown template {template!r}; "
                             f"valid: {sorted(_TEMPLATES)}")
        self.num_numbers = int(num_numbers)
        self.max_number = int(max_number)
        self.max_target = int(max_target)
        self.template = template

    @property
    def config(self) -> dict[str, Any]:
        return {"num_numbers": self.num_numbers, "max_number": self.max_number,
                "max_target": self.max_target, "template": self.template}

    @property
    def difficulty(self) -> int:
        return self.num_numbers

    def with_difficulty(self, difficulty: int) -> CountdownTask:
        return CountdownTask(difficulty, self.max_number, self.max_target, self.template)

    def max_answer_chars(self) -> int:
        """The most characters a reference expression has: `num_numbers` numbers of at most
        len(str(max_number)) digits, joined by " op " (3 characters each), every pair in
        parentheses but the outermost (2 characters each). A correct completion may differ (any
        expression that reaches the target is right); this is the generator's longest."""
        k = self.num_numbers
        return k * len(str(self.max_number)) + 3 * (k - 1) + 2 * (k - 2)

    def _try_build(self, rng: np.random.Generator, numbers: list[int]) -> tuple[int, str] | None:
        """Combines the numbers pairwise in random order with random operators; None if an
        intermediate value is not a positive integer or the target is out of range."""
        items = [(n, str(n)) for n in numbers]
        while len(items) > 1:
            i, j = rng.choice(len(items), size=2, replace=False)
            (a, ea), (b, eb) = items[i], items[j]
            op = "+-*/"[int(rng.integers(4))]
            if op == "-" and a <= b or op == "/" and (b == 1 or a % b):
                return None
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else 0}[op]
            items = [it for k, it in enumerate(items) if k not in (i, j)]
            items.append((value, f"({ea} {op} {eb})"))
        value, expr = items[0]
        if not 1 <= value <= self.max_target:
            return None
        return value, expr[1:-1] if expr.startswith("(") else expr

    def example(self, seed: int) -> Example:
        rng = np.random.default_rng(seed)
        for _ in range(_MAX_NUMBER_DRAWS):  # Fresh numbers after 50 failed operator draws.
            numbers = [int(x) for x in rng.integers(1, self.max_number + 1, self.num_numbers)]
            for _ in range(50):
                built = self._try_build(rng, numbers)
                if built is not None:
                    target, expr = built
                    shown = " ".join(map(str, numbers)) if self.template == "short" else numbers
                    prompt = _TEMPLATES[self.template].format(numbers=shown, target=target)
                    return Example(prompt=prompt, answer=expr,
                                   metadata=self._metadata(seed, numbers=numbers, target=target))
        raise RuntimeError(f"CountdownTask{self.config}: no solvable instance for seed {seed} "
                           f"in {_MAX_NUMBER_DRAWS} draws; raise max_target or max_number")

    def verify(self, example: Example, completion: str) -> float:
        """1.0 iff the extracted expression uses each given number exactly once, no other
        number, only + - * / and parentheses, and equals the target exactly.

        The expression is the last `<answer>...</answer>` block if any, else the last non-empty
        line. A trailing "= <target>" is allowed (and not counted as a used number). Division
        by zero, unsafe or unparsable expressions score 0.
        """
        try:
            numbers = example.metadata["numbers"]
            target = Fraction(example.metadata["target"])
        except (KeyError, TypeError, ValueError):
            return 0.0
        if not isinstance(completion, str):
            return 0.0
        tagged = extract_answer_tag(completion)
        expr = (tagged if tagged is not None else last_line(completion)).strip()
        stated = _TRAILING_EQUALS.match(expr)
        if stated:
            if Fraction(int(stated.group(2))) != target:
                return 0.0
            expr = stated.group(1)
        try:
            value, used = evaluate_expression(expr)
        except (UnsafeExpression, SyntaxError, ZeroDivisionError, ValueError, RecursionError,
                MemoryError):
            return 0.0
        if Counter(used) != Counter(numbers):
            return 0.0
        return float(value == target)
