"""Tests for lrmjax.rewards.shaping: DAPO overlong penalty, Kimi length reward, wrapper."""

import numpy as np
import pytest

from lrmjax.rewards import kimi_length_reward, overlong_penalty, shape


def test_overlong_penalty_by_hand():
    # L_max = 100, L_cache = 20: free up to 80, then -1/20 per token, -1 beyond 100.
    got = overlong_penalty([0, 80, 81, 90, 100, 101, 500], max_len=100, cache_len=20)
    np.testing.assert_allclose(got, [0, 0, -0.05, -0.5, -1.0, -1.0, -1.0])
    np.testing.assert_allclose(overlong_penalty([90], 100, 20, factor=0.5), [-0.25])
    # L_max = 20, L_cache = 8: free up to 12, -1 at the budget and beyond.
    np.testing.assert_allclose(overlong_penalty([10, 12, 16, 20, 25], 20, 8, factor=0.5),
                               0.5 * np.array([0, 0, -0.5, -1, -1]))
    with pytest.raises(ValueError, match="cache_len"):
        overlong_penalty([1], max_len=10, cache_len=0)


def test_kimi_length_reward_by_hand():
    lengths = [10, 20, 30, 10, 10, 5]
    correct = [True, False, True, True, False, True]
    groups = ["a", "a", "a", "b", "b", "c"]
    got = kimi_length_reward(lengths, correct, groups)
    # group a: min 10, max 30 -> lambda = 0.5, 0, -0.5; wrong row 1 gets min(0, 0) = 0.
    # group b: all equal -> 0; group c: single -> 0.
    np.testing.assert_allclose(got, [0.5, 0.0, -0.5, 0.0, 0.0, 0.0])
    got = kimi_length_reward([10, 30], [False, False], [0, 0])
    np.testing.assert_allclose(got, [0.0, -0.5])


def test_shaped_reward_components():
    fn = shape("format", length_weight=0.1)
    good = "<think>x</think><answer>y</answer>"
    meta = [{"response_tokens": 10, "group_id": 0}, {"response_tokens": 90, "group_id": 0},
            {"response_tokens": 50, "group_id": 0}]
    res = fn(["q"] * 3, [good, good, "bad"], meta)
    np.testing.assert_allclose(res.components["base"], [1, 1, 0])
    assert "overlong" not in res.components
    # lambda = 0.5, -0.5, 0.5 - 40/80 = 0; row 2 is wrong: min(0, 0) = 0.
    np.testing.assert_allclose(res.components["length"], [0.5, -0.5, 0.0])
    np.testing.assert_allclose(res.scores, [1.05, 1 - 0.05, 0.0])
    assert fn.group_level and not shape("format").group_level
    with pytest.raises(TypeError, match="max_len"):
        shape("format", max_len=100, cache_len=20)  # the overlong penalty is rl.overlong_*


def test_shaped_reward_needs_lengths():
    fn = shape("format", length_weight=0.1)
    with pytest.raises(KeyError, match="row 0 has no metadata\\['response_tokens'\\]"):
        fn(["q"], ["a"], [{"group_id": 0}])
    with pytest.raises(ValueError, match="non-negative int"):
        fn(["q"], ["a"], [{"response_tokens": 3.5, "group_id": 0}])
