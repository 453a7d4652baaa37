"""Tests for lrmjax.rewards.code: program extraction, test format, all-pass vs fraction."""

import pytest

from lrmjax.rewards import get, sandbox
from lrmjax.rewards.code import extract_program, parse_tests


def test_extract_program_prefers_last_python_fence():
    text = ("Try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```"
            "\nOutput:\n```\n2\n```")
    assert extract_program(text) == "def f(): return 2\n"
    assert extract_program("```py\nx = 1\n```") == "x = 1\n"
    assert extract_program("```\ny = 2\n```") == "y = 2\n"
    assert extract_program("z = 3") == "z = 3"


def test_parse_tests_formats_and_errors():
    assert parse_tests("assert f() == 1\nassert f() > 0", 0) == ["assert f() == 1\nassert f() > 0"]
    assert parse_tests(["assert a", "assert b"], 0) == ["assert a", "assert b"]
    with pytest.raises(ValueError, match="row 4.*must be a str or a list of str"):
        parse_tests([1, 2], 4)
    with pytest.raises(ValueError, match="row 2.*is empty"):
        parse_tests([], 2)


needs_sandbox = pytest.mark.skipif(
    not sandbox.probe_isolation().isolated,
    reason=f"sandbox isolation unavailable here: {sandbox.probe_isolation().missing}")


@needs_sandbox
def test_code_reward_all_and_fraction():
    completions = [
        "Here:\n```python\ndef sq(x):\n    return x * x\n```",
        "```python\ndef sq(x):\n    return x * 2\n```",   # right only for 0 and 2
        "```python\ndef sq(x):\n    while True: pass\n```",
    ]
    tests = ["assert sq(0) == 0", "assert sq(2) == 4", "assert sq(3) == 9"]
    meta = [{"tests": tests}] * 3
    res_all = get("code", timeout_s=1.5)(["p"] * 3, completions, meta)
    res_frac = get("code", mode="fraction", timeout_s=1.5)(["p"] * 3, completions, meta)
    assert res_all.scores == [1.0, 0.0, 0.0]
    assert res_frac.scores == pytest.approx([1.0, 2 / 3, 0.0])
    assert res_frac.components["timed_out"] == [0.0, 0.0, 1.0]
    assert res_frac.components["program_ok"] == [1.0, 1.0, 1.0]


@needs_sandbox
def test_code_reward_setup_and_script_test():
    res = get("code")(["p"], ["def g():\n    return helper() + 1"],
                      [{"setup": "def helper():\n    return 41", "tests": "assert g() == 42"}])
    assert res.scores == [1.0]


def test_code_reward_bad_input():
    with pytest.raises(KeyError, match="row 0 has no metadata\\['tests'\\]"):
        get("code")(["p"], ["x = 1"], [{}])
    with pytest.raises(ValueError, match="mode must be"):
        get("code", mode="some")(["p"], ["x = 1"], [{"tests": ["pass"]}])
