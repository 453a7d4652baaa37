"""The tool calls a model writes: parse them, run them, format the results it reads next.

Two formats (`fmt`):

* ``"qwen"`` (Qwen2.5 / Qwen3 / Hermes chat templates): each call is a JSON object in its
  own block, several blocks per turn allowed::

      <tool_call>
      {"name": "calculator", "arguments": {"expression": "12*34"}}
      </tool_call>

  ``"arguments"`` is a JSON object (absent means ``{}``); other keys are ignored. The
  results go back as ``tool`` messages (:func:`tool_messages`, for a chat template), or as
  the text the Qwen templates render for them (:func:`format_results`).
* ``"compact"``, for tiny character-level models with a short budget: ``<NAME>ARG</NAME>``,
  e.g. ``<calculator>12*34</calculator>``, where NAME is one of the given tools and ARG, the
  raw text between the tags (not stripped, not JSON), is the value of the tool's first
  required parameter (``expression``, ``query``, ``code``); its other parameters take their
  defaults. Each result is one line ``=<result>\\n`` (``=408\\n``), so after the call
  the model reads ``...<calculator>12*34</calculator>=408\\n`` and goes on.

In both formats a turn ends at a call's closing tag (:func:`stop_strings`); an opening tag
never closed (the model ran out of budget) is not a call. Parsing never raises on model
text: a malformed call (bad JSON, no name, an unknown tool, arguments not an object, a
call longer than `max_call_chars`) is a :class:`ToolCall` with ``error`` set, which
:func:`run_tool_calls` reports as ``error: <why>`` in its place. Typical use::

    calls = parse_tool_calls(completion, "qwen", tools)
    results = run_tool_calls(calls, tools, max_calls=4, max_chars=1000)
    observation = format_results(results, "qwen")
    errors = sum(not r.ok for r in results)

This module imports no JAX (it runs in host worker processes).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lrmjax.envs.tools import Tool, ToolError

FORMATS = ("qwen", "compact")
QWEN_OPEN, QWEN_CLOSE = "<tool_call>", "</tool_call>"
_QWEN_CALL = re.compile(re.escape(QWEN_OPEN) + r"(.*?)" + re.escape(QWEN_CLOSE), re.DOTALL)
# A compact tool name must be usable as a tag.
_TAG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One call as parsed. ``error`` is set (and the call is not run) when it is malformed;
    ``name`` is then whatever could be read ("" if none)."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What one call gave: ``content`` is the observation text (``error: ...`` when not
    ``ok``: a malformed call, a ToolError, or a call past the per-turn maximum)."""

    name: str
    content: str
    ok: bool


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown tool-call format {fmt!r}; expected one of {FORMATS}")


def _check_tag_names(names: Iterable[str]) -> list[str]:
    names = sorted(names)
    bad = [n for n in names if not _TAG_NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"tool names {bad} cannot be used as compact tags")
    return names


def stop_strings(fmt: str, tool_names: Iterable[str]) -> tuple[str, ...]:
    """The strings that end a model turn at a tool call (the sampler stops after them):
    ``("</tool_call>",)`` for "qwen"; ``("</calculator>", ...)``, one per tool in sorted
    order, for "compact"."""
    _check_format(fmt)
    if fmt == "qwen":
        return (QWEN_CLOSE,)
    return tuple(f"</{n}>" for n in _check_tag_names(tool_names))


def parse_tool_calls(text: str, fmt: str, tools: Mapping[str, Tool],
                     max_call_chars: int = 4096) -> list[ToolCall]:
    """The tool calls in `text` (a model's turn), in order of appearance.

    Args:
      text: the model's output for this turn.
      fmt: "qwen" or "compact" (see the module docstring).
      tools: the tools this episode offers, by name. Only they count: in "qwen" another
        name is an error call; in "compact" other tags are plain text. "compact" reads
        each tool's first required parameter from its schema.
      max_call_chars: a call's body (qwen: the JSON; compact: ARG) longer than this is an
        error call.

    Returns:
      One ToolCall per closed call ([] if none); malformed ones have ``error`` set.

    Raises:
      ValueError: an unknown `fmt`, or (compact) a tool name that is not a valid tag. Never
        for anything in `text`.
    """
    _check_format(fmt)
    if fmt == "qwen":
        return [_parse_qwen(m.group(1), tools, max_call_chars)
                for m in _QWEN_CALL.finditer(text)]
    names = _check_tag_names(tools)
    if not names:
        return []
    pattern = re.compile(r"<(" + "|".join(map(re.escape, names)) + r")>(.*?)</\1>", re.DOTALL)
    calls = []
    for m in pattern.finditer(text):
        name, arg = m.group(1), m.group(2)
        required = tools[name].parameters.get("required", [])
        if len(arg) > max_call_chars:
            calls.append(ToolCall(name, {}, f"argument longer than {max_call_chars} characters"))
        elif not required:
            calls.append(ToolCall(name, {}, None if not arg else
                                  f"{name} takes no argument in this format"))
        else:
            calls.append(ToolCall(name, {required[0]: arg}))
    return calls


def _parse_qwen(body: str, tools: Mapping[str, Tool], max_call_chars: int) -> ToolCall:
    if len(body) > max_call_chars:
        return ToolCall("", {}, f"tool call longer than {max_call_chars} characters")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall("", {}, f"malformed JSON in tool call: {e.msg} (at character {e.pos})")
    except RecursionError:
        return ToolCall("", {}, "malformed JSON in tool call: nested too deeply")
    except ValueError as e:
        return ToolCall("", {}, f"malformed JSON in tool call: {e}")
    if not isinstance(obj, dict):
        return ToolCall("", {}, 'a tool call must be a JSON object {"name": ..., '
                                '"arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str):
        return ToolCall("", {}, 'the tool call has no "name" string')
    if name not in tools:
        return ToolCall(name, {}, f"unknown tool {name!r}; available tools: "
                                  f"{', '.join(sorted(tools)) or 'none'}")
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return ToolCall(name, {}, f'"arguments" must be a JSON object, got '
                                  f"{type(arguments).__name__}")
    return ToolCall(name, arguments)


def _truncate(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max(0, max_chars - 3)] + "..."


def run_tool_calls(calls: Sequence[ToolCall], tools: Mapping[str, Tool], *,
                   max_calls: int = 4, max_chars: int = 1000) -> list[ToolResult]:
    """Runs `calls` in order; one ToolResult per call.

    Args:
      calls: from :func:`parse_tool_calls` (malformed ones are reported, not run).
      tools: the tools by name (a call to another name is an error result).
      max_calls: the first `max_calls` calls run; each later one is an error result.
      max_chars: each result's content is cut to this many characters (ending "...").

    Returns:
      A ToolResult per call, ``ok`` False (content ``error: <message>``) for a malformed
      call, a ToolError, or a call past `max_calls`. Other exceptions from a tool (bugs,
      a sandbox that cannot isolate) propagate.
    """
    results = []
    for i, call in enumerate(calls):
        if i >= max_calls:
            content, ok = f"error: too many tool calls in one turn (at most {max_calls})", False
        elif call.error is not None:
            content, ok = f"error: {call.error}", False
        elif call.name not in tools:  # a call not from parse_tool_calls with these tools
            content, ok = f"error: unknown tool {call.name!r}", False
        else:
            try:
                content, ok = tools[call.name](**call.arguments), True
            except ToolError as e:
                content, ok = f"error: {e}", False
        results.append(ToolResult(call.name, _truncate(content, max_chars), ok))
    return results


def format_results(results: Sequence[ToolResult], fmt: str, width: int = 0) -> str:
    """The text the model reads after its call(s).

    "qwen": what the Qwen2.5/Qwen3 chat templates render for consecutive ``tool``
    messages between ``<|im_start|>user`` and ``<|im_end|>``: each result as
    ``\\n<tool_response>\\n{content}\\n</tool_response>``. "compact": ``={content}\\n`` per
    result, the content left-aligned in a field of `width` characters (padded with spaces;
    longer content as it is; 0 = no padding: `compact_result`).
    """
    _check_format(fmt)
    if fmt == "qwen":
        if width:
            raise ValueError(f"a result width ({width}) applies to the 'compact' format only")
        return "".join(f"\n<tool_response>\n{r.content}\n</tool_response>" for r in results)
    return "".join(compact_result(r.content, width) for r in results)


def compact_result(content: str, width: int = 0) -> str:
    """One result as the compact format writes it: ``={content}\\n``, the content padded with
    spaces on the right to `width` characters. A character model copies a result by its
    distance back; padded, every result's digit k sits the same distance before the line
    after it, whatever the result's length. `tool_arithmetic`'s demonstrations write their
    results the same way (tests/test_tasks_tool_arithmetic.py checks they match)."""
    return f"={content.ljust(width)}\n"


def tool_messages(results: Sequence[ToolResult]) -> list[dict[str, str]]:
    """Chat messages for the results (``{"role": "tool", "name", "content"}``, in order),
    for ``tokenizer.apply_chat_template``."""
    return [{"role": "tool", "name": r.name, "content": r.content} for r in results]
