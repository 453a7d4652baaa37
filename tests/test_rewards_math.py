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


# Equivalences graders argue about: (reference, prediction, verdict, why). Verdicts are
# judged from the math and the policy in the module docstring, not from running the code.
def _case(ref, pred, verdict, why, xfail=None):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(ref, pred, verdict, id=f"{ref} ~ {pred} -> {verdict}: {why}", marks=marks)


GRADER_CASES = [
    # Thousands separators; the period is always a decimal point.
    _case("1000", "1,000", 1, "comma groups of three are a thousands separator"),
    _case("1,000", "1000", 1, "same, separator in the reference"),
    _case("1", "1,000", 0, "1,000 is one thousand, not 1 and not the list 1, 000"),
    _case("1,000", "1", 0, "same, reversed"),
    _case("1234567", "1{,}234{,}567", 1, "LaTeX {,} separator"),
    _case("1000.5", "1,000.5", 1, "separator with a decimal part"),
    _case("1", "1.000", 1, "period = decimal point: 1.000 is one"),
    _case("1000", "1.000", 0, "European 1.000 (one thousand) is not read"),
    _case("1.5", "1,5", 0, "European decimal comma is not read (1,5 is the list 1, 5)"),
    _case("1000", "1 000", 1, "space as thousands separator"),
    _case("0", "1 000", 0, "1 000 must not parse as 1*000 = 0"),
    _case("1000000", "1 000 000", 1, "several spaced groups"),
    _case("1000", "1\\,000", 1, "LaTeX thin space separator"),
    _case("12345.5", "12 345.5", 1, "spaced groups with a decimal part"),
    _case("12", "12 000", 0, "twelve thousand is not twelve"),
    _case("1", "1 0", 0, "one-digit group after a space is not a separator"),
    # Percentages: X% is X/100, and also X against a reference without a percent sign.
    _case("50", "50\\%", 1, "GSM8K 'what percent' references are plain numbers"),
    _case("0.5", "50\\%", 1, "value reading: 50% = 1/2"),
    _case("50\\%", "50", 1, "percent sign omitted"),
    _case("50\\%", "0.5", 1, "value reading, reference side"),
    _case("12.5", "12.5\\%", 1, "the unit reading is not only for integers"),
    _case("12.5\\%", "12.5", 1, "same, reference side"),
    _case("0.125", "12.5\\%", 1, "value reading with a decimal"),
    _case("0.5", "50 percent", 1, "the word percent is a percent sign"),
    _case("0.5", "50\\text{ percent}", 1, "\\text{percent} too"),
    _case("50\\%", "5000\\%", 0, "two percentages compare their numbers"),
    _case("50", "0.5", 0, "plain numbers: no percent reading"),
    _case("50\\%", "0.05", 0, "50% is 0.5, not 0.05"),
    _case("5", "0.5\\%", 0, "neither 0.5 nor 0.005 is 5"),
    # Units.
    _case("5", "5\\text{ cm}", 1, "\\text{} unit dropped"),
    _case("5\\text{ cm}", "5", 1, "unit in the reference"),
    _case("5", "5 \\text{ cm}^2", 1, "unit with a power"),
    _case("5", "50\\text{ cm}", 0, "the number still has to match"),
    _case("18", "18 dollars", 1, "plain-word unit"),
    _case("3", "3 pi", 0, "pi is a factor, not a unit"),
    _case("5", "5 i", 0, "a single letter is a factor (5i), not a unit"),
    _case("4", "4 x", 0, "same: 4x is not 4"),
    # Fractions and radicals.
    _case("\\dfrac{1}{2}", "0.5", 1, "terminating decimal equals the fraction exactly"),
    _case("0.5", "\\frac12", 1, "brace-less \\frac"),
    _case("\\dfrac{1}{2}", "\\frac12", 1, "\\dfrac is \\frac"),
    _case("\\frac12", "\\frac13", 0, "different fractions"),
    _case("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", 1, "slash form"),
    _case("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", 1, "brace-less \\sqrt"),
    _case("\\frac{\\sqrt2}{2}", "\\frac{1}{\\sqrt2}", 1, "rationalized or not, same number"),
    # Decimals are exact: no credit for a rounded numeral.
    _case("\\pi", "3.14159", 0, "a rounding of pi is not pi"),
    _case("\\pi", "3.141593", 0, "not even at math-verify's 6-place rounding"),
    _case("\\pi", "3.14159265358979", 0, "nor at 14 places"),
    _case("\\frac13", "0.333333", 0, "a truncated repeating decimal is not 1/3"),
    _case("0.333333", "\\frac{1}{3}", 0, "nor the other way round"),
    _case("\\frac{\\sqrt{2}}{2}", "0.7071068", 0, "a rounded irrational"),
    _case("3.14", "\\pi", 0, "a rounded reference is matched by its own digits only"),
    _case("0.1", "0.10", 1, "trailing zero"),
    _case("0.1", "\\frac{1}{10}", 1, "exact decimal"),
    _case("\\sqrt{e}", "e^{0.5}", 1, "a decimal exponent of e stays exact"),
    _case("(\\frac12, 1)", "(0.5, 1)", 1, "exact inside a tuple"),
    _case("[\\frac12, 1)", "[0.5, 1)", 1, "exact inside an interval"),
    _case("\\frac{x}{2}", "0.5x", 1, "exact inside an expression"),
    _case("\\begin{pmatrix}\\frac12\\\\1\\end{pmatrix}",
          "\\begin{pmatrix}0.5\\\\1\\end{pmatrix}", 1, "exact inside a matrix"),
    _case("(3,1)", "3.0, 1", 1, "a bare list with decimals read as a point"),
    _case("(3,1)", "1, 3.0", 0, "and its written order kept"),
    # Scientific notation vs Euler's e.
    _case("1000", "1e3", 1, "1e3 is a power of ten"),
    _case("1e3", "1000", 1, "same, in the reference"),
    _case("0.015", "1.5e-2", 1, "negative exponent"),
    _case("200000", "2E5", 1, "capital E"),
    _case("1000", "1e+3", 1, "explicit plus sign"),
    _case("\\frac{1}{400}", "2.5e-3", 1, "exact, not a float"),
    _case("6.02 \\times 10^{23}", "6.02e23", 1, "both spellings of scientific notation"),
    _case("30000", "3 \\times 10^{4}", 1, "\\times 10^k is arithmetic"),
    _case("30000", "3\\cdot10^4", 1, "\\cdot 10^k is arithmetic"),
    _case("0.015", "1.5 \\times 10^{-2}", 1, "decimal mantissa, negative power"),
    _case("1000", "1e3 \\text{ m}", 1, "scientific notation with a unit"),
    _case("2e", "2e", 1, "2e alone is 2 times Euler's number"),
    _case("2e", "5.43656", 0, "and not its rounding"),
    _case("1000", "3e", 0, "3e is not a power of ten"),
    _case("e^{2}", "e^2", 1, "Euler's e squared, braces optional"),
    _case("e^{2}", "2e", 0, "e^2 is not 2e"),
    _case("3e^x", "3e^{x}", 1, "3e^x keeps e as Euler's number"),
    _case("3000", "3e^3", 0, "e followed by ^ is Euler's number: 3e^3 is not 3000"),
    _case("2e - 3", "0.002", 0, "a spaced sign keeps e as Euler's number"),
    _case("\\infty", "1e999", 0, "a huge literal is a number (and never infinity)"),
    # Intervals, sets, tuples.
    _case("[1,2)", "[1,2]", 0, "closed and half-open intervals differ"),
    _case("[1,2)", "[1, 2)", 1, "spacing is irrelevant"),
    _case("(1,2)", "(1,2)", 1, "same interval or point"),
    _case("(1,2)", "[1,2]", 0, "open vs closed interval"),
    _case("(1,2)", "(2,1)", 0, "as a point the order matters; as an interval (2,1) is empty"),
    _case("(3,1)", "(5,2)", 0, "two different points (not two equal empty intervals)"),
    _case("(1,2)", "\\{1,2\\}", 0, "a point or interval is not a two-element set",
          xfail="math-verify reads an open interval as a pair and compares it with the set"),
    _case("\\{1,2\\}", "\\{2,1\\}", 1, "sets are unordered"),
    _case("\\{1,2\\}", "\\{1,2,3\\}", 0, "different sets"),
    _case("\\{1,2\\}", "1, 2", 1, "a bare list is a set"),
    _case("(1,2,3)", "(3,2,1)", 0, "tuples are ordered"),
    _case("(1, 0.5)", "(0.5, 1)", 0, "ordered, with decimals"),
    # Equations, signs, formatting.
    _case("3", "x = 3", 1, "the value of an assignment"),
    _case("x = 3", "3", 1, "assignment in the reference"),
    _case("x=3", "x = 4", 0, "different values"),
    _case("3", "1+2 = 3", 1, "an equality chain is read by its last member"),
    _case("2", "2 = 3", 0, "and only by it"),
    _case("0", "-0", 1, "negative zero is zero"),
    _case("-0", "0", 1, "same, reference side"),
    _case("5", "+5", 1, "leading plus"),
    _case("-5", "+5", 0, "signs differ"),
    _case("5", "5.", 1, "trailing period is punctuation"),
    _case("5", "5.0", 1, "trailing zero decimal"),
    # Hedges: an answer listing several values equals none of them.
    _case("1", "1, 2", 0, "a list is not its first element"),
    _case("1", "1 \\text{ or } 2", 0, "'or' makes a set"),
    _case("2", "\\pm 2", 0, "plus-minus is two values"),
    _case("1", "x = 1 \\text{ or } x = 2", 0, "two assignments"),
]


@pytest.mark.parametrize("ref,pred,verdict", GRADER_CASES)
def test_grader_cases(ref, pred, verdict):
    assert is_equivalent(ref, pred) == bool(verdict)


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
    ("1", "\\boxed{1E999999}", 0.0, "a huge exponent scores 0 unparsed"),
    ("1", "\\boxed{1E999999x}", 0.0, "even inside a product"),
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
