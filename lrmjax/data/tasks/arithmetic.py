"""Multi-digit integer arithmetic, small enough for a CPU-tiny model with a character tokenizer.

Prompts look like `"123+456="` and a correct completion is the result in canonical decimal
(no leading zeros, no '+' sign), optionally written least-significant digit first
(`reverse_answer=True`, "975" for 579). Writing the answer reversed lets a causal model emit
each digit after the carries it depends on, which makes addition learnable by tiny transformers
(Lee et al. 2023, "Teaching Arithmetic to Small Transformers"; Shen et al. 2023).

Difficulty is the maximum number of digits per operand. Subtraction orders its operands so
results are never negative (the answer alphabet stays digits only).

Two verifiers that agree exactly on every completion a `CharTokenizer` can decode:
  * `ArithmeticTask.verify(example, text)` on the host, and
  * `arithmetic_device_reward(...)`, jittable, on token ids (for the end-to-end jitted RL step
    described in DESIGN.md), with `encode_answers` to build its answer arrays on the host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrmjax.data.tasks.base import Example, Task
from lrmjax.tokenizers import CharTokenizer

_OPS = ("+", "-", "*")
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")
# Prompt is 2 * digits + 2 characters; 10 digits keeps it under 24.
MAX_DIGITS = 10

_DEFAULT_TOKENIZER = CharTokenizer()


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


def encode_answers(answers: Sequence[str], tokenizer: CharTokenizer = _DEFAULT_TOKENIZER,
                   length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encodes reference answers for `arithmetic_device_reward` (host side).

    Returns:
      answer_tokens: [B, A] int32, each answer right-padded with `tokenizer.pad_id`; A =
        `length` or the longest answer.
      answer_mask: [B, A] bool, True on the answer's tokens (a prefix of each row).
    """
    ids = [tokenizer.encode(a) for a in answers]
    if any(not seq for seq in ids):
        raise ValueError("encode_answers: an answer is empty")
    longest = max((len(s) for s in ids), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"encode_answers: an answer has {longest} tokens, more than {length}")
    tokens = np.full((len(ids), length), tokenizer.pad_id, dtype=np.int32)
    mask = np.zeros((len(ids), length), dtype=bool)
    for i, seq in enumerate(ids):
        tokens[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return tokens, mask


def _isin(x: jax.Array, ids: Sequence[int]) -> jax.Array:
    out = jnp.zeros(x.shape, bool)
    for i in ids:
        out = out | (x == i)
    return out


def arithmetic_device_reward(
    response_tokens: jax.Array,
    response_mask: jax.Array,
    answer_tokens: jax.Array,
    answer_mask: jax.Array,
    *,
    eos_id: int = CharTokenizer.EOS,
    skip_ids: Sequence[int] = (CharTokenizer.PAD, CharTokenizer.BOS),
    strip_ids: Sequence[int] = (_DEFAULT_TOKENIZER.token_id(" "),
                                _DEFAULT_TOKENIZER.token_id("\n")),
) -> jax.Array:
    """Exact-match reward on token ids, jittable; mirrors `ArithmeticTask.verify` on decoded text.

    The response is read the way `CharTokenizer.decode` reads it: positions where
    `response_mask` is True, up to the first `eos_id`, dropping `skip_ids` (pad/bos, which
    decode to nothing); then leading/trailing `strip_ids` (whitespace) are removed. The reward is
    1.0 iff what remains equals the answer's tokens exactly. Because answers are canonical,
    exact token equality is the same test as the host verifier's canonical-integer check.

    Args:
      response_tokens: [B, R] int32 sampled response ids.
      response_mask: [B, R] bool/int, True on generated positions.
      answer_tokens: [B, A] int32 reference answers (from `encode_answers`).
      answer_mask: [B, A] bool/int, True on answer tokens (a prefix of each row).
      eos_id, skip_ids, strip_ids: static token ids (defaults: the default CharTokenizer).

    Returns:
      [B] float32 rewards in {0, 1}.
    """

    def one(resp, rmask, ans, amask):
        r = resp.shape[0]
        rmask = rmask.astype(bool)
        amask = amask.astype(bool)
        before_eos = jnp.cumsum((resp == eos_id) & rmask) == 0
        keep = rmask & before_eos & ~_isin(resp, skip_ids)
        # Compact the kept tokens to the front (a scatter; dropped ones go out of bounds).
        dest = jnp.where(keep, jnp.cumsum(keep) - 1, r)
        compact = jnp.full((r,), -1, resp.dtype).at[dest].set(resp, mode="drop")
        idx = jnp.arange(r)
        content = (idx < keep.sum()) & ~_isin(compact, strip_ids)
        start = jnp.argmax(content)
        stop = r - jnp.argmax(content[::-1])
        length = jnp.where(content.any(), stop - start, 0)
        window = compact[jnp.clip(start + jnp.arange(ans.shape[0]), 0, r - 1)]
        same = jnp.all((window == ans) | ~amask)
        return ((length == amask.sum()) & same).astype(jnp.float32)

    return jax.vmap(one)(jnp.asarray(response_tokens), jnp.asarray(response_mask),
                         jnp.asarray(answer_tokens), jnp.asarray(answer_mask))
