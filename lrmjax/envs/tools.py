"""Tools a model calls during a multi-turn episode: a calculator, a search engine, Python.

A :class:`Tool` has a ``name``, a one-line ``description`` (for a system prompt), the JSON
schema of its arguments (``parameters``, as HF chat templates' ``tools=`` expect) and is
called with keyword arguments, returning the observation text::

    tool = make_tool("calculator")
    tool(expression="12*34")   # -> "408"
    tool.schema()              # -> {"type": "function", "function": {...}} for tools=

Bad input (a missing or unexpected argument, a wrong type, a malformed expression, a
query that is too long, ...) raises :class:`ToolError` with a message meant for the model;
the caller (:func:`lrmjax.envs.tool_calls.run_tool_calls`) turns it into the observation
``"error: <message>"``. Any other exception is a bug and propagates.

Tools are registered in :data:`TOOLS` with :func:`register_tool` and built by name with
:func:`make_tool`. They are frozen dataclasses holding only plain settings, so they pickle
cheaply to worker processes; what is expensive to build (the search index) is cached per
process. This module imports no JAX (it runs in host worker processes).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import decimal
import fractions
import functools
import json
import pathlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from lrmjax.rewards import sandbox

CORPUS_DIR = pathlib.Path(__file__).resolve().parent / "corpus"
DEFAULT_CORPUS = CORPUS_DIR / "facts.jsonl"


class ToolError(Exception):
    """Bad input to a tool; the message is shown to the model as ``error: <message>``."""


# JSON-schema "type" -> the Python types a value of it may have (bool is not an integer),
# and how a message names it.
_JSON_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "string": ((str,), "a string"),
    "integer": ((int,), "an integer"),
    "number": ((int, float), "a number"),
    "boolean": ((bool,), "a boolean"),
    "object": ((dict,), "an object"),
    "array": ((list,), "an array"),
}


@dataclasses.dataclass(frozen=True)
class Tool:
    """Base class: a subclass sets the class attributes and implements :meth:`run`.

    Attributes (class-level):
      name: the name the model calls the tool by.
      description: one line, for a system prompt or a chat template's tool list.
      parameters: JSON schema of the arguments, ``{"type": "object", "properties": {...},
        "required": [...]}``. :meth:`__call__` validates arguments against it (names,
        required, ``type``, ``minimum``/``maximum``), so :meth:`run` receives checked ones.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]

    def __call__(self, /, **arguments: Any) -> str:
        """Runs the tool on `arguments` (checked against ``parameters``); returns the
        observation text. Raises ToolError on bad input."""
        _check_arguments(self.name, self.parameters, arguments)
        return self.run(**arguments)

    def run(self, **arguments: Any) -> str:
        raise NotImplementedError

    def schema(self) -> dict[str, Any]:
        """The OpenAI / HF function-tool dict (a copy): ``{"type": "function", "function":
        {"name", "description", "parameters"}}``."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": copy.deepcopy(self.parameters)}}


def _check_arguments(name: str, parameters: Mapping[str, Any],
                     arguments: Mapping[str, Any]) -> None:
    props, required = parameters["properties"], parameters.get("required", [])
    unknown = [a for a in arguments if a not in props]
    if unknown:
        raise ToolError(f"{name}: unexpected argument(s) {', '.join(map(repr, unknown))}; "
                        f"it takes {', '.join(map(repr, props))}")
    missing = [a for a in required if a not in arguments]
    if missing:
        raise ToolError(f"{name}: missing required argument(s) "
                        f"{', '.join(map(repr, missing))}")
    for arg, value in arguments.items():
        spec = props[arg]
        kind = spec.get("type")
        if kind in _JSON_TYPES:
            types, what = _JSON_TYPES[kind]
            if not isinstance(value, types) or (isinstance(value, bool) and kind != "boolean"):
                raise ToolError(f"{name}: argument {arg!r} must be {what}, "
                                f"got {type(value).__name__}")
        if "minimum" in spec and value < spec["minimum"]:
            raise ToolError(f"{name}: argument {arg!r} must be >= {spec['minimum']}")
        if "maximum" in spec and value > spec["maximum"]:
            raise ToolError(f"{name}: argument {arg!r} must be <= {spec['maximum']}")


# ------------------------------------------------------------------------------ registry
TOOLS: dict[str, Callable[..., Tool]] = {}


def register_tool(name: str) -> Callable[[Callable[..., Tool]], Callable[..., Tool]]:
    """Decorator: registers a Tool factory (usually the class) under `name`.

    A duplicate name is an error, as is a Tool class whose ``name`` differs from `name`.
    """

    def deco(factory: Callable[..., Tool]) -> Callable[..., Tool]:
        if name in TOOLS and TOOLS[name] is not factory:
            raise ValueError(f"tool {name!r} is already registered")
        if isinstance(factory, type) and getattr(factory, "name", name) != name:
            raise ValueError(f"tool class {factory.__name__} is named {factory.name!r}, "
                             f"registered as {name!r}")
        TOOLS[name] = factory
        return factory

    return deco


def make_tool(name: str, **kwargs: Any) -> Tool:
    """The tool registered as `name`, built with `kwargs` (its settings).

    Raises:
      ValueError: no tool is registered as `name` (the message lists the registered ones).
    """
    if name not in TOOLS:
        raise ValueError(f"unknown tool {name!r}; registered tools: {', '.join(sorted(TOOLS))}")
    return TOOLS[name](**kwargs)


# ---------------------------------------------------------------------------- calculator
_BINOPS: dict[type, Callable[[fractions.Fraction, fractions.Fraction], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
# Operators a model may reach for, with what to write instead.
_HINTS = {ast.BitXor: "^ is not supported (write ** for powers)"}


@register_tool("calculator")
@dataclasses.dataclass(frozen=True)
class CalculatorTool(Tool):
    """Exact arithmetic on an expression (parsed with ``ast``, never evaluated).

    Accepts integer and decimal literals (``12``, ``0.5``, ``1e3``, ``1_000``), ``+ - * /
    // % **``, unary ``-`` and ``+`` and parentheses, with Python's precedence and
    semantics (``//`` and ``%`` floor, ``**`` binds tighter than unary minus: ``-2**2`` is
    -4). Arithmetic is exact (:class:`fractions.Fraction`): ``0.1+0.2`` is ``0.3``.

    Output rule: an integer prints as an integer (``408``, ``-7``); a non-integer prints as
    an exact decimal when its reduced denominator has no prime factor but 2 and 5 (``1/8``
    -> ``0.125``, ``-3/4`` -> ``-0.75``), else as a reduced fraction (``7/3``, ``-1/6``).

    Guards (each a ToolError, all checked before any large computation, so every call is
    fast): the expression has at most `max_chars` characters; an exponent is an integer
    with |exponent| <= `max_exponent`; a decimal literal's exponent is within
    +-`max_exponent`; no intermediate value's numerator or denominator exceeds `max_bits`
    bits (a power is checked before it is computed); the printed result has at most
    `max_digits` digits; division (``/ // %``, or a negative power) by zero; with
    `max_operations` set, at most that many binary operators (a task can then demand one
    call per operation, e.g. two calls for ``a*b*c``).
    """

    name: ClassVar[str] = "calculator"
    description: ClassVar[str] = (
        "Evaluate an arithmetic expression exactly (+ - * / // % ** and parentheses).")
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"expression": {
            "type": "string", "description": "The expression, e.g. (12.5 + 3) * 4 / 7."}},
        "required": ["expression"],
    }
    max_chars: int = 200
    max_exponent: int = 64
    max_bits: int = 2048
    max_digits: int = 100
    max_operations: int | None = None

    def run(self, expression: str) -> str:
        expression = expression.strip()
        if not expression:
            raise ToolError("empty expression")
        if len(expression) > self.max_chars:
            raise ToolError(f"expression longer than {self.max_chars} characters")
        try:
            with warnings.catch_warnings():  # "12a" warns before it fails: no stderr noise
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(expression, mode="eval")
        except (SyntaxError, ValueError) as e:  # ValueError: a null byte
            raise ToolError(f"malformed expression: {getattr(e, 'msg', e)}") from None
        if self.max_operations is not None:
            ops = sum(isinstance(n, ast.BinOp) for n in ast.walk(tree))
            if ops > self.max_operations:
                raise ToolError(f"at most {self.max_operations} operation(s) per call")
        return self._format(self._eval(tree.body, expression))

    def _eval(self, node: ast.AST, source: str) -> fractions.Fraction:
        if isinstance(node, ast.Constant):
            return self._literal(node, source)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self._eval(node.operand, source)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            left, right = self._eval(node.left, source), self._eval(node.right, source)
            if isinstance(node.op, ast.Pow):
                out = self._power(left, right)
            elif type(node.op) in _BINOPS:
                try:
                    out = fractions.Fraction(_BINOPS[type(node.op)](left, right))
                except ZeroDivisionError:
                    raise ToolError("division by zero") from None
            else:
                op = type(node.op)
                raise ToolError(_HINTS.get(op, f"operator {op.__name__} is not supported"))
            self._check_size(out)
            return out
        what = type(node).__name__
        raise ToolError(f"unsupported syntax ({what}): only numbers, + - * / // % ** and "
                        "parentheses are allowed")

    def _literal(self, node: ast.Constant, source: str) -> fractions.Fraction:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"unsupported literal {value!r}: only numbers are allowed")
        if isinstance(value, int):
            out = fractions.Fraction(value)
        else:  # exact from the source text: the float 0.1 is not 1/10
            text = ast.get_source_segment(source, node).replace("_", "")
            d = decimal.Decimal(text)
            if abs(d.adjusted()) > self.max_exponent:
                raise ToolError(f"number {text} is out of range")
            out = fractions.Fraction(d)
        self._check_size(out)
        return out

    def _power(self, base: fractions.Fraction, exponent: fractions.Fraction
               ) -> fractions.Fraction:
        if exponent.denominator != 1:
            raise ToolError("only integer exponents are supported (the result must be exact)")
        e = exponent.numerator
        if abs(e) > self.max_exponent:
            raise ToolError(f"exponent {e} is out of range (|exponent| <= {self.max_exponent})")
        bits = max(abs(base.numerator).bit_length(), base.denominator.bit_length())
        # |base**e| has at most bits*|e| bits: refusing (bits-1)*|e| > max_bits keeps what
        # is computed under max_bits + max_exponent bits (+-1, 0 and 1/2 pass at any e);
        # _check_size then refuses a result over max_bits.
        if (bits - 1) * abs(e) > self.max_bits:
            raise ToolError("result too large")
        if base == 0 and e < 0:
            raise ToolError("division by zero")
        return base**e

    def _check_size(self, x: fractions.Fraction) -> None:
        if max(abs(x.numerator).bit_length(), x.denominator.bit_length()) > self.max_bits:
            raise ToolError("result too large")

    def _format(self, x: fractions.Fraction) -> str:
        n, d = x.numerator, x.denominator
        twos = (d & -d).bit_length() - 1
        rest, fives = d >> twos, 0
        while rest % 5 == 0:
            rest, fives = rest // 5, fives + 1
        if d == 1:
            text = str(n)
        elif rest == 1:  # terminating decimal with `scale` digits after the point
            scale = max(twos, fives)
            if scale > self.max_digits:
                raise ToolError(f"result has more than {self.max_digits} digits")
            digits = str(abs(n) * 10**scale // d).rjust(scale + 1, "0")
            text = ("-" if n < 0 else "") + digits[:-scale] + "." + digits[-scale:]
        else:
            text = f"{n}/{d}"
        if sum(c.isdigit() for c in text) > self.max_digits:
            raise ToolError(f"result has more than {self.max_digits} digits")
        return text


# -------------------------------------------------------------------------------- search
def _import_bm25s():
    """bm25s, imported without JAX where JAX is not loaded yet.

    bm25s's ``selection`` module imports ``jax.lax`` when it can (and runs a top-k with it
    at import time) to offer a JAX backend, which a host worker must not load. A None entry
    in ``sys.modules`` makes that import fail, so bm25s falls back to numpy. We only use
    :meth:`bm25s.BM25.get_scores`, which never touches JAX either way.
    """
    if "bm25s" in sys.modules or "jax" in sys.modules:
        import bm25s

        return bm25s
    sys.modules["jax"] = None  # type: ignore[assignment]
    try:
        import bm25s
    finally:
        if "jax" in sys.modules and sys.modules["jax"] is None:
            del sys.modules["jax"]
    return bm25s


@dataclasses.dataclass(frozen=True)
class _Index:
    passages: tuple[dict[str, str], ...]
    retriever: Any  # bm25s.BM25


@functools.lru_cache(maxsize=8)
def _load_index(path: str) -> _Index:
    """The passages of the JSONL corpus at `path` and their BM25 index (built once per
    process and path). Each passage is indexed as ``title + " " + text``."""
    bm25s = _import_bm25s()
    passages = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str)
                                                  for k in ("id", "title", "text"))):
                raise ValueError(f"{path}:{i}: expected an object with string id, title, text")
            passages.append(row)
    if not passages:
        raise ValueError(f"{path}: no passages")
    tokens = bm25s.tokenize([p["title"] + " " + p["text"] for p in passages],
                            stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    return _Index(tuple(passages), retriever)


@register_tool("search")
@dataclasses.dataclass(frozen=True)
class SearchTool(Tool):
    """BM25 search (the ``bm25s`` library, English stopwords, no stemming) over a local
    JSONL corpus of ``{"id", "title", "text"}`` passages, by default the shipped
    ``corpus/facts.jsonl`` (capitals, chemical elements, planets, dates of events).

    Output: the top-`k` passages with a positive score, best first (ties: corpus order),
    one line each, ``[title] text``, the text cut to `max_passage_chars` characters (with
    "..."); ``no results`` when no passage shares a word with the query. The index is
    built at construction and cached per process and corpus path.
    """

    name: ClassVar[str] = "search"
    description: ClassVar[str] = "Search a corpus of short factual passages; returns the best."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, in a few words."},
            "k": {"type": "integer", "description": "How many passages to return (1-5).",
                  "minimum": 1, "maximum": 5, "default": 3},
        },
        "required": ["query"],
    }
    corpus: str = str(DEFAULT_CORPUS)
    max_passage_chars: int = 300
    max_query_chars: int = 300

    def __post_init__(self):
        _load_index(self.corpus)  # fail early on a bad corpus; later calls hit the cache

    def run(self, query: str, k: int = 3) -> str:
        if len(query) > self.max_query_chars:
            raise ToolError(f"query longer than {self.max_query_chars} characters")
        index = _load_index(self.corpus)
        tokens = _import_bm25s().tokenize(query, stopwords="en", show_progress=False,
                                          return_ids=False)[0]
        if not tokens:
            return "no results"
        scores = index.retriever.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:k]
        lines = []
        for i in order:
            if scores[i] <= 0:
                break
            p = index.passages[i]
            text = p["text"]
            if len(text) > self.max_passage_chars:
                text = text[:self.max_passage_chars - 3] + "..."
            lines.append(f"[{p['title']}] {text}")
        return "\n".join(lines) or "no results"


# -------------------------------------------------------------------------------- python
@register_tool("python")
@dataclasses.dataclass(frozen=True)
class PythonTool(Tool):
    """Runs a Python program, stateless, in the sandbox (:func:`lrmjax.rewards.sandbox.
    run_program`, with its isolation and limits from `config`); the program runs as
    ``__main__`` with empty stdin.

    Output: its stdout (cut to `max_output_chars`, with "...[truncated]"), then, on a
    separate line, ``timeout after <t>s`` if it timed out, else the last line of stderr
    (e.g. ``ZeroDivisionError: division by zero``) if it failed, else nothing; ``(no
    output)`` when all of that is empty. A failing program is an observation, not a
    ToolError (only code that is not a string or too long is).

    Construction raises :class:`lrmjax.rewards.sandbox.SandboxUnavailableError` where
    `config` requires isolation the machine cannot give.
    """

    name: ClassVar[str] = "python"
    description: ClassVar[str] = (
        "Run a Python program (fresh process, no state kept); returns what it prints.")
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string",
                                "description": "The program; print what you need to see."}},
        "required": ["code"],
    }
    config: sandbox.SandboxConfig = sandbox.SandboxConfig(
        timeout_s=5.0, cpu_s=5, memory_mb=1024, file_size_mb=1)
    max_code_chars: int = 8000
    max_output_chars: int = 2000

    def __post_init__(self):
        sandbox.isolation_in_force(self.config)  # raises now, not at the first call

    def run(self, code: str) -> str:
        if len(code) > self.max_code_chars:
            raise ToolError(f"code longer than {self.max_code_chars} characters")
        r = sandbox.run_program(code, self.config)
        out = r.stdout
        if len(out) > self.max_output_chars:
            out = out[:self.max_output_chars] + "...[truncated]"
        if r.timed_out:
            status = f"timeout after {self.config.timeout_s:g}s"
        elif r.returncode != 0 or r.error:
            err = r.stderr.strip().splitlines()
            status = err[-1] if err else r.error or f"exit status {r.returncode}"
        else:
            status = ""
        text = out.rstrip("\n") + ("\n" if out.strip() and status else "") + status
        return text if text.strip() else "(no output)"
