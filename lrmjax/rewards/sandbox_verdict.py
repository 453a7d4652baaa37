"""The trusted side of the sandbox's verdict: tests as data, results as data, compared here.

A test is Python source made only of assertions ``assert name(<literals>) == <literal>``
(either side of ``==`` may hold the call; an assertion message is allowed and ignored; one
test may hold several such assertions, and passes iff all do). :func:`parse_test` turns it
into :class:`Check` s in the trusted process with ``ast`` and ``ast.literal_eval``, so the
expected values never reach the untrusted process: the sandbox sends it only the calls
(function name and literal arguments), the harness answers each with its result in the
wire format below, and :func:`judge` compares the decoded results with the expected values
here, with ``==`` on plain builtin objects that this process built itself.

Wire format (one JSON document per line, written by the harness, see
:mod:`lrmjax.rewards.sandbox_harness`): ``["program", "ok"|"error"]`` once, then per call
``[j, "ok", <value>]`` or ``[j, "error", <exception type name>]``. A value is tagged with its
exact type: ``["n"]`` None, ``["b", 0|1]``, ``["i", "<hex>"]``, ``["f", "<repr>"]``,
``["c", "<real repr>", "<imag repr>"]``, ``["s", "<utf-8 hex>"]``, ``["y", "<hex>"]``
(bytes), ``["l"|"t"|"set"|"fs", [values]]`` (list, tuple, set, frozenset), ``["d", [[key,
value], ...]]``. The harness encodes only objects whose type *is* one of these builtins (a
subclass, e.g. an int whose ``__eq__`` always returns True, cannot be encoded and its call
is an error), so what reaches :func:`judge` is data, never the program's objects.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import threading
from typing import Any

ACCEPTED = ("only assertions of the form `assert name(<literals>) == <literal>` are accepted "
            "(arguments and expected value Python literals: numbers, strings, bytes, None, "
            "booleans, and tuples/lists/dicts/sets of them)")


@dataclasses.dataclass(frozen=True)
class Check:
    """One assertion ``func(*args, **kwargs) == expected``."""

    func: str
    args: tuple
    kwargs: dict
    expected: Any

    def call(self) -> tuple[str, tuple, dict]:
        """What the untrusted side receives: the call without the expected value."""
        return self.func, self.args, self.kwargs


def _call(node: ast.expr, source: str) -> tuple[str, tuple, dict] | None:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return None
    if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords):
        raise ValueError(f"*args/**kwargs in {ast.get_source_segment(source, node)!r}; "
                         + ACCEPTED)
    try:
        args = tuple(ast.literal_eval(a) for a in node.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"arguments of {ast.get_source_segment(source, node)!r} are not "
                         f"literals ({e}); " + ACCEPTED) from None
    return node.func.id, args, kwargs


# CPython 3.11 keeps the AST constructor's recursion depth in per-interpreter state, so two
# threads parsing at once can fail with "SystemError: AST constructor recursion depth mismatch"
# (python/cpython#106905): seen when `sandbox.run_tests` ran from several threads at once.
_PARSE_LOCK = threading.Lock()


def parse_test(source: str) -> tuple[Check, ...]:
    """Test source -> its checks; raises ValueError (naming the statement) on any other shape.
    Safe to call from several threads."""
    try:
        with _PARSE_LOCK:
            tree = ast.parse(source)
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"not valid Python ({e}); " + ACCEPTED) from None
    checks = []
    for stmt in tree.body:
        text = ast.get_source_segment(source, stmt)
        test = stmt.test if isinstance(stmt, ast.Assert) else None
        if not (isinstance(test, ast.Compare) and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Eq)):
            raise ValueError(f"{text!r}: " + ACCEPTED)
        left, right = test.left, test.comparators[0]
        call, other = (left, right) if isinstance(left, ast.Call) else (right, left)
        parsed = _call(call, source)
        if parsed is None:
            raise ValueError(f"{text!r}: " + ACCEPTED)
        try:
            expected = ast.literal_eval(other)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{text!r}: the expected value is not a literal; "
                             + ACCEPTED) from None
        checks.append(Check(*parsed, expected))
    if not checks:
        raise ValueError("no assertion; " + ACCEPTED)
    return tuple(checks)


class MalformedChannel(ValueError):
    """The verdict channel holds something the harness does not write."""


_SEQ = {"l": list, "t": tuple, "set": set, "fs": frozenset}


def decode(value: Any) -> Any:
    """A tagged value (see the module docstring) -> the builtin object; raises
    MalformedChannel on anything else."""
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise MalformedChannel(f"untagged value {value!r:.80}")
    tag, rest = value[0], value[1:]
    try:
        if tag == "n" and not rest:
            return None
        if tag == "b" and rest in ([0], [1]):
            return bool(rest[0])
        if len(rest) == 1 and isinstance(rest[0], str):
            if tag == "i":  # hex: no int/str digit limit (it binds base 10 only)
                return int(rest[0], 16)
            if tag == "f":
                return float(rest[0])
            if tag == "s":
                return bytes.fromhex(rest[0]).decode("utf-8", "surrogatepass")
            if tag == "y":
                return bytes.fromhex(rest[0])
        if tag == "c" and len(rest) == 2 and all(isinstance(r, str) for r in rest):
            return complex(float(rest[0]), float(rest[1]))
        if tag in _SEQ and len(rest) == 1 and isinstance(rest[0], list):
            return _SEQ[tag](decode(v) for v in rest[0])
        if tag == "d" and len(rest) == 1 and isinstance(rest[0], list):
            pairs = rest[0]
            if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise MalformedChannel("bad dict item")
            return {decode(k): decode(v) for k, v in pairs}
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        if isinstance(e, MalformedChannel):
            raise
        raise MalformedChannel(f"bad {tag!r} value: {e}") from None
    raise MalformedChannel(f"unknown value {value!r:.80}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """``passed[i]`` per test; ``program_ok``; ``error``: why the channel was rejected."""

    passed: tuple[bool, ...]
    program_ok: bool
    error: str = ""


def judge(channel: bytes, tests: list[tuple[Check, ...]]) -> Verdict:
    """Compares the harness's answers on `channel` with the tests' expected values.

    Any malformed line, a duplicate or out-of-range record, or a second program record
    (none of which the harness writes) fails every test. Test i passes iff the program
    completed and every check of test i has exactly one ``ok`` record whose decoded value
    ``== expected``.
    """
    failed = Verdict((False,) * len(tests), False)
    num_calls = sum(len(t) for t in tests)
    program, results = None, {}
    try:
        text = channel.decode("utf-8")
        for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
            rec = json.loads(line)
            if not isinstance(rec, list) or len(rec) < 2:
                raise MalformedChannel(f"bad record {line[:80]!r}")
            if rec[0] == "program" and len(rec) == 2 and rec[1] in ("ok", "error"):
                if program is not None:
                    raise MalformedChannel("two program records")
                program = rec[1] == "ok"
            elif (type(rec[0]) is int and 0 <= rec[0] < num_calls and len(rec) == 3
                  and rec[1] in ("ok", "error")):
                if rec[0] in results or not program:
                    raise MalformedChannel(f"unexpected record for call {rec[0]}")
                results[rec[0]] = (rec[1] == "ok", decode(rec[2]) if rec[1] == "ok" else None)
            else:
                raise MalformedChannel(f"bad record {line[:80]!r}")
    except (ValueError, RecursionError) as e:  # MalformedChannel, bad JSON or UTF-8
        return dataclasses.replace(failed, error=f"malformed verdict channel: {e}"[:300])
    if not program:
        return dataclasses.replace(failed, program_ok=program is not None and program)
    passed, j = [], 0
    for checks in tests:
        ok = True
        for check in checks:
            got = results.get(j)
            try:
                ok = ok and got is not None and got[0] and bool(got[1] == check.expected)
            except RecursionError:
                ok = False
            j += 1
        passed.append(ok)
    return Verdict(tuple(passed), True)


COMPARE_MODES = ("exact", "whitespace", "float")


def check_compare(compare: str) -> None:
    """Raises ValueError unless `compare` is one of COMPARE_MODES."""
    if compare not in COMPARE_MODES:
        raise ValueError(f"compare must be one of {COMPARE_MODES}, got {compare!r}")


def outputs_match(got: str, expected: str, compare: str = "whitespace",
                  float_tol: float = 1e-6) -> bool:
    """Standard-output comparison, done in the trusted process.

    ``"exact"``: identical text. ``"whitespace"``: the same whitespace-separated tokens.
    ``"float"``: the same tokens, except that a pair of tokens that both read as finite
    floats matches within `float_tol`, absolute or relative (``math.isclose``).
    """
    check_compare(compare)
    if compare == "exact":
        return got == expected
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        if compare != "float":
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not (math.isfinite(fx) and math.isfinite(fy)
                and math.isclose(fx, fy, rel_tol=float_tol, abs_tol=float_tol)):
            return False
    return True
