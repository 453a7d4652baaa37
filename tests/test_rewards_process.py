"""Process (step-level) rewards: the character -> token mapping, the digit reward, and the
trainer path into the token-level advantages."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from train_helpers import read_metrics, small_config

from lrmjax import config as config_lib
from lrmjax.rewards import RewardPool, process
from lrmjax.train import rl


@process.register_process("test_first_char")
def first_char(prompts, completions, metadata):
    """1.0 on the first character of every completion (dropped for an empty one)."""
    return [[(1, 1.0)] for _ in completions]


@process.register_process("test_raises")
def raises(prompts, completions, metadata):
    raise RuntimeError("a broken process reward")


@process.register_process("test_hangs_on_x")
def hangs_on_x(prompts, completions, metadata):
    """A step on the first character; hangs on the completion "x"; one row too many on "y"."""
    if "x" in completions:
        time.sleep(3600)
    extra = [[]] if "y" in completions else []
    return [[(1, 1.0)] if c else [] for c in completions] + extra


def test_process_pool_kills_hangs_and_counts_failures():
    fn = process.get_process("test_hangs_on_x")
    completions = ["a", "x", "", "y", "b"]
    with RewardPool(fn, num_workers=2, timeout_s=1.0) as pool:
        steps, counts = pool.score_steps(["p"] * 5, completions, [{}] * 5)
        with pytest.raises(TypeError, match="use score_steps"):
            pool.score(["p"], ["a"], [{}])
    # Rows are scored one by one: the hang and the malformed answer lose only their own row.
    assert steps == [[(1, 1.0)], [], [], [], [(1, 1.0)]]
    assert counts == {"errors": 1.0, "timeouts": 1.0}
    with RewardPool("task", num_workers=0) as pool, pytest.raises(TypeError, match="process"):
        pool.score_steps(["p"], ["a"], [{}])


def test_token_rewards_by_hand():
    # Row 0: tokens end at characters 1, 2, 2 (a token that adds nothing), 3.
    # Row 1: not a list of pairs: its steps are dropped.
    steps = [[(2, 0.5), (3, 1.0), (0, 9.0), (4, 1.0), (1, math.nan), (1, 0.25)], "oops"]
    out, dropped = process.token_rewards(steps, [[1, 2, 2, 3], [1, 2]], width=5)
    np.testing.assert_array_equal(out, [[0.25, 0.5, 0.0, 1.0, 0.0], [0, 0, 0, 0, 0]])
    assert dropped == 3 + 1  # end 0, end 4 > 3 characters, the NaN; the malformed row


@pytest.mark.parametrize("completion, want", [
    ("579", [(1, 1 / 3), (2, 1 / 3), (3, 1 / 3)]),
    ("57x9", [(1, 1 / 3), (2, 1 / 3)]),      # credit ends at the first mistake
    ("479", []),
    ("", []),
    ("5791", [(1, 1 / 3), (2, 1 / 3), (3, 1 / 3)]),  # extra text earns no step
])
def test_arithmetic_digits_by_hand(completion, want):
    (got,) = process.get_process("arithmetic_digits")(["p"], [completion], [{"answer": "579"}])
    assert [end for end, _ in got] == [end for end, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want])


def test_unknown_process_reward_and_outcome_estimators_are_config_errors():
    c = config_lib.base_config("grpo")
    c.reward.process_fns = {"arithmetic_digits": 1.0}
    with pytest.raises(ValueError, match="needs a token-level 'rl.adv_estimator'"):
        config_lib.validate(c)
    c = config_lib.base_config("reinforce_pp")
    c.reward.process_fns = {"no_such_reward": 1.0}
    with pytest.raises(ValueError, match=r"'reward.process_fns.no_such_reward': unknown"):
        config_lib.validate(c)


def _run(tmp_path, name, fns):
    cfg = small_config("reinforce_pp", steps=2)
    cfg.reward.process_fns = fns
    rl.train(cfg, str(tmp_path / name))
    return read_metrics(str(tmp_path / name))


def test_process_rewards_reach_the_update(tmp_path):
    rows = _run(tmp_path, "first", {"test_first_char": 1.0})
    zero = _run(tmp_path, "zero", {"test_first_char": 0.0})
    n = 4 * 4  # batch_prompts x n
    for r in rows:
        # Every non-empty completion earns 1.0; an empty one's step is dropped.
        assert r["reward/process_mean"] * n + r["reward/process_dropped"] == pytest.approx(n)
        assert r["reward/process_errors"] == 0
    assert rows[0]["reward/process_mean"] > 0
    # Same seed, same samples at step 1: only the token rewards differ. With weight 0 every
    # advantage is 0 and so is the gradient; with the process reward it is not. (The loss
    # itself is no witness: whitened advantages at ratio 1 average to 0 either way.)
    assert rows[0]["reward/mean"] == zero[0]["reward/mean"]
    assert zero[0]["actor/grad_norm"] == 0.0
    assert rows[0]["actor/grad_norm"] > 0.1


def test_a_failing_process_reward_is_counted_not_fatal(tmp_path):
    rows = _run(tmp_path, "raises", {"test_raises": 1.0, "test_first_char": 1.0})
    assert [r["reward/process_errors"] for r in rows] == [16.0, 16.0]
    assert all(r["reward/process_mean"] > 0 for r in rows)  # the other one still counts
