"""`tools`: an episode in which the model may call tools before it answers.

Each model turn either calls tools (in the configured format, `envs.tool_calls`) and reads
their results as the observation, or answers: a turn without a tool call ends the episode,
and the run's reward functions score that final turn (for a task: its verifier). A malformed
call is answered with an `error: ...` observation, not an end. Counts per step:
`tool_calls`, `tool_errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrmjax.envs import tool_calls as calls_lib
from lrmjax.envs.base import Environment, StepResult, register_env
from lrmjax.envs.tools import make_tool


@register_env("tools")
class ToolEnv(Environment):
    """Tool use until an answer.

    Args:
      tools: registered tool names (`envs.tools.TOOLS`).
      fmt: 'compact' (`<calculator>12*34</calculator>` -> `=408\\n`, for character models) or
        'qwen' (`<tool_call>{json}</tool_call>`, for chat models).
      max_turns: model turns per episode (the last one should answer).
      max_calls: tool calls run per turn (more are answered with an error).
      max_result_chars: each result is cut to this many characters.
      tool_options: {tool name: constructor kwargs}, e.g. {'calculator': {'max_operations': 1}}.
      result_width: 'compact' only: each result left-aligned in a field of this many
        characters (`tool_calls.compact_result`), so that a character model copies every
        result from the same distance back; 0 (the default) writes results as they are.
    """

    def __init__(self, tools: Sequence[str] = ("calculator",), fmt: str = "compact",
                 max_turns: int = 3, max_calls: int = 2, max_result_chars: int = 200,
                 tool_options: Mapping[str, Mapping[str, Any]] | None = None,
                 result_width: int = 0):
        if fmt not in calls_lib.FORMATS:
            raise ValueError(f"ToolEnv: fmt must be one of {calls_lib.FORMATS}, got {fmt!r}")
        if isinstance(result_width, bool) or not isinstance(result_width, int) or (
                result_width < 0):
            raise ValueError(f"ToolEnv: result_width must be an int >= 0, got {result_width!r}")
        if result_width and fmt != "compact":
            raise ValueError(f"ToolEnv: result_width ({result_width}) applies to fmt='compact' "
                             f"only, not {fmt!r}")
        if max_turns < 1 or max_calls < 1:
            raise ValueError(f"ToolEnv: need max_turns >= 1 and max_calls >= 1, got "
                             f"{max_turns}, {max_calls}")
        options = dict(tool_options or {})
        unknown = set(options) - set(tools)
        if unknown:
            raise ValueError(f"ToolEnv: tool_options for tools not in use: {sorted(unknown)}")
        self.tool_map = {name: make_tool(name, **dict(options.get(name, {})))
                         for name in tools}
        self.fmt, self.max_turns = fmt, int(max_turns)
        self.max_calls, self.max_result_chars = int(max_calls), int(max_result_chars)
        self.result_width = result_width

    def stop_strings(self) -> tuple[str, ...]:
        """Strings that end a model turn at a tool call."""
        return calls_lib.stop_strings(self.fmt, self.tool_map)

    def tools(self) -> list[dict]:
        return [t.schema() for t in self.tool_map.values()]

    def step(self, action: str) -> StepResult:
        calls = calls_lib.parse_tool_calls(action, self.fmt, self.tool_map)
        if not calls:
            return StepResult(done=True, info={"tool_calls": 0, "tool_errors": 0})
        results = calls_lib.run_tool_calls(calls, self.tool_map, max_calls=self.max_calls,
                                           max_chars=self.max_result_chars)
        return StepResult(
            observation=calls_lib.format_results(results, self.fmt, self.result_width),
            info={"tool_calls": len(calls), "tool_errors": sum(not r.ok for r in results),
                  "messages": calls_lib.tool_messages(results)})
