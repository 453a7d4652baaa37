"""Tests for lrmjax.rewards.code: program extraction, test format, all-pass vs fraction."""

import logging
import sys

import pytest

from lrmjax.rewards import RewardPool, get, sandbox
from lrmjax.rewards.code import extract_program, parse_tests


def test_extract_program_prefers_last_python_fence():
    text = ("Try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f(): return 2\n```"
            "\nOutput:\n```\n2\n```")
    assert extract_program(text) == "def f(): return 2\n"
    assert extract_program("```py\nx = 1\n```") == "x = 1\n"
    assert extract_program("```\ny = 2\n```") == "y = 2\n"
    assert extract_program("z = 3") == "z = 3"


def test_parse_tests_formats_and_errors():
    script = "assert f() == 1\nassert g(2, k=[3]) == {'a': (1,)}"
    assert parse_tests(script, 0) == [script]
    assert parse_tests(["assert 5 == f(-1)", "assert f() == None"], 0) == [
        "assert 5 == f(-1)", "assert f() == None"]
    # Tests the parent cannot judge from data are refused, naming the row and the test.
    for bad in ["assert f() > 0", "assert ok", "assert f(x) == 1", "f()", "assert f() == g()",
                "assert f() == 1 + 1", "assert m.f() == 1", "assert f(*a) == 1", "",
                "assert f() == 1\nprint(1)", "assert f( == 1"]:
        with pytest.raises(ValueError, match=r"row 3: metadata\['tests'\]\[1\]: .*accepted"):
            parse_tests(["assert f() == 1", bad], 3)
    with pytest.raises(ValueError, match="row 4.*must be a str, a list of str, or a list of"):
        parse_tests([1, 2], 4)
    assert parse_tests([{"input": "1", "output": "2"}], 0) == [("1", "2")]
    with pytest.raises(ValueError, match="row 1.*mixed or malformed"):
        parse_tests([{"input": "1"}], 1)
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
    assert res_frac.components["sandbox_isolated"] == [1.0, 1.0, 1.0]


@needs_sandbox
def test_run_that_does_not_end_cleanly_scores_zero():
    """Correct answers, then a hang (a non-daemon thread), a crash or output past the cap."""
    square = "def sq(x):\n    return x * x\n"
    tails = ["import threading, time\nthreading.Thread(target=time.sleep, args=(99,)).start()",
             "import atexit, ctypes\natexit.register(ctypes.string_at, 0)",
             "import atexit, sys\natexit.register(lambda: sys.stdout.write('x' * (17 << 20)))"]
    completions = [square] + [square + tail for tail in tails]
    res = get("code", mode="fraction", timeout_s=1.5)(["p"] * 4, completions, [TESTS_SQ] * 4)
    assert res.scores == [1.0, 0.0, 0.0, 0.0]
    assert res.components["timed_out"] == [0.0, 1.0, 0.0, 0.0]
    assert res.components["program_ok"] == [1.0] * 4


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
    with pytest.raises(ValueError, match=r"row 1: metadata\['tests'\]\[0\]: 'assert x'"):
        get("code")(["p"] * 2, ["x = 1"] * 2, [{"tests": ["assert f() == 1"]},
                                                {"tests": ["assert x"]}])


SQUARE = "```python\ndef sq(x):\n    return x * x\n```"
TESTS_SQ = {"tests": ["assert sq(3) == 9"]}


@needs_sandbox
def test_isolated_runs_report_sandbox_isolated_through_a_worker():
    with RewardPool(get("code"), num_workers=1, timeout_s=30.0) as pool:
        scores, metrics, _ = pool.score(["p"] * 2, [SQUARE, "sq = abs"], [TESTS_SQ] * 2)
    assert scores.tolist() == [1.0, 0.0]
    assert metrics["reward/sandbox_isolated"] == 1.0 and metrics["reward/errors"] == 0.0


@pytest.fixture
def no_isolation(monkeypatch):
    """The sandbox probe reports isolation unavailable; its once-per-process log starts
    afresh."""
    monkeypatch.setattr(sandbox, "probe_isolation", lambda preferred=None: sandbox.Isolation(
        sandbox.NONE, sys.executable, "not root (simulated)"))
    monkeypatch.setattr(sandbox, "_reported", set())


def test_code_reward_refuses_without_isolation(no_isolation, tmp_path):
    marker = tmp_path / "ran"
    program = f"```python\nopen({str(marker)!r}, 'w').close()\n```"
    fn = get("code", tmp_dir=str(tmp_path))
    match = r"not root \(simulated\).*reward\.sandbox\.allow_unisolated=True"
    with pytest.raises(RuntimeError, match=match):
        fn(["p"], [program], [{"tests": ["assert f() == 1"]}])
    with pytest.raises(RuntimeError, match=match):  # also with nothing to run: a startup check
        fn([], [], [])
    assert not marker.exists() and list(tmp_path.iterdir()) == []


def test_code_reward_allow_unisolated_scores_reports_and_warns(no_isolation, caplog):
    fn = get("code", allow_unisolated=True)
    with caplog.at_level(logging.WARNING, logger=sandbox.__name__):
        res = fn(["p"] * 2, [SQUARE, "sq = abs"], [TESTS_SQ] * 2)
        with RewardPool(fn, num_workers=0) as pool:
            _, metrics, _ = pool.score(["p"], [SQUARE], [TESTS_SQ])
    assert res.scores == [1.0, 0.0]
    assert res.components["sandbox_isolated"] == [0.0, 0.0]
    assert metrics["reward/sandbox_isolated"] == 0.0 and metrics["reward/mean"] == 1.0
    [record] = caplog.records  # once per process
    assert "UNISOLATED" in record.getMessage() and "not root (simulated)" in record.getMessage()


@needs_sandbox
def test_code_reward_standard_input_tests():
    program = ("```python\nimport sys\nn = int(sys.stdin.readline())\n"
               "print(' '.join(str(i * i) for i in range(n)))\nprint(1 / 3)\n```")
    io = [{"input": "3\n", "output": "0 1 4\n0.333333"}, {"input": "1", "output": "0\n0.3333333"}]
    meta = [{"tests": io}, {"tests": io, "compare": "float"},
            {"tests": io, "compare": "float", "float_tol": 1e-9}]
    res = get("code", mode="fraction")(["p"] * 3, [program] * 3, meta)
    assert res.scores == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="row 0: compare must be one of"):
        get("code")(["p"], [program], [{"tests": io, "compare": "fuzzy"}])
    with pytest.raises(ValueError, match="row 0: .*mixed or malformed"):
        get("code")(["p"], [program], [{"tests": io + ["assert f() == 1"]}])
