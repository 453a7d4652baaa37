"""Tests for lrmjax.rewards.unsupervised: TTRL majority vote, self-certainty, entropy."""

import math

import numpy as np
import pytest

from lrmjax.rewards import get
from lrmjax.rewards.unsupervised import self_certainty_per_token


def test_majority_vote_groups_and_equivalence():
    completions = [
        "\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}", "no idea",   # group a: 1/2 wins (2 votes)
        "\\boxed{7}", "\\boxed{8}",                                 # group b: tie, first wins
        "nothing", "still nothing",                                 # group c: no answers
    ]
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    res = get("majority_vote")(["q"] * 8, completions, [{"group_id": g} for g in groups])
    assert res.scores == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert res.components["majority_share"] == [0.5] * 4 + [0.5, 0.5] + [0.0, 0.0]


def test_majority_vote_exact_votes_on_whole_stripped_texts():
    completions = [" 975", "975\n", "0975", "",      # group 0: '975' wins; '' does not vote
                   "12", "21", "21", "12",          # group 1: tie 2-2, first seen wins
                   "", " "]                          # group 2: no votes
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    res = get("majority_vote_exact")(["q"] * 10, completions, [{"group_id": g} for g in groups])
    assert res.scores == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert res.components["majority_share"] == [0.5] * 8 + [0.0, 0.0]
    # '0975' is its own answer here, where math-verify would read 975 as the same number.


def test_majority_vote_needs_group_id():
    with pytest.raises(KeyError, match="row 1 has no metadata\\['group_id'\\]"):
        get("majority_vote")(["q", "q"], ["\\boxed{1}"] * 2, [{"group_id": 0}, {}])


def test_self_certainty_per_token_matches_kl_definition():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 7)) * 3
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    u = np.full(7, 1 / 7)
    kl = np.array([np.sum(u * np.log(u / p_t)) for p_t in p])  # KL(U || p), by definition
    np.testing.assert_allclose(self_certainty_per_token(logits), kl, rtol=1e-10)
    np.testing.assert_allclose(self_certainty_per_token(np.zeros((2, 4))), [0.0, 0.0],
                               atol=1e-12)


def test_token_statistic_rewards():
    meta = [{"self_certainty": [1.0, 2.0, 6.0], "token_entropies": [0.5, 1.5],
             "token_logprobs": [-0.1, -0.3]},
            {"self_certainty": [0.0], "token_entropies": [2.0], "token_logprobs": [-2.0]}]
    assert get("self_certainty")(["q"] * 2, ["a", "b"], meta) == [3.0, 0.0]
    assert get("neg_entropy")(["q"] * 2, ["a", "b"], meta) == [-1.0, -2.0]
    assert get("mean_logprob")(["q"] * 2, ["a", "b"], meta) == pytest.approx([-0.2, -2.0])


def test_token_statistic_bad_input():
    with pytest.raises(ValueError, match="row 0.*non-empty list"):
        get("neg_entropy")(["q"], ["a"], [{"token_entropies": []}])
    with pytest.raises(KeyError, match="row 0 has no metadata\\['self_certainty'\\]"):
        get("self_certainty")(["q"], ["a"], [{"token_logprobs": [0.0]}])
    assert math.isnan(get("mean_logprob")(["q"], ["a"], [{"token_logprobs": [math.nan]}])[0])
