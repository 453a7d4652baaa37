"""Rewards without ground truth: group majority vote and the model's own confidence.

* ``majority_vote`` — TTRL (Zuo et al., 2025, "TTRL: Test-Time Reinforcement Learning"):
  within a group of responses to one prompt (``metadata["group_id"]``), the majority answer
  is the pseudo-label; a response scores 1.0 iff its extracted answer is equivalent to it.
  Answers are extracted as in :mod:`lrmjax.rewards.math_answer` and clustered with
  math-verify equivalence (greedy: each answer joins the first cluster whose representative
  it equals), so "1/2" and "0.5" vote together. Ties go to the cluster seen first; a group
  with no extractable answer scores 0. Group-level: it must see the whole group at once.
* ``majority_vote_exact`` — the same vote where a response's answer is its whole text, stripped
  (procedural tasks whose responses are bare canonical answers, e.g. arithmetic's digits, which
  carry no \\boxed{} or answer tag to extract), clustered by exact string equality.
* ``self_certainty`` — INTUITOR (Zhao et al., 2025, "Learning to Reason without External
  Rewards", Eq. 3): mean over response tokens of KL(U || p_i), where U is uniform over the
  vocabulary of size V and p_i the policy's next-token distribution:
  ``KL(U || p_i) = -log V - (1/V) sum_j log p_ij``. This needs full-vocabulary logits, which
  only the device has: the trainer must supply the per-token values as
  ``metadata["self_certainty"]`` (list[float], one per response token, padding excluded);
  :func:`self_certainty_per_token` is the numpy reference for that computation.
* ``neg_entropy`` — minus the mean per-token entropy, ``metadata["token_entropies"]``
  (list[float], nats, one per response token; cf. RENT, Prabhudesai et al., 2025).
* ``mean_logprob`` — mean per-token log-probability of the sampled tokens,
  ``metadata["token_logprobs"]`` (list[float]).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from lrmjax.rewards.base import RewardResult, check_batch, register, require
from lrmjax.rewards.math_answer import extract_answer, is_equivalent


def self_certainty_per_token(logits: np.ndarray) -> np.ndarray:
    """KL(U || softmax(logits)) per position.

    Args:
      logits: [T, V] next-token logits of the response positions.
    Returns:
      [T] values ``-log V - mean_j log_softmax(logits)_j`` (>= 0; 0 iff p is uniform).
    """
    logits = np.asarray(logits, dtype=np.float64)
    m = logits.max(axis=-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    return -math.log(logits.shape[-1]) - logp.mean(axis=-1)


def _group_rows(metadata: list[dict]) -> dict[object, list[int]]:
    groups: dict[object, list[int]] = {}
    for i, meta in enumerate(metadata):
        groups.setdefault(require(meta, "group_id", i, "majority_vote"), []).append(i)
    return groups


@register("majority_vote")
def majority_vote_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                         ) -> RewardResult:
    """1.0 iff a response's answer matches its group's majority answer (TTRL).

    Components: ``majority_share`` (fraction of the group in the majority cluster, the
    same value for every row of a group; 0 if the group has no answers).
    """
    check_batch(prompts, completions, metadata)
    return _majority(metadata, [extract_answer(c) for c in completions], is_equivalent)


@register("majority_vote_exact")
def majority_vote_exact_reward(prompts: list[str], completions: list[str],
                               metadata: list[dict]) -> RewardResult:
    """``majority_vote`` with each response's stripped text as its answer (an empty response
    does not vote) and exact equality as the clustering rule."""
    check_batch(prompts, completions, metadata)
    return _majority(metadata, [c.strip() or None for c in completions], str.__eq__)


def _majority(metadata: list[dict], answers: list[str | None],
              same: Callable[[str, str], bool]) -> RewardResult:
    """The vote of both majority rewards over `answers` [N] (None: no vote), clustered
    greedily with `same`."""
    n = len(answers)
    scores, share = [0.0] * n, [0.0] * n
    for rows in _group_rows(metadata).values():
        reps: list[str] = []  # one representative answer per cluster
        members: list[list[int]] = []
        for i in rows:
            if answers[i] is None:
                continue
            for k, rep in enumerate(reps):
                if same(rep, answers[i]):
                    members[k].append(i)
                    break
            else:
                reps.append(answers[i])
                members.append([i])
        if not members:
            continue
        best = max(range(len(members)), key=lambda k: (len(members[k]), -k))
        for i in members[best]:
            scores[i] = 1.0
        for i in rows:
            share[i] = len(members[best]) / len(rows)
    return RewardResult(scores=scores, components={"majority_share": share})


majority_vote_reward.group_level = True  # type: ignore[attr-defined]
majority_vote_exact_reward.group_level = True  # type: ignore[attr-defined]


def _token_values(meta: dict, key: str, row: int, reward: str) -> np.ndarray:
    values = np.asarray(require(meta, key, row, reward), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"reward {reward!r}: row {row}: metadata[{key!r}] must be a non-empty "
                         f"list of floats, got shape {values.shape}")
    return values


@register("self_certainty")
def self_certainty_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                          ) -> list[float]:
    """Mean of metadata["self_certainty"] (per-token KL(U || p), INTUITOR)."""
    check_batch(prompts, completions, metadata)
    return [float(_token_values(m, "self_certainty", i, "self_certainty").mean())
            for i, m in enumerate(metadata)]


@register("neg_entropy")
def neg_entropy_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                       ) -> list[float]:
    """Minus the mean of metadata["token_entropies"]."""
    check_batch(prompts, completions, metadata)
    return [-float(_token_values(m, "token_entropies", i, "neg_entropy").mean())
            for i, m in enumerate(metadata)]


@register("mean_logprob")
def mean_logprob_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                        ) -> list[float]:
    """Mean of metadata["token_logprobs"] (sampled-token log-probabilities)."""
    check_batch(prompts, completions, metadata)
    return [float(_token_values(m, "token_logprobs", i, "mean_logprob").mean())
            for i, m in enumerate(metadata)]
