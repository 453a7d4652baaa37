"""Format rewards for R1-style ``<think>...</think><answer>...</answer>`` completions.

DeepSeek-R1 (Guo et al., 2025, Sec. 2.2.2) trains with accuracy + format rewards; the
format reward checks that reasoning sits in ``<think>`` and the result in ``<answer>``.

* ``format`` (strict): the whole completion, up to surrounding whitespace, is exactly
  ``<think>X</think>`` + optional whitespace + ``<answer>Y</answer>``, with each tag
  appearing exactly once (so nested or repeated blocks fail).
* ``format_lenient``: both blocks are present, the think block closes before the answer
  block opens; anything else around them is allowed.

Metadata: none read.
"""

from __future__ import annotations

import re

from lrmjax.rewards.base import check_batch, register

_STRICT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_LENIENT = re.compile(r"<think>.*?</think>.*?<answer>.*?</answer>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def is_strict_format(text: str) -> bool:
    """True iff `text` is exactly one think block then one answer block."""
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return _STRICT.fullmatch(text) is not None


def is_lenient_format(text: str) -> bool:
    """True iff a think block and, after it, an answer block both appear."""
    return _LENIENT.search(text) is not None


@register("format")
def format_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                  ) -> list[float]:
    """1.0 iff the completion has the strict R1 shape, else 0.0."""
    check_batch(prompts, completions, metadata)
    return [float(is_strict_format(c)) for c in completions]


@register("format_lenient")
def format_lenient_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                          ) -> list[float]:
    """1.0 iff the completion has both blocks in order (lenient R1 shape), else 0.0."""
    check_batch(prompts, completions, metadata)
    return [float(is_lenient_format(c)) for c in completions]
