"""Tests for lrmjax.envs.tools (calculator, search, python) and lrmjax.envs.tool_calls.

Reference values are written by hand or computed with Python's int arithmetic, never with the
code under test.
"""

import json
import os
import pathlib
import re
import runpy
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from lrmjax.envs import tool_calls, tools
from lrmjax.envs.tool_calls import ToolCall, ToolResult
from lrmjax.envs.tools import ToolError
from lrmjax.rewards import sandbox

REPO = pathlib.Path(__file__).resolve().parent.parent
CALC = tools.make_tool("calculator")


# ---------------------------------------------------------------------------- registry
def test_registry_and_schema():
    assert {"calculator", "search", "python"} <= set(tools.TOOLS)
    with pytest.raises(ValueError, match="unknown tool 'nope'.*calculator.*python.*search"):
        tools.make_tool("nope")
    assert CALC.schema() == {"type": "function", "function": {
        "name": "calculator", "description": CALC.description,
        "parameters": {"type": "object",
                       "properties": {"expression": {"type": "string", "description": (
                           "The expression, e.g. (12.5 + 3) * 4 / 7.")}},
                       "required": ["expression"]}}}
    CALC.schema()["function"]["parameters"]["required"].append("x")  # a copy
    assert CALC.parameters["required"] == ["expression"]
    for name in ("calculator", "search", "python"):
        tool = tools.TOOLS[name]
        assert tool.name == name and "\n" not in tool.description
        assert tool.parameters["type"] == "object"
        assert set(tool.parameters["required"]) <= set(tool.parameters["properties"])


def test_register_tool_refuses_duplicates_and_mismatched_names(monkeypatch):
    monkeypatch.setattr(tools, "TOOLS", dict(tools.TOOLS))
    with pytest.raises(ValueError, match="already registered"):
        tools.register_tool("calculator")(lambda: CALC)
    with pytest.raises(ValueError, match="named 'calculator', registered as 'calc'"):
        tools.register_tool("calc")(tools.CalculatorTool)
    tools.register_tool("calc2")(lambda **kw: tools.CalculatorTool(**kw))
    assert tools.make_tool("calc2")(expression="999+1") == "1000"
    with pytest.raises(ToolError, match="more than 3 digits"):
        tools.make_tool("calc2", max_digits=3)(expression="999+1")


@pytest.mark.parametrize("arguments, match", [
    ({}, "missing required argument.*'expression'"),
    ({"expression": "1", "x": 2}, "unexpected argument.*'x'.*takes 'expression'"),
    ({"expression": 5}, "'expression' must be a string, got int"),
    ({"expression": "1", "self": 1}, "unexpected argument.*'self'"),
    ({"expression": None}, "must be a string, got NoneType"),
    ({"expression": ["1+1"]}, "must be a string, got list"),
])
def test_arguments_are_checked_against_the_schema(arguments, match):
    with pytest.raises(ToolError, match=match):
        CALC(**arguments)


# -------------------------------------------------------------------------- calculator
@pytest.mark.parametrize("expression, expected", [
    ("12*34", "408"),
    (" 1 + 2 ", "3"),
    ("2+3*4", "14"),
    ("(2+3)*4", "20"),
    ("10-4-3", "3"),
    ("2**3**2", "512"),  # right-associative
    ("-3+5", "2"),
    ("--3", "3"),
    ("+7", "7"),
    ("-(2+3)", "-5"),
    ("-2**2", "-4"),  # ** binds tighter than unary minus
    ("(-2)**3", "-8"),
    ("7/3", "7/3"),
    ("-1/6", "-1/6"),
    ("22/7-3", "1/7"),
    ("6/4", "1.5"),
    ("1/8", "0.125"),
    ("-3/4", "-0.75"),
    ("1/1024", "0.0009765625"),
    ("10/5", "2"),
    ("1/3*3", "1"),
    ("2**-3", "0.125"),
    ("3**-2", "1/9"),
    ("(2/3)**2", "4/9"),
    ("0.1+0.2", "0.3"),  # exact, unlike floats
    ("0.1*3", "0.3"),
    ("1.5*4", "6"),
    (".5+.25", "0.75"),
    ("0.000001*2", "0.000002"),
    ("1e3+1", "1001"),
    ("2.5e-1", "0.25"),
    ("1_000*3", "3000"),
    ("7//2", "3"),
    ("-7//2", "-4"),  # floor, as in Python
    ("7%3", "1"),
    ("-7%3", "2"),
    ("7%-3", "-2"),
    ("7.5//2", "3"),
    ("7.5%2", "1.5"),
    ("0*5", "0"),
    ("-0", "0"),
    ("123456789*987654321", str(123456789 * 987654321)),
    ("2**64", str(2**64)),
    ("-2**63", str(-(2**63))),
    ("(9**9)**9", str(387420489**9)),
    ("99999999999999999999*99999999999999999999", str((10**20 - 1) ** 2)),
    ("(2**64+1)/(2**64)", "1.0000000000000000000542101086242752217003726400434970855712890625"),
    ("3**64 % 1000007", str(3**64 % 1000007)),
    ("(10**30 + 7) // 3", str((10**30 + 7) // 3)),
])
def test_calculator_is_exact(expression, expected):
    assert CALC(expression=expression) == expected


@pytest.mark.parametrize("expression, match", [
    ("9**9**9", "exponent 387420489 is out of range"),
    ("2**65", "exponent 65 is out of range"),
    ("10**-65", "exponent -65 is out of range"),
    ("10**(10**10)", "out of range"),
    ("(2**64)**64", "too large"),
    ("(2**32)**60*(2**32)**60", "too large"),  # each factor fits, their product does not
    ("10**64*10**64", "more than 100 digits"),
    ("1/2**64/2**64", "more than 100 digits"),
    ("1e65", "out of range"),
    ("1e999999999", "out of range"),
    ("1e-999999999", "out of range"),
    ("1+" * 150 + "1", "longer than 200 characters"),
    ("4**0.5", "integer exponents"),
    ("2**(1/2)", "integer exponents"),
    ("1/0", "division by zero"),
    ("1//0", "division by zero"),
    ("1%0", "division by zero"),
    ("0**-1", "division by zero"),
    ("1/(2-2)", "division by zero"),
    ("1/0.0", "division by zero"),
    ("2^3", r"write \*\* for powers"),
    ("1<<2", "operator LShift"),
    ("1&2", "operator BitAnd"),
    ("~1", "unsupported syntax"),
    ("not 1", "unsupported syntax"),
    ("__import__('os')", r"unsupported syntax \(Call\)"),
    ("__import__('os').system('true')", "unsupported syntax"),
    ("().__class__", r"unsupported syntax \(Attribute\)"),
    ("(1).real", "unsupported syntax"),
    ("lambda: 1", r"unsupported syntax \(Lambda\)"),
    ("x", r"unsupported syntax \(Name\)"),
    ("abs(-1)", "unsupported syntax"),
    ("[1, 2]", "unsupported syntax"),
    ("(1, 2)", "unsupported syntax"),
    ("{}", "unsupported syntax"),
    ("1 if 1 else 2", "unsupported syntax"),
    ("1 < 2", "unsupported syntax"),
    ("2 and 3", "unsupported syntax"),
    ("(a := 1)", "unsupported syntax"),
    ("[x for x in ()]", "unsupported syntax"),
    ("f'{1}'", "unsupported syntax"),
    ("'a'*3", "unsupported literal"),
    ("b'1'", "unsupported literal"),
    ("True+1", "unsupported literal"),
    ("None", "unsupported literal"),
    ("1j", "unsupported literal"),
    ("...", "unsupported literal"),
    ("", "empty expression"),
    ("   ", "empty expression"),
    ("1+", "malformed expression"),
    ("12*34)", "malformed expression"),
    ("import os", "malformed expression"),
    ("1\x00", "malformed expression"),
])
def test_calculator_guards(expression, match):
    start = time.perf_counter()
    with pytest.raises(ToolError, match=match):
        CALC(expression=expression)
    assert time.perf_counter() - start < 0.05  # refused before any large computation


def test_calculator_limits_are_settings():
    small = tools.make_tool("calculator", max_chars=6, max_exponent=3, max_digits=4)
    assert small(expression="9**3") == "729"
    with pytest.raises(ToolError, match="exponent 4 is out of range"):
        small(expression="2**4")
    with pytest.raises(ToolError, match="longer than 6"):
        small(expression="1+2+345")
    with pytest.raises(ToolError, match="more than 4 digits"):
        small(expression="9999+1")


def test_calculator_is_fast():
    start = time.perf_counter()
    for _ in range(200):
        CALC(expression="(123456789*987654321 - 7/3)**3 // 11 + 0.5 % 3")
    assert (time.perf_counter() - start) / 200 < 2e-3


# ------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def search():
    return tools.make_tool("search")


@pytest.mark.parametrize("query, title", [
    ("What is the capital of France?", "France"),
    ("capital of Japan", "Japan"),
    ("Which country has Canberra as its capital?", "Australia"),
    ("What is the atomic number of iron?", "Iron (element)"),
    ("Which element has the symbol Au?", "Gold (element)"),
    ("Mercury chemical element", "Mercury (element)"),
    ("Mercury planet Sun", "Mercury (planet)"),
    ("Which planet is fourth from the Sun?", "Mars (planet)"),
    ("When did the Berlin Wall fall?", "Fall of the Berlin Wall"),
    ("year of the Apollo 11 Moon landing", "Apollo 11 Moon landing"),
    ("Who discovered penicillin?", "Discovery of penicillin"),
])
def test_search_retrieves_the_right_passage_first(search, query, title):
    first = search(query=query).splitlines()[0]
    assert first.startswith(f"[{title}] "), first


def test_search_output_format_and_k(search):
    out = search(query="capital of France", k=1)
    assert out == "[France] Paris is the capital of France, a country in Europe."
    assert len(search(query="capital").splitlines()) == 3  # the default k
    assert len(search(query="capital", k=5).splitlines()) == 5
    assert search(query="zzzz qqqq") == "no results"
    assert search(query="the of and") == "no results"  # stopwords only
    assert search(query="") == "no results"
    short = tools.make_tool("search", max_passage_chars=20)
    assert short(query="capital of France", k=1) == "[France] Paris is the capi..."


@pytest.mark.parametrize("arguments, match", [
    ({"query": "x", "k": 0}, "'k' must be >= 1"),
    ({"query": "x", "k": 6}, "'k' must be <= 5"),
    ({"query": "x", "k": "3"}, "'k' must be an integer, got str"),
    ({"query": "x", "k": True}, "got bool"),
    ({"query": 3}, "'query' must be a string"),
    ({"query": "a" * 301}, "query longer than 300"),
    ({"k": 2}, "missing required argument"),
])
def test_search_bad_input(search, arguments, match):
    with pytest.raises(ToolError, match=match):
        search(**arguments)


def test_search_custom_corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"id": "a", "title": "Alpha", "text": "The first letter is alpha."},
            {"id": "b", "title": "Beta", "text": "The second letter is beta."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    tool = tools.make_tool("search", corpus=str(path))
    assert tool(query="second letter", k=1) == "[Beta] The second letter is beta."
    assert tool(query="letter", k=5).count("\n") == 1  # only 2 passages
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "title": "A", "text": "x"}\n{"id": "b", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object"):
        tools.make_tool("search", corpus=str(bad))


def test_shipped_corpus_is_what_its_generator_writes():
    generator = runpy.run_path(str(tools.CORPUS_DIR / "make_facts.py"))
    assert tools.DEFAULT_CORPUS.read_text(encoding="utf-8") == generator["render"]()
    rows = [json.loads(line) for line in tools.DEFAULT_CORPUS.read_text().splitlines()]
    assert 100 <= len(rows) <= 200
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(set(r) == {"id", "title", "text"} and r["text"].isascii() for r in rows)


def test_search_runs_without_importing_jax():
    """bm25s imports jax.lax when it can; a host worker building the index must not."""
    code = ("import sys\nfrom lrmjax.envs.tools import make_tool\n"
            "out = make_tool('search')(query='atomic number of iron', k=1)\n"
            "assert out.startswith('[Iron (element)]'), out\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------ python
ISOLATED = sandbox.probe_isolation().isolated
CONFIG = sandbox.SandboxConfig(timeout_s=1.0, cpu_s=2, memory_mb=512, file_size_mb=1,
                               allow_unisolated=True)


@pytest.fixture(scope="module")
def python():
    return tools.make_tool("python", config=CONFIG, max_output_chars=20)


def test_python_prints_and_truncates(python):
    assert python(code="print(6 * 7)") == "42"
    out = python(code="import sys\nprint(__name__)\nprint('x' * 100)\nsys.exit(0)")
    assert out == "__main__\n" + "x" * 11 + "...[truncated]"


def test_python_reports_the_exception(python):
    assert python(code="print('before')\n1/0") == (
        "before\nZeroDivisionError: division by zero")
    assert python(code="pass") == "(no output)"


def test_python_timeout(python):
    start = time.monotonic()
    assert python(code="print('hi', flush=True)\nwhile True: pass") == "hi\ntimeout after 1s"
    assert time.monotonic() - start < 5


def test_python_bad_input_runs_nothing(python):
    with pytest.raises(ToolError, match="'code' must be a string"):
        python(code=b"print(1)")
    with pytest.raises(ToolError, match="code longer than 8000"):
        python(code="#" * 8001)


@pytest.mark.skipif(not ISOLATED, reason="sandbox isolation unavailable here")
def test_python_cannot_write_outside_its_tmp(python):
    # Not under /tmp: the run sees its own tmpfs there (and a checkout may itself be under
    # /tmp, as CI's is). World-writable, in a folder every uid can reach, so only the
    # read-only mount stops the run's uid.
    def reachable(d):
        parts = pathlib.Path(os.path.realpath(d))
        return (not str(parts).startswith("/tmp/") and os.access(parts, os.W_OK)
                and all(os.stat(p).st_mode & stat.S_IXOTH for p in [parts, *parts.parents]))

    host_dir = next((d for d in (REPO, "/var/cache", "/opt", "/srv", "/") if reachable(d)),
                    None)
    if host_dir is None:
        pytest.skip("no folder outside /tmp that every uid can reach")
    outside = pathlib.Path(tempfile.mkdtemp(prefix=".lrmjax_escape_probe_", dir=host_dir))
    try:
        os.chmod(outside, 0o777)
        target = outside / "escaped.txt"
        out = python(code=f"open({str(target)!r}, 'w').write('x')")
        assert out.startswith("OSError: [Errno 30] Read-only file system"), out
        assert not target.exists()
    finally:
        shutil.rmtree(outside)


def test_python_refuses_to_run_unisolated_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "probe_isolation", lambda python=None: sandbox.Isolation(
        sandbox.NONE, sys.executable, "test: no isolation"))
    with pytest.raises(sandbox.SandboxUnavailableError, match="test: no isolation"):
        tools.make_tool("python")  # at construction, before any call
    tools.make_tool("python", config=CONFIG)


def test_run_program_gives_stdin_and_whole_stdout():
    program = "import sys\nprint(sys.stdin.read()[::-1])\nprint('y' * 5000)"
    r = sandbox.run_program(program, CONFIG, stdin="abc")
    assert r.stdout == "cba\n" + "y" * 5000 + "\n"
    assert (r.passed, r.returncode, r.timed_out, r.error) == ((), 0, False, "")
    with pytest.raises(TypeError):
        sandbox.run_program(b"print(1)", CONFIG)


# ------------------------------------------------------------------------- tool calls
TOOLSET = {"calculator": CALC}


def _qwen(obj) -> str:
    body = obj if isinstance(obj, str) else json.dumps(obj)
    return f"<tool_call>\n{body}\n</tool_call>"


def test_qwen_call_parsed_run_and_formatted():
    text = "Let me compute.\n" + _qwen({"name": "calculator",
                                        "arguments": {"expression": "12*34"}})
    calls = tool_calls.parse_tool_calls(text, "qwen", TOOLSET)
    assert calls == [ToolCall("calculator", {"expression": "12*34"})]
    results = tool_calls.run_tool_calls(calls, TOOLSET)
    assert results == [ToolResult("calculator", "408", True)]
    assert tool_calls.format_results(results, "qwen") == (
        "\n<tool_response>\n408\n</tool_response>")
    assert tool_calls.tool_messages(results) == [
        {"role": "tool", "name": "calculator", "content": "408"}]


def test_qwen_several_calls_in_order():
    text = (_qwen({"name": "calculator", "arguments": {"expression": "1+1"}}) + " then "
            + _qwen('{"name": "calculator", "arguments": {"expression": "1/0"}}')
            + _qwen({"name": "calculator", "arguments": {"expression": "2**10"}}))
    results = tool_calls.run_tool_calls(tool_calls.parse_tool_calls(text, "qwen", TOOLSET),
                                        TOOLSET)
    assert [r.content for r in results] == ["2", "error: division by zero", "1024"]
    assert [r.ok for r in results] == [True, False, True]
    assert tool_calls.format_results(results, "qwen") == (
        "\n<tool_response>\n2\n</tool_response>"
        "\n<tool_response>\nerror: division by zero\n</tool_response>"
        "\n<tool_response>\n1024\n</tool_response>")


@pytest.mark.parametrize("body, name, match", [
    ('{"name": "calculator", "arguments": {"expression": "1"}', "", "malformed JSON"),
    ("calculator(1+1)", "", "malformed JSON"),
    ("", "", "malformed JSON"),
    ("[" * 2000 + "]" * 2000, "", "malformed JSON in tool call: nested too deeply"),
    ('["calculator", "1"]', "", "must be a JSON object"),
    ('{"arguments": {"expression": "1"}}', "", 'no "name"'),
    ('{"name": 3, "arguments": {}}', "", 'no "name"'),
    ('{"name": "rm", "arguments": {}}', "rm", "unknown tool 'rm'; available tools: calculator"),
    ('{"name": "calculator", "arguments": "1+1"}', "calculator", '"arguments" must be a JSON'),
    ('{"name": "calculator", "arguments": ["1+1"]}', "calculator", "got list"),
    ('{"name": "calculator", "arguments": {"expression": "' + "1" * 5000 + '"}}', "",
     "longer than 4096"),
])
def test_qwen_malformed_calls_are_error_results(body, name, match):
    calls = tool_calls.parse_tool_calls(_qwen(body), "qwen", TOOLSET)
    assert len(calls) == 1 and calls[0].name == name
    assert calls[0].error is not None
    [result] = tool_calls.run_tool_calls(calls, TOOLSET)
    assert not result.ok and result.content.startswith("error: ")
    assert re.search(match, result.content), result.content


def test_qwen_arguments_absent_or_wrong_reach_the_tool_as_errors():
    text = _qwen('{"name": "calculator"}') + _qwen(
        '{"name": "calculator", "arguments": {"expr": "1"}}')
    calls = tool_calls.parse_tool_calls(text, "qwen", TOOLSET)
    assert calls == [ToolCall("calculator", {}), ToolCall("calculator", {"expr": "1"})]
    contents = [r.content for r in tool_calls.run_tool_calls(calls, TOOLSET)]
    assert contents == ["error: calculator: missing required argument(s) 'expression'",
                        "error: calculator: unexpected argument(s) 'expr'; it takes "
                        "'expression'"]


@pytest.mark.parametrize("text", [
    "The answer is 408.",
    "",
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1"}}',  # never closed
    '</tool_call>{"name": "calculator"}<tool_call>',
    "<calculator>1+1</calculator>",  # the other format
])
def test_qwen_no_call(text):
    assert tool_calls.parse_tool_calls(text, "qwen", TOOLSET) == []


def test_compact_calls():
    toolset = {"calculator": CALC, "search": tools.make_tool("search")}
    text = "x<calculator>12*34</calculator>=408\nso <search>capital of France</search>"
    calls = tool_calls.parse_tool_calls(text, "compact", toolset)
    assert calls == [ToolCall("calculator", {"expression": "12*34"}),
                     ToolCall("search", {"query": "capital of France"})]
    results = tool_calls.run_tool_calls(calls, toolset, max_chars=30)
    assert tool_calls.format_results(results, "compact") == (
        "=408\n=[France] Paris is the capit...\n")
    assert tool_calls.format_results(tool_calls.run_tool_calls(
        tool_calls.parse_tool_calls("<calculator>1/0</calculator>", "compact", toolset),
        toolset), "compact") == "=error: division by zero\n"
    assert tool_calls.format_results(results, "compact", width=6) == (
        "=408   \n=[France] Paris is the capit...\n")
    assert tool_calls.compact_result("12", 4) == "=12  \n"
    with pytest.raises(ValueError, match="'compact' format only"):
        tool_calls.format_results(results, "qwen", width=6)


@pytest.mark.parametrize("text", [
    "12*34 is big",
    "<calculator>12*34",  # never closed
    "<calculator>12*34</search>",
    "<python>print(1)</python>",  # not in this episode's tools
    "<Calculator>1</Calculator>",
    '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>',
])
def test_compact_no_call(text):
    assert tool_calls.parse_tool_calls(text, "compact", TOOLSET) == []


def test_compact_argument_is_raw_and_capped():
    [call] = tool_calls.parse_tool_calls("<calculator> 1\n+2 </calculator>", "compact", TOOLSET)
    assert call == ToolCall("calculator", {"expression": " 1\n+2 "})
    [long] = tool_calls.parse_tool_calls("<calculator>" + "1" * 11 + "</calculator>",
                                         "compact", TOOLSET, max_call_chars=10)
    assert long.error == "argument longer than 10 characters"


def test_run_tool_calls_caps_calls_per_turn_and_result_length():
    text = "".join(f"<calculator>{i}*10**20</calculator>" for i in range(1, 6))
    calls = tool_calls.parse_tool_calls(text, "compact", TOOLSET)
    results = tool_calls.run_tool_calls(calls, TOOLSET, max_calls=2, max_chars=10)
    assert [r.content for r in results] == (
        ["1000000...", "2000000..."]
        + ["error: ..."] * 3)
    assert [r.ok for r in results] == [True, True, False, False, False]
    results = tool_calls.run_tool_calls(calls, TOOLSET, max_calls=2)
    assert results[2].content == "error: too many tool calls in one turn (at most 2)"


def test_run_tool_calls_reports_a_call_to_a_missing_tool():
    [result] = tool_calls.run_tool_calls([ToolCall("search", {"query": "x"})], TOOLSET)
    assert result == ToolResult("search", "error: unknown tool 'search'", False)


def test_stop_strings_and_formats():
    assert tool_calls.stop_strings("qwen", ["calculator"]) == ("</tool_call>",)
    assert tool_calls.stop_strings("compact", ["search", "calculator"]) == (
        "</calculator>", "</search>")
    with pytest.raises(ValueError, match="unknown tool-call format 'xml'"):
        tool_calls.parse_tool_calls("", "xml", TOOLSET)
    with pytest.raises(ValueError, match="cannot be used as compact tags"):
        tool_calls.stop_strings("compact", ["a b"])
    assert tool_calls.parse_tool_calls("<x>1</x>", "compact", {}) == []
