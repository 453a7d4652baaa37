"""Math answer reward: extract the final answer, check equivalence with math-verify.

(Named ``math_answer`` so that no path setup can make it shadow the stdlib ``math``.)

Metadata: ``metadata["answer"]`` (str or number), the reference answer. It may itself be
a full GSM8K solution ("... #### 42") or contain ``\\boxed{}``; the same extraction is
applied to it.

Extraction order (:func:`extract_answer`):
  1. the last ``<answer>...</answer>`` block (and inside it the last ``\\boxed{}`` if any);
  2. the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces matched; ``\\{`` and ``\\}``
     are literal braces; an unclosed last box falls back to the one before it);
  3. the last GSM8K ``#### <answer>`` line.
A completion with none of these scores 0 (not an error). Only the one extracted answer is
judged: ``\\boxed{1} \\boxed{2}`` answers 2, and ``\\boxed{1, 2}`` or ``\\boxed{1 \\text{ or }
2}`` is the set {1, 2}, which equals neither 1 nor 2. An empty box, or a prediction longer
than ``MAX_ANSWER_CHARS``, scores 0 without parsing (sympy can take minutes on long input).

Equivalence (:func:`is_equivalent`) goes through HF ``math-verify`` (sympy): fractions in any
spelling (``\\dfrac{1}{2}`` = ``\\frac12`` = ``1/2`` = ``0.5``), radicals, ``\\text{}`` and
plain-word units, ``x = 3`` vs ``3``, sets (order-free), tuples (ordered), intervals
(endpoints and open/closed ends must match), matrices, ``-0`` = ``0``, ``+5`` = ``5``. Before
math-verify, both answers are normalized here, with these policy decisions:

* Decimals are exact. A decimal equals a value only if it is exactly that value:
  ``0.5`` = ``\\frac12``, but ``3.14159`` and ``3.141593`` are not ``\\pi`` and ``0.333333``
  is not ``\\frac13`` (math-verify's default rounds to 6 places, which credits a rounded
  numeral as the exact answer; the grader cannot know what precision a problem asked for).
  The cost: a reference already rounded (``0.333``) is matched by those digits only.
* Scientific notation: a decimal literal followed by ``e``/``E``, an optional sign and
  digits, with no letter, digit, ``.``, ``^`` or ``{`` after it, is a power of ten: ``1e3`` =
  ``1000``, ``1.5e-2`` = ``0.015``, ``2E5``. Anything else keeps ``e`` as Euler's number:
  ``2e``, ``e^{2}``, ``3e^x``, ``2e - 3`` (spaced), ``1e3x``. (So a bare ``2e-3`` means 0.002,
  not 2e - 3.) ``3 \\times 10^{4}`` and ``3\\cdot10^4`` are ordinary arithmetic. An answer
  with a four-digit e-exponent scores 0 (sympy spends minutes building ``1E999999``).
* Thousands separators: ``1,000`` = ``1 000`` = ``1\\,000`` = ``1{,}000`` = ``1000``. The
  period is always the decimal point (GSM8K and MATH are US-style): ``1.000`` = ``1``.
* Percentages: ``X\\%`` (or ``X%``, ``X percent``) equals X/100, and, when the other answer
  has no percent sign, also X itself: GSM8K writes "what percent" answers as a plain 50,
  and MATH writes probabilities as 0.5, so ``50\\%`` matches both (the cost: ``0.5\\%`` also
  matches 0.5; a plain reference does not say whether it meant a percent). Two percentages
  compare their numbers (``50\\%`` is not ``5000\\%``).
* A number followed only by words (``18 dollars``) is the number, but a single letter or
  ``pi`` after it is not a unit: ``5 i``, ``4 x``, ``3 pi`` are not 5, 4, 3.
* Text answers (math-verify parses nothing, e.g. "yes") compare as normalized strings.

Known gap (an xfail test): math-verify equates an open interval or point ``(1,2)`` with the
set ``\\{1,2\\}``.

math-verify's own timeouts use ``signal.alarm``, which only works in the main thread; off
the main thread we disable them and rely on the pool's per-sample timeout.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from fractions import Fraction

from latex2sympy2_extended.logic import And as _And
from latex2sympy2_extended.sets import FiniteSet as _FiniteSet
from math_verify import parse, verify
from sympy import Basic, Float, MatrixBase, Rational

from lrmjax.rewards.base import RewardResult, check_batch, register, require

# Longer predictions score 0 unparsed: real final answers are short, and sympy's parse and
# simplify are superlinear (a 100,000-character box took 5 s before its timeout fired).
MAX_ANSWER_CHARS = 1000

_GSM8K = re.compile(r"####\s*([^\n]+)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\b")
# "18 dollars", "3.5 cm", "1,200 apples": a bare number followed only by words. A single
# letter or `pi` is a factor (5 i, 4 x, 3 pi), not a unit.
_NUMBER_WITH_WORDS = re.compile(
    r"^\s*\$?\s*([-+]?\d[\d,]*(?:\.\d+)?)\s*(?!(?i:pi)\b)[A-Za-z]{2,}[A-Za-z .]*$")
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*(?:\\%|percent)\s*\}|\bpercent)\s*$")
# 1e3, 1.5E-2, .5e+3: a literal power of ten (see the module docstring for the e rule).
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?|\.\d+)[eE]([+-]?\d+)(?![\w.^{])")
# 1E999999 (even inside 1E999999x): sympy builds a million-digit Float for minutes, past
# math-verify's timeout. Such an answer is not verified.
_HUGE_EXPONENT = re.compile(r"\d[eE][+-]?\d{4}")
# 1 000, 12 345 678, 1\,000: digit groups of three after a group of one to three digits,
# separated by a space or a LaTeX thin/normal space.
_SPACED_THOUSANDS = re.compile(
    r"(?<![\d.])\d{1,3}(?:(?:\s|\\,|\\ |\\;|\\:|~)\d{3})+(?![\d])")
_SPACE_SEPARATOR = re.compile(r"\s|\\,|\\ |\\;|\\:|~")
# e^{0.5}: sympy evaluates exp(<Float>) to a Float at parse time, before `_exact` can make the
# exponent exact; \exp(0.5) stays symbolic.
_EXP_OF_DECIMAL = re.compile(r"(?<![A-Za-z\\])e\^\{\s*([-+]?\s*(?:\d+\.\d*|\.\d+))\s*\}")


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> position of its ``}`` (one pass; ``\\{`` ``\\}`` are literal)."""
    stack: list[int] = []
    match: dict[int, int] = {}
    for i, c in enumerate(text):
        if c in "{}" and i > 0 and text[i - 1] == "\\":
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``), nested braces matched.

    ``\\boxed 5`` (no braces) returns the next token. An unclosed box is skipped in favour of
    the one before it; None if no box closes. Linear in ``len(text)``.
    """
    matches = list(_BOXED.finditer(text))
    braces = None
    for m in reversed(matches):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            if braces is None:
                braces = _matching_braces(text)
            if i in braces:
                return text[i + 1 : braces[i]].strip()
            continue  # unbalanced: try an earlier box
        token = re.match(r"[^\s$]+", text[i:])
        if token:
            return token.group(0)
    return None


def _last_answer_tag(text: str) -> str | None:
    """Content of the last closed ``<answer>...</answer>`` block (linear, unlike a lazy regex)."""
    close = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, close) if close >= 0 else -1
    if start < 0:
        return None
    return text[start + len("<answer>") : text.find("</answer>", start)]


def extract_answer(text: str) -> str | None:
    """The final answer in `text` (see module docstring for the order), or None."""
    inner = _last_answer_tag(text)
    if inner is not None:
        boxed = last_boxed(inner)
        return boxed if boxed is not None else inner.strip()
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _GSM8K.findall(text)
    if hashes:
        return hashes[-1].strip()
    return None


def _scientific_to_exact(m: re.Match) -> str:
    value = Fraction(Decimal(m.group(1))) * Fraction(10) ** int(m.group(2))
    if value.denominator == 1:
        return str(value.numerator)
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _normalize_text(ans: str) -> str | None:
    """The answer string math-verify should see; None if it cannot be verified (huge exponent)."""
    ans = ans.strip().strip("$").strip()
    ans = ans.rstrip(".").strip()
    ans = _PERCENT.sub("\\%", ans)
    m = _NUMBER_WITH_WORDS.match(ans)
    if m:
        ans = m.group(1)
    if _HUGE_EXPONENT.search(ans):
        return None
    ans = _SCIENTIFIC.sub(_scientific_to_exact, ans)
    ans = _EXP_OF_DECIMAL.sub(r"\\exp(\1)", ans)
    return _SPACED_THOUSANDS.sub(lambda m: _SPACE_SEPARATOR.sub("", m.group(0)), ans)


def _timeout() -> int | None:
    return 5 if threading.current_thread() is threading.main_thread() else None


def _exact(expr):
    """`expr` with every Float replaced by the exact rational its decimal digits spell.

    latex2sympy reads ``0.5`` as a binary Float, and math-verify then compares Floats after
    rounding to 6 places; exact rationals make ``3.141593`` differ from ``\\pi``. Keeps
    latex2sympy's written element order (``_unsorted_args``), which tuple comparison uses.
    """
    if isinstance(expr, Float):
        try:
            return Rational(str(expr))
        except (TypeError, ValueError):  # inf / nan
            return expr
    if isinstance(expr, MatrixBase):
        return expr.applyfunc(_exact)
    if not isinstance(expr, Basic) or not expr.has(Float):
        return expr
    if isinstance(expr, (_FiniteSet, _And)):
        return type(expr)(*[_exact(a) for a in expr._unsorted_args])
    args = [_exact(a) for a in expr.args]
    try:
        return expr.func(*args, evaluate=False)
    except TypeError:  # e.g. Interval takes no `evaluate`
        return expr.func(*args)


def _parse(ans: str) -> list:
    exact = []
    for p in parse("\\boxed{" + ans + "}", parsing_timeout=_timeout()):
        try:
            exact.append(_exact(p))
        except Exception:  # noqa: BLE001 - a structure we cannot rebuild is dropped, not rounded
            pass
    return exact


def _equal(ref: str, pred: str) -> bool:
    ref_parsed, pred_parsed = _parse(ref), _parse(pred)
    if not ref_parsed or not pred_parsed:
        return " ".join(ref.lower().split()) == " ".join(pred.lower().split())
    return bool(verify(ref_parsed, pred_parsed, timeout_seconds=_timeout()))


def _strip_percent(ans: str) -> tuple[str, bool]:
    return (ans[: -len("\\%")].strip(), True) if ans.endswith("\\%") else (ans, False)


def is_equivalent(reference: str, prediction: str) -> bool:
    """True iff `prediction` is mathematically equal to `reference` (both answer strings).

    Both are normalized first; the policy decisions are in the module docstring.
    """
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    ref, pred = _normalize_text(reference), _normalize_text(prediction)
    if not pred or ref is None:
        return False
    if _equal(ref, pred):  # a percent sign here reads as 1/100
        return True
    # Exactly one side has a percent sign: also read it as a unit (see module docstring).
    (ref_num, ref_pct), (pred_num, pred_pct) = _strip_percent(ref), _strip_percent(pred)
    return ref_pct != pred_pct and bool(pred_num) and _equal(ref_num, pred_num)


def reference_answer(raw: object, row: int) -> str:
    """metadata["answer"] -> answer string (extracting from a worked solution if needed)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"reward 'math': row {row}: metadata['answer'] must be str or number, "
                         f"got {type(raw).__name__}")
    text = str(raw)
    extracted = extract_answer(text)
    answer = extracted if extracted is not None else text
    if not answer.strip():
        raise ValueError(f"reward 'math': row {row}: metadata['answer'] is empty")
    return answer


@register("math")
def math_reward(prompts: list[str], completions: list[str], metadata: list[dict]
                ) -> RewardResult:
    """1.0 iff the completion's extracted answer equals metadata["answer"], else 0.0.

    Components: ``has_answer`` (1.0 iff an answer could be extracted).
    """
    check_batch(prompts, completions, metadata)
    scores, has_answer = [], []
    for i, (completion, meta) in enumerate(zip(completions, metadata, strict=True)):
        ref = reference_answer(require(meta, "answer", i, "math"), i)
        pred = extract_answer(completion)
        has_answer.append(float(pred is not None))
        scores.append(float(pred is not None and is_equivalent(ref, pred)))
    return RewardResult(scores=scores, components={"has_answer": has_answer})
