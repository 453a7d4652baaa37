"""Reward shaping by response length.

* :func:`overlong_penalty` — DAPO's soft overlong punishment (Yu et al., 2025, "DAPO",
  Eq. 13), in tokens; the trainer adds it to every response's reward when
  ``rl.overlong_buffer_len > 0`` (its one home: `train.rollouts.sample_and_score`)::

      R(L) = 0                              if L <= L_max - L_cache
           = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
           = -1                             if L > L_max

  times ``factor``.
* :func:`kimi_length_reward` — Kimi k1.5's length reward (Kimi Team, 2025, Sec. 2.3.3):
  within a group, ``lambda = 0.5 - (len - min_len) / (max_len - min_len)``; a correct
  response gets ``lambda``, an incorrect one ``min(0, lambda)``; 0 when all lengths are
  equal.
* :class:`ShapedReward` — base reward + weighted Kimi length reward, components ``base``
  and ``length`` (unweighted) so each part shows in metrics.

Metadata: lengths come from ``metadata["response_tokens"]`` (int, response length in
tokens, padding excluded; the sampler knows it); group ids from ``metadata["group_id"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lrmjax.rewards.base import (
    RewardResult,
    as_result,
    check_batch,
    fn_name,
    is_group_level,
    require,
    resolve,
)


def overlong_penalty(lengths: Sequence[int] | np.ndarray, max_len: int, cache_len: int,
                     factor: float = 1.0) -> np.ndarray:
    """DAPO soft overlong penalty.

    Args:
      lengths: [B] response lengths in tokens.
      max_len: L_max, the hard response budget.
      cache_len: L_cache, the width of the linear ramp (0 < L_cache <= L_max).
      factor: multiplies the penalty.
    Returns:
      [B] float64 penalties in [-factor, 0].
    """
    if not 0 < cache_len <= max_len:
        raise ValueError(f"overlong_penalty: need 0 < cache_len <= max_len, got "
                         f"cache_len={cache_len}, max_len={max_len}")
    lengths = np.asarray(lengths, dtype=np.float64)
    start = max_len - cache_len
    ramp = (start - lengths) / cache_len
    penalty = np.where(lengths <= start, 0.0, np.where(lengths <= max_len, ramp, -1.0))
    return factor * penalty


def kimi_length_reward(lengths: Sequence[int] | np.ndarray, correct: Sequence[bool] | np.ndarray,
                       group_ids: Sequence[Any]) -> np.ndarray:
    """Kimi k1.5 length reward, computed within each group.

    Args:
      lengths: [B] response lengths in tokens.
      correct: [B] whether each response is correct.
      group_ids: [B] hashable group ids (responses to the same prompt share one).
    Returns:
      [B] float64 rewards in [-0.5, 0.5].
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if not (len(lengths) == len(correct) == len(group_ids)):
        raise ValueError("kimi_length_reward: lengths, correct and group_ids differ in length")
    out = np.zeros(len(lengths), dtype=np.float64)
    groups: dict[Any, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for rows in groups.values():
        idx = np.asarray(rows)
        lo, hi = lengths[idx].min(), lengths[idx].max()
        if hi == lo:
            continue
        lam = 0.5 - (lengths[idx] - lo) / (hi - lo)
        out[idx] = np.where(correct[idx], lam, np.minimum(0.0, lam))
    return out


def _lengths(metadata: list[dict], key: str, name: str) -> np.ndarray:
    out = []
    for i, meta in enumerate(metadata):
        value = require(meta, key, i, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"reward {name!r}: row {i}: metadata[{key!r}] must be a "
                             f"non-negative int, got {value!r}")
        out.append(int(value))
    return np.asarray(out, dtype=np.float64)


class ShapedReward:
    """``base + length_weight * kimi_length_reward``.

    Args:
      base: reward name or function.
      length_weight: weight of the Kimi length reward (off when 0). A response counts as
        correct when its base score >= correct_threshold.
      length_key: metadata key holding the response length in tokens.
    Group-level when the base is or the length reward is on (it compares within groups).
    DAPO's overlong penalty is not a reward option: it is `rl.overlong_buffer_len`, applied by
    the trainer, which knows the response budget.
    """

    def __init__(self, base: str | Callable[..., Any], *, length_weight: float = 0.0,
                 correct_threshold: float = 1.0, length_key: str = "response_tokens"):
        # Resolved here, in the process that registered the name (see rewards.base).
        self.base, self.length_weight = resolve(base), length_weight
        self.correct_threshold, self.length_key = correct_threshold, length_key
        self.group_level = is_group_level(self.base) or length_weight != 0.0
        self.name = f"shaped({fn_name(base)})"

    def __call__(self, prompts: list[str], completions: list[str], metadata: list[dict]
                 ) -> RewardResult:
        check_batch(prompts, completions, metadata)
        n = len(completions)
        res = as_result(self.base(prompts, completions, metadata), n)
        base = np.asarray(res.scores, dtype=np.float64)
        total = base.copy()
        components = {"base": res.scores}
        components.update({f"base/{k}": v for k, v in res.components.items()})
        if self.length_weight != 0.0:
            lengths = _lengths(metadata, self.length_key, self.name)
            groups = [require(m, "group_id", i, self.name) for i, m in enumerate(metadata)]
            lr = kimi_length_reward(lengths, base >= self.correct_threshold, groups)
            total += self.length_weight * lr
            components["length"] = lr.tolist()
        return RewardResult(scores=total.tolist(), components=components)


def shape(base: str | Callable[..., Any], **kwargs: Any) -> ShapedReward:
    """``shape("math", length_weight=0.1)``: see :class:`ShapedReward`."""
    return ShapedReward(base, **kwargs)
