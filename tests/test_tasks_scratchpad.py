"""Tests for lrmjax.data.tasks.scratchpad: arithmetic answered after a free-length scratchpad."""

import collections
import re

import numpy as np
import pytest

from lrmjax.data.tasks import Example, get_task, verify_example

_PROMPT = re.compile(r"^(\d+)\+(\d+)=$")


def _sum(prompt: str) -> int:
    a, b = _PROMPT.fullmatch(prompt).groups()
    return int(a) + int(b)


def test_verifier_reads_only_the_text_after_the_last_marker():
    task = get_task("scratchpad_arithmetic", digits=3, reverse_answer=True)
    ex = Example("123+456=", "975", {"result": 579})
    for completion, reward in [
        ("#975", 1.0), ("....#975", 1.0), ("12+45=57 #975", 1.0),  # any scratchpad
        ("#579#975", 1.0),                                       # the last marker counts
        ("#975#579", 0.0), ("975", 0.0), ("...975", 0.0),        # no marker: 0
        ("#0975", 0.0), ("# 975 ", 1.0), ("#", 0.0), ("", 0.0),  # arithmetic's rules after it
    ]:
        assert task.verify(ex, completion) == reward, completion
    assert task.verify(ex, None) == 0.0


def test_demonstrations_are_correct_with_fillers_spread_over_0_to_max_pad():
    task = get_task("scratchpad_arithmetic", digits=2, max_pad=4, marker="#", pad=".")
    examples = task.sample(np.random.default_rng(0), 400)
    lengths = collections.Counter()
    for ex in examples:
        demo = ex.metadata["demonstration"]
        filler, answer = demo.split("#")
        assert set(filler) <= {"."} and answer == ex.answer == str(_sum(ex.prompt))
        assert verify_example(ex, demo) == 1.0       # rebuilt from the example's metadata
        lengths[len(filler)] += 1
    assert sorted(lengths) == [0, 1, 2, 3, 4]
    assert min(lengths.values()) > 400 / 5 / 2       # roughly uniform
    assert task.max_answer_chars() == 4 + 1 + 3      # filler, marker, a 3-digit sum


def test_prompts_and_answers_are_arithmetics():
    scratch = get_task("scratchpad_arithmetic", digits=3, min_digits=3, reverse_answer=True)
    plain = get_task("arithmetic", digits=3, min_digits=3, reverse_answer=True)
    for seed in range(20):
        a, b = scratch.example(seed), plain.example(seed)
        assert (a.prompt, a.answer) == (b.prompt, b.answer)
    assert scratch.with_difficulty(2).config == {**scratch.config, "digits": 2, "min_digits": 2}


@pytest.mark.parametrize("kwargs, match", [
    ({"max_pad": -1}, "max_pad"), ({"marker": "7"}, "marker"), ({"marker": "##"}, "marker"),
    ({"pad": "#"}, "pad"), ({"digits": 0}, "digits"),
])
def test_bad_settings_raise_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_task("scratchpad_arithmetic", **kwargs)
