"""Tests for lrmjax.rewards.base: registry, result normalization, weighted composition."""

import functools
import math
import pickle

import pytest

from lrmjax.rewards import RewardResult, combine, get, names, register
from lrmjax.rewards import base as base_lib


def test_registry_has_builtin_rewards():
    for name in ["math", "format", "format_lenient", "code", "majority_vote",
                 "self_certainty", "neg_entropy", "mean_logprob"]:
        assert name in names()
        assert callable(get(name))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get("maths")
    assert "unknown reward 'maths'" in str(e.value)
    assert "format" in str(e.value) and "math" in str(e.value)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register("math")(lambda p, c, m: [0.0] * len(c))


def test_get_with_kwargs_binds_options_and_keeps_group_flag():
    fn = get("code", mode="fraction")
    assert isinstance(fn, functools.partial) and fn.keywords == {"mode": "fraction"}
    assert pickle.loads(pickle.dumps(fn)).keywords == {"mode": "fraction"}
    assert base_lib.is_group_level(get("majority_vote", ))
    assert not base_lib.is_group_level(fn)


def test_as_result_validates():
    assert base_lib.as_result([1, True, 0.5], 3).scores == [1.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="2 scores for 3"):
        base_lib.as_result([1.0, 2.0], 3)
    with pytest.raises(ValueError, match="not a number"):
        base_lib.as_result([1.0, None], 2)
    with pytest.raises(ValueError, match="expected a list"):
        base_lib.as_result(1.0, 1)
    with pytest.raises(ValueError, match="component 'x' has 1"):
        base_lib.as_result(RewardResult([1.0, 2.0], {"x": [1.0]}), 2)
    assert math.isnan(base_lib.as_result([math.nan], 1).scores[0])  # the pool decides


def test_combine_r1_accuracy_plus_format():
    fn = combine({"math": 1.0, "format": 0.5})
    completions = [
        "<think>1+1</think><answer>2</answer>",  # right and well-formed: 1 + 0.5
        "<think>1+1</think><answer>3</answer>",  # wrong, well-formed: 0.5
        "it is \\boxed{2}",                        # right, no format: 1
        "dunno",                                   # 0
    ]
    res = fn(["q"] * 4, completions, [{"answer": "2"}] * 4)
    assert res.scores == [1.5, 0.5, 1.0, 0.0]
    assert res.components["math"] == [1.0, 0.0, 1.0, 0.0]
    assert res.components["format"] == [1.0, 1.0, 0.0, 0.0]
    assert res.components["math/has_answer"] == [1.0, 1.0, 1.0, 0.0]
    assert pickle.loads(pickle.dumps(fn)).name == "math+format"


def _length(prompts, completions, metadata):
    return [float(len(c)) for c in completions]


def test_combine_with_callable_and_errors():
    res = combine({_length: -0.1, "format_lenient": 2.0})(
        ["q", "q"], ["abc", "<think></think><answer></answer>"], [{}, {}])
    assert res.scores == pytest.approx([-0.3, -3.2 + 2.0])
    assert set(res.components) == {"_length", "format_lenient"}
    with pytest.raises(ValueError, match="unknown reward"):
        combine({"nope": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        combine({"math": math.nan})
    with pytest.raises(ValueError, match="at least one"):
        combine({})
    assert combine({"majority_vote": 1.0, "format": 1.0}).group_level


def test_require_names_row_and_key():
    with pytest.raises(KeyError, match="reward 'x': row 3 has no metadata\\['k'\\]"):
        base_lib.require({"a": 1}, "k", 3, "x")
