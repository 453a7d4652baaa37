"""Process rewards: credit for the steps inside a response, not only for its outcome.

A process reward function reads the same batch as an outcome reward and returns, for each
completion, the rewards of its steps as (character end, value) pairs::

    fn(prompts: list[str], completions: list[str], metadata: list[dict])
        -> list[list[tuple[int, float]]]

`(end, value)` credits `value` to the step that ends just before character `end` of the
completion (its text is `completion[start:end]`). The trainer maps each pair to the
response token that produced character `end - 1` (through the tokenizer's `char_ends`) and
adds the values to the per-token rewards [B, R] that the token-level advantage estimators
take (`rl.adv_estimator` in gae, reinforce_pp, reinforce_pp_baseline, rloo), on top of the
outcome reward on the last token. Configure with `reward.process_fns = {name: weight}`.

Functions are registered by name (`register_process`) and run row by row through a
`RewardPool` like the outcome rewards, with the same `reward.num_workers` and
`reward.timeout_s`: a row whose call raises, returns the wrong number of rows or runs past the
timeout (with workers) scores no steps and is counted (`reward/process_errors`,
`reward/process_timeouts`); a pair outside the completion, or with a non-finite value, is
dropped and counted (`reward/process_dropped`). Worker processes import the function, so
with `num_workers > 0` it must live in an importable module.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Steps = list[tuple[int, float]]
ProcessFn = Callable[[list[str], list[str], list[dict]], list[Steps]]

_PROCESS: dict[str, ProcessFn] = {}


def register_process(name: str) -> Callable[[ProcessFn], ProcessFn]:
    """Decorator: registers a process reward function under `name`."""

    def deco(fn: ProcessFn) -> ProcessFn:
        if name in _PROCESS and _PROCESS[name] is not fn:
            raise ValueError(f"process reward {name!r} is already registered")
        fn.process = True  # the reward pool returns its steps (RewardPool.score_steps)
        _PROCESS[name] = fn
        return fn

    return deco


def get_process(name: str) -> ProcessFn:
    if name not in _PROCESS:
        raise ValueError(f"unknown process reward {name!r}; registered: {sorted(_PROCESS)}")
    return _PROCESS[name]


def registered_process() -> list[str]:
    return sorted(_PROCESS)


def token_rewards(steps: Sequence[Any], char_ends: Sequence[Sequence[int]], width: int
                  ) -> tuple[np.ndarray, int]:
    """Maps each row's (end, value) steps onto its response tokens.

    Args:
      steps: per row, a list of (end, value) pairs (anything else drops the row's steps).
      char_ends: per row, the decoded text's length after each response token
        (`tokenizer.char_ends`), at most `width` entries.
      width: R, the response slots.
    Returns:
      ([B, R] float32 rewards, number of dropped pairs). A pair lands on the first token
      whose text reaches character `end - 1`; pairs with end outside 1..len(text), or a
      non-finite value, are dropped.
    """
    out = np.zeros((len(char_ends), width), np.float32)
    dropped = 0
    for row, (pairs, ends) in enumerate(zip(steps, char_ends, strict=True)):
        length = ends[-1] if len(ends) else 0
        try:
            pairs = [(int(e), float(v)) for e, v in pairs]
        except (TypeError, ValueError):
            dropped += 1
            continue
        for end, value in pairs:
            if not 1 <= end <= length or not math.isfinite(value):
                dropped += 1
                continue
            out[row, int(np.searchsorted(ends, end, side="left"))] += value
    return out, dropped


@register_process("arithmetic_digits")
def arithmetic_digits(prompts: list[str], completions: list[str],
                      metadata: list[dict]) -> list[Steps]:
    """Digit-by-digit credit for arithmetic answers (a process reward with an exact verifier,
    like Math-Shepherd's step labels): each answer character written correctly, with every
    character before it correct, earns 1 / len(answer) at that character; the first mistake
    ends the credit. Reads metadata `answer`. With `reverse_answer` the digits come least
    significant first, so each step is one carry-resolved column of the sum."""
    out = []
    for completion, meta in zip(completions, metadata, strict=True):
        answer = str(meta["answer"])
        steps = []
        # zip stops at the shorter: a completion may be shorter or longer than the answer.
        for k, (got, want) in enumerate(zip(completion, answer, strict=False)):
            if got != want:
                break
            steps.append((k + 1, 1.0 / len(answer)))
        out.append(steps)
    return out
