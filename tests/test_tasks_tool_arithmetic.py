"""Tests for lrmjax.data.tasks.tool_arithmetic: the demonstration is a correct calculator
episode (checked with python ints), the `tools` environment answers its model segments with
exactly its observation segments, and the verifier is exact."""

import re

import pytest

from lrmjax.data.tasks import get_task
from lrmjax.data.tasks.tool_arithmetic import ToolArithmeticTask
from lrmjax.envs import make_env

ENV_KWARGS = {"tools": ("calculator",), "fmt": "compact", "max_turns": 3, "max_calls": 1,
              "tool_options": {"calculator": {"max_operations": 1}}}
CALL = re.compile(r"<calculator>(\d+)\*(\d+)</calculator>=(\d+)\n")


@pytest.mark.parametrize("digits, max_factors", [(3, 3), (2, 2), (4, 3)])
def test_demonstration_is_a_correct_episode(digits, max_factors):
    task = get_task("tool_arithmetic", digits=digits, max_factors=max_factors)
    assert isinstance(task, ToolArithmeticTask)
    counts = set()
    for seed in range(40):
        ex = task.example(seed)
        factors = ex.metadata["factors"]
        counts.add(len(factors))
        for f in factors:
            assert 10 <= f < 10 ** digits
        product = 1
        for f in factors:
            product *= f
        assert ex.prompt == "*".join(str(f) for f in factors) + "="
        assert ex.answer == str(product)
        turns = ex.metadata["demonstration_turns"]
        # model, observation, model, ..., model (the answer).
        assert [m for _, m in turns] == [True, False] * (len(factors) - 1) + [True]
        episode = "".join(text for text, _ in turns)
        calls = CALL.findall(episode)
        assert len(calls) == len(factors) - 1
        value = factors[0]
        for (a, b, result), f in zip(calls, factors[1:], strict=True):
            assert (int(a), int(b)) == (value, f) and int(result) == int(a) * int(b)
            value = int(result)
        assert CALL.sub("", episode) == turns[-1][0] == str(product)
        assert task.verify(ex, turns[-1][0]) == 1.0
        assert len(ex.answer) <= task.max_answer_chars()
    assert counts == ({2, 3} if max_factors == 3 else {2})


@pytest.mark.parametrize("width", [0, 9])
def test_env_reproduces_the_demonstration_observations(width):
    task = ToolArithmeticTask(digits=3, max_factors=3, result_width=width)
    for seed in range(20):
        ex = task.example(seed)
        env = make_env("tools", **ENV_KWARGS, result_width=width)
        assert env.reset(ex) == ex.prompt
        turns = ex.metadata["demonstration_turns"]
        for i in range(0, len(turns), 2):
            res = env.step(turns[i][0])
            if i + 1 < len(turns):
                assert not res.done and res.observation == turns[i + 1][0]
                assert res.info["tool_errors"] == 0
            else:
                assert res.done and res.observation == ""
        assert len(turns) // 2 + 1 <= env.max_turns


def test_verify_is_exact():
    task = ToolArithmeticTask(digits=3, max_factors=2)
    ex = task.example(7)
    a, b = ex.metadata["factors"]
    right = str(a * b)
    assert task.verify(ex, right) == 1.0
    assert task.verify(ex, f"<calculator>{a}*{b}</calculator>\n{right}\n") == 1.0
    for wrong in [str(a * b + 1), right + "0", f"{right} ", "", f"{right}\nmore", None]:
        assert task.verify(ex, wrong) == (1.0 if wrong == f"{right} " else 0.0)


def test_result_width_pads_only_the_results():
    plain = ToolArithmeticTask(digits=3, max_factors=3)
    wide = ToolArithmeticTask(digits=3, max_factors=3, result_width=9)
    for seed in range(40):
        a, b = plain.example(seed), wide.example(seed)
        assert (a.prompt, a.answer, a.metadata["factors"]) == (
            b.prompt, b.answer, b.metadata["factors"])  # the same draws
        value = b.metadata["factors"][0]
        observations = [t for t, is_model in b.metadata["demonstration_turns"] if not is_model]
        for f, obs in zip(b.metadata["factors"][1:], observations, strict=True):
            value *= f
            assert obs == "=" + str(value) + " " * (9 - len(str(value))) + "\n"
        model = [t for t, is_model in b.metadata["demonstration_turns"] if is_model]
        assert model == [t for t, is_model in a.metadata["demonstration_turns"] if is_model]
    assert wide.config == {"digits": 3, "max_factors": 3, "result_width": 9}
    assert wide.with_difficulty(2).result_width == 9
    for bad in (-1, True, 9.0):
        with pytest.raises(ValueError, match="result_width must be an int >= 0"):
            ToolArithmeticTask(digits=3, max_factors=3, result_width=bad)


def test_difficulty_and_arguments():
    task = ToolArithmeticTask(digits=3, max_factors=3)
    assert task.difficulty == 3 and task.with_difficulty(2).max_factors == 2
    assert task.max_answer_chars() == 9 and task.config == {"digits": 3, "max_factors": 3}
    assert task.example(3) == task.example(3)
    for bad in [dict(digits=1), dict(digits=7), dict(max_factors=4)]:
        with pytest.raises(ValueError, match="ToolArithmeticTask"):
            ToolArithmeticTask(**bad)


def test_three_factor_share():
    import numpy as np

    def share(task, n=4000):
        return np.mean([len(task.example(seed).metadata["factors"]) == 3 for seed in range(n)])

    # The default draws what the task drew before the share was a setting: a problem has
    # three factors iff its seed's first uniform is >= 0.5 (recomputed here with numpy).
    half = ToolArithmeticTask(digits=3, max_factors=3)
    for seed in range(200):
        three = np.random.default_rng(seed).random() >= 0.5
        assert (len(half.example(seed).metadata["factors"]) == 3) == three
    assert ToolArithmeticTask(3, 3, three_factor_share=0.5).example(11) == half.example(11)
    # Binomial(4000, p): 5 standard deviations are under 0.04.
    assert abs(share(ToolArithmeticTask(3, 3, three_factor_share=0.75)) - 0.75) < 0.04
    assert share(ToolArithmeticTask(3, 3, three_factor_share=1.0), 300) == 1.0
    assert share(ToolArithmeticTask(3, 3, three_factor_share=0.0), 300) == 0.0
    weighted = ToolArithmeticTask(3, 3, three_factor_share=0.75)
    assert weighted.config == {"digits": 3, "max_factors": 3, "three_factor_share": 0.75}
    assert weighted.with_difficulty(2).config == {"digits": 3, "max_factors": 2}
    assert weighted.with_difficulty(3).three_factor_share == 0.75
    for bad in [dict(three_factor_share=1.5), dict(three_factor_share=-0.1),
                dict(three_factor_share=True), dict(max_factors=2, three_factor_share=0.75)]:
        with pytest.raises(ValueError, match="three_factor_share"):
            ToolArithmeticTask(**{"digits": 3, "max_factors": 3, **bad})


def test_long_factor_share():
    import numpy as np

    def lengths(task, n=2000):
        return np.array([len(str(f)) for seed in range(n)
                         for f in task.example(seed).metadata["factors"]])

    # The default (None) keeps the task's draws: every factor's length uniform over 2..digits,
    # the first factor's from the seed's second draw (recomputed with numpy).
    plain = ToolArithmeticTask(digits=3, max_factors=3)
    assert ToolArithmeticTask(3, 3, long_factor_share=None).example(5) == plain.example(5)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        rng.random()
        assert len(str(plain.example(seed).metadata["factors"][0])) == int(rng.integers(2, 4))
    # Binomial over ~5000 factors: 5 standard deviations are under 0.035.
    assert abs((lengths(ToolArithmeticTask(3, 3, long_factor_share=0.75)) == 3).mean()
               - 0.75) < 0.035
    four = lengths(ToolArithmeticTask(4, 3, long_factor_share=0.5))
    assert abs((four == 4).mean() - 0.5) < 0.035
    assert abs((four == 2).mean() - 0.25) < 0.035 and set(four) == {2, 3, 4}
    assert set(lengths(ToolArithmeticTask(3, 3, long_factor_share=1.0), 200)) == {3}
    assert set(lengths(ToolArithmeticTask(3, 3, long_factor_share=0.0), 200)) == {2}
    assert set(lengths(ToolArithmeticTask(2, 3, long_factor_share=1.0), 50)) == {2}
    weighted = ToolArithmeticTask(3, 3, long_factor_share=0.75)
    assert weighted.config == {"digits": 3, "max_factors": 3, "long_factor_share": 0.75}
    assert weighted.with_difficulty(2).long_factor_share == 0.75
    for bad in [dict(long_factor_share=1.5), dict(long_factor_share=-0.1),
                dict(long_factor_share=False), dict(digits=2, long_factor_share=0.5)]:
        with pytest.raises(ValueError, match="long_factor_share"):
            ToolArithmeticTask(**{"digits": 3, "max_factors": 3, **bad})
