"""Tests for lrmjax.rewards.math_answer: extraction and hand-written equivalence cases."""

import time

import pytest

from lrmjax.rewards import get
from lrmjax.rewards.math_answer import extract_answer, is_equivalent, last_boxed

# (reference, prediction, equal?) — judged by hand.
EQUIVALENT = [
    ("42", "42"),
    ("42", "42.0"),
    ("42", "42.00"),
    ("1/2", "0.5"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "\\dfrac{1}{2}"),
    ("\\frac{3}{4}", "0.75"),
    ("\\frac{2}{4}", "\\frac{1}{2}"),
    ("-\\frac{1}{3}", "\\frac{-1}{3}"),
    ("50\\%", "0.5"),
    ("25\\%", "\\frac{1}{4}"),
    ("1,000", "1000"),
    ("1,234,567", "1234567"),
    ("\\$18", "18"),
    ("18", "18 dollars"),
    ("10", "10 \\text{ cm}"),
    ("30", "30^\\circ"),
    ("\\sqrt{2}", "2^{1/2}"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"),
    ("[0, 1)", "[0,1)"),
    ("(-\\infty, 2]", "(-\\infty,2]"),
    ("x^2 - 1", "(x-1)(x+1)"),
    ("2x + 1", "1 + 2x"),
    ("\\pi", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"),
    ("3", "x = 3"),
    ("0.1", ".1"),
    ("\\infty", "\\infty"),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("e^{2}", "e^2"),
]
NOT_EQUIVALENT = [
    ("42", "43"),
    ("42", "-42"),
    ("1/2", "0.51"),
    ("1/3", "0.333"),
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("50\\%", "0.05"),
    ("\\sqrt{2}", "2"),
    ("\\pi", "3.14"),
    ("[0, 1)", "[0, 1]"),
    ("(0, 1)", "[0, 1]"),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}"),
    ("x^2 - 1", "x^2 + 1"),
    ("2x + 1", "2x - 1"),
    ("1,000", "100"),
    ("10", "100 \\text{ cm}"),
    ("\\infty", "-\\infty"),
    ("e^{2}", "2e"),
    ("yes", "no"),
]


@pytest.mark.parametrize("ref,pred", EQUIVALENT)
def test_equivalent(ref, pred):
    assert is_equivalent(ref, pred)


@pytest.mark.parametrize("ref,pred", NOT_EQUIVALENT)
def test_not_equivalent(ref, pred):
    assert not is_equivalent(ref, pred)


def test_case_count():
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 40


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{5}", "5"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}} done", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\{1,\\{2\\}\\}}", "\\{1,\\{2\\}\\}"),
    ("answer: \\fbox{7}", "7"),
    ("\\boxed 9 is it", "9"),
    ("broken \\boxed{1} and \\boxed{2", "1"),
    ("Janet has 3 apples.\n#### 42", "42"),
    ("#### 1\nmore\n#### 1,000", "1,000"),
    ("<think>maybe 3</think><answer> 4 </answer>", "4"),
    ("<answer>so \\boxed{6}</answer>", "6"),
    ("<answer>1</answer> \\boxed{2}", "1"),
    ("\\boxed{f = \\left\\{ x \\right.} ok", "f = \\left\\{ x \\right."),
    ("<answer>a<answer>b</answer>", "b"),
    ("no answer at all", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_none():
    assert last_boxed("nothing") is None


def test_math_reward_scores_and_components():
    fn = get("math")
    res = fn(["q"] * 5,
             ["\\boxed{0.5}", "The answer is 3.\n#### 3", "<answer>7</answer>", "I think 2",
              "\\boxed{2}"],
             [{"answer": "\\frac{1}{2}"}, {"answer": "Work... #### 3"}, {"answer": 7},
              {"answer": "2"}, {"answer": "3"}])
    assert res.scores == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert res.components["has_answer"] == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_math_reward_missing_answer_names_row():
    with pytest.raises(KeyError, match="row 1 has no metadata\\['answer'\\]"):
        get("math")(["q", "q"], ["\\boxed{1}", "\\boxed{1}"], [{"answer": "1"}, {}])


def test_math_reward_bad_answer_type_names_row():
    with pytest.raises(ValueError, match="row 0.*must be str or number"):
        get("math")(["q"], ["\\boxed{1}"], [{"answer": None}])


# Whole completions, scored by the registered reward: (reference, completion, score, why).
COMPLETION_CASES = [
    ("1", "\\boxed{1} \\boxed{2}", 0.0, "the last box counts, not the first"),
    ("2", "\\boxed{1} \\boxed{2}", 1.0, "the last box counts"),
    ("1", "so \\boxed{1 \\text{ or } 2}", 0.0, "a hedge is a set, not 1"),
    ("1", "so \\boxed{1, 2}", 0.0, "a list is a set, not 1"),
    ("1", "\\boxed{}", 0.0, "empty box"),
    ("0", "\\boxed{}", 0.0, "empty box does not read as 0"),
    ("1", "<answer>\\boxed{1}</answer>", 1.0, "box inside the answer tag"),
    ("1", "<answer>it is \\boxed{1}</answer> then \\boxed{2}", 1.0, "the answer tag wins"),
    ("1", "<answer>1 or \\boxed{2}</answer>", 0.0, "inside the tag, the box wins"),
    ("1", "\\boxed{" + "1" * 100_000 + "}", 0.0, "a 100,000-character answer"),
    ("1", "\\boxed{" + "1+" * 50_000 + "1}", 0.0, "a long expression is not parsed"),
]


@pytest.mark.parametrize("ref,completion,score,why", COMPLETION_CASES,
                         ids=[f"{c[3]}" for c in COMPLETION_CASES])
def test_completion_cases(ref, completion, score, why):
    t0 = time.perf_counter()
    assert get("math")(["q"], [completion], [{"answer": ref}]).scores == [score]
    assert time.perf_counter() - t0 < 3.0  # sympy on long input takes seconds to minutes


@pytest.mark.parametrize("text", ["\\boxed{" * 20_000, "<answer>" * 20_000])
def test_extraction_is_linear(text):
    t0 = time.perf_counter()
    assert extract_answer(text) is None
    assert time.perf_counter() - t0 < 1.0  # quadratic scans took minutes on these
