"""Code reward: run the completion's program against unit tests in the sandbox.

Program: the last ```` ```python ```` (or ```` ```py ````) fenced block of the completion;
failing that the last unlabelled ```` ``` ```` block; failing that the whole completion.

Metadata:
  ``metadata["tests"]``: either a list of str, each a test, or one str, a single test. A
    test is one or more assertions ``assert name(<literals>) == <literal>`` (e.g.
    ``assert add(2, 3) == 5``; either side of ``==`` may hold the call; keyword arguments
    allowed; literals as ``ast.literal_eval`` reads them), and passes iff every one holds.
    Anything else (``assert f(x) > 0``, ``assert ok``, statements, calls with computed
    arguments) raises ValueError naming the row and the test before any program runs: a
    dataset loader that emits code rows must produce this shape (or extend the parser in
    :mod:`lrmjax.rewards.sandbox_verdict`).
    Or standard-input tests (competitive-programming format): a list of
    ``{"input": str, "output": str}``; the program runs once per case as ``__main__`` with
    the input on stdin, and the case passes iff it exits 0 within the wall clock and its
    whole stdout matches ``output`` under ``metadata["compare"]``: ``"whitespace"``
    (default: the same whitespace-separated tokens), ``"exact"`` (identical text) or
    ``"float"`` (tokens, numbers equal within ``metadata["float_tol"]``, default 1e-6,
    absolute or relative). Output is judged in this process; a program that ends with
    ``os._exit`` without flushing loses its buffered output.
  ``metadata["setup"]`` (optional str): code prepended to the program (imports, helpers).

The program runs with ``__name__ == "solution"`` and stdin = /dev/null. The test's calls run
after it in its namespace; each result comes back to this process as plain data (exact
builtin types only: a subclass, e.g. an int with a forged ``__eq__``, fails its test) and is
compared here with the expected value, which never reaches the program. See
:mod:`lrmjax.rewards.sandbox` for what the verdict does and does not guarantee.

Isolation: programs run only at the sandbox's level "full" (network, PID, IPC and mount
namespaces, a private size-capped tmpfs as the only writable storage, the rest of the
filesystem read-only, and a fresh unprivileged uid per run; needs root and util-linux
``unshare``/``setpriv``). Where the
machine cannot give it, the reward raises RuntimeError naming the missing capability before
any program runs, unless ``allow_unisolated=True`` (config ``reward.sandbox.allow_unisolated``;
the trainer calls :func:`check_sandbox` when it builds the rewards, so a run refuses to start
rather than have the reward pool count every row as an error). Then programs run
as plain child processes with the caller's uid, network and filesystem and no PID
namespace: resource
limits, the wall clock and the verdict channel still hold, but a hostile program can reach
the network, the caller's files and processes, and leave processes behind. The level in force
is logged once per process and reported per row as the component ``sandbox_isolated``.

Modes: ``"all"`` (default): 1.0 iff every test passes; ``"fraction"``: the fraction that
pass. ``get("code", mode="fraction", timeout_s=2.0)`` binds options.
"""

from __future__ import annotations

import re

from lrmjax.rewards.base import RewardResult, check_batch, register, require
from lrmjax.rewards.sandbox import (
    Isolation,
    SandboxConfig,
    SandboxUnavailableError,
    isolation_in_force,
    run_io_tests,
    run_tests,
)
from lrmjax.rewards.sandbox_verdict import check_compare, parse_test

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_program(text: str) -> str:
    """The program in a completion: last python fence, else last bare fence, else all."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    bare = [body for lang, body in blocks if not lang]
    if bare:
        return bare[-1]
    return text


def _is_io_case(t: object) -> bool:
    return (isinstance(t, dict) and set(t) == {"input", "output"}
            and all(isinstance(v, str) for v in t.values()))


def parse_tests(raw: object, row: int) -> list[str] | list[tuple[str, str]]:
    """metadata["tests"] -> assertion test blocks (each checked to be of the accepted shape)
    or standard-input cases ``(input, expected output)``.

    Raises:
      ValueError naming the row (and the test): a bad type, no tests, a mix of kinds, or an
      assertion test not made of ``assert name(<literals>) == <literal>`` assertions.
    """
    if isinstance(raw, (list, tuple)) and raw and all(_is_io_case(t) for t in raw):
        return [(t["input"], t["output"]) for t in raw]
    if isinstance(raw, str):
        tests = [raw]
    elif isinstance(raw, (list, tuple)) and all(isinstance(t, str) for t in raw):
        tests = list(raw)
    else:
        raise ValueError(f"reward 'code': row {row}: metadata['tests'] must be a str, a list "
                         "of str, or a list of {'input': str, 'output': str}, got "
                         f"{type(raw).__name__}" + (" (mixed or malformed items)"
                                                    if isinstance(raw, (list, tuple)) else ""))
    if not tests:
        raise ValueError(f"reward 'code': row {row}: metadata['tests'] is empty")
    for i, test in enumerate(tests):
        try:
            parse_test(test)
        except ValueError as e:
            raise ValueError(f"reward 'code': row {row}: metadata['tests'][{i}]: {e}") from None
    return tests


def check_sandbox(allow_unisolated: bool = False) -> Isolation:
    """The sandbox isolation the code reward runs with in this process (logged once).

    Raises RuntimeError naming the missing capability and the switch that allows running
    without isolation, when isolation is unavailable and `allow_unisolated` is False.
    """
    try:
        return isolation_in_force(SandboxConfig(allow_unisolated=allow_unisolated))
    except SandboxUnavailableError as e:
        raise RuntimeError(
            f"reward 'code' refuses to run model-written code: {e} For the code reward set "
            "the config key reward.sandbox.allow_unisolated=True (get('code', "
            "allow_unisolated=True)).") from e


@register("code")
def code_reward(prompts: list[str], completions: list[str], metadata: list[dict], *,
                mode: str = "all", timeout_s: float = 5.0, memory_mb: int = 1024,
                tmp_dir: str | None = None, allow_unisolated: bool = False) -> RewardResult:
    """Per completion: all-pass (mode="all") or pass fraction (mode="fraction").

    ``timeout_s`` is the sandbox wall clock per run (CPU limit = its ceiling): one run per
    completion for assertion tests, one per case for standard-input tests;
    ``tmp_dir`` the parent of the per-run directories (see ``SandboxConfig``);
    ``allow_unisolated`` runs programs without isolation where the machine cannot isolate
    (see the module docstring) instead of raising RuntimeError.

    A run that times out, crashes, exits nonzero or reaches the output cap scores 0, even
    after its tests passed.

    Components: ``pass_fraction``, ``timed_out`` (1.0 if the run hit the wall clock),
    ``program_ok`` (1.0 if the program's top level completed), ``sandbox_isolated`` (1.0 if
    the program ran at isolation level "full", 0.0 if unisolated).
    """
    if mode not in ("all", "fraction"):
        raise ValueError(f"reward 'code': mode must be 'all' or 'fraction', got {mode!r}")
    check_batch(prompts, completions, metadata)
    config = SandboxConfig(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)),
                           memory_mb=memory_mb, tmp_dir=tmp_dir,
                           allow_unisolated=allow_unisolated)
    # Malformed rows raise before anything runs; then the isolation check, before any program.
    tests = [parse_tests(require(meta, "tests", i, "code"), i) for i, meta in enumerate(metadata)]
    for i, meta in enumerate(metadata):
        try:
            check_compare(meta.get("compare", "whitespace"))
            float(meta.get("float_tol", 1e-6))
        except (ValueError, TypeError) as e:
            raise ValueError(f"reward 'code': row {i}: {e}") from None
    isolated = float(check_sandbox(allow_unisolated).isolated)
    scores, fractions, timeouts, program_ok = [], [], [], []
    for completion, meta, row_tests in zip(completions, metadata, tests, strict=True):
        setup = meta.get("setup", "")
        program = (setup + "\n" if setup else "") + extract_program(completion)
        if row_tests and isinstance(row_tests[0], tuple):
            result = run_io_tests(program, row_tests, config, meta.get("compare", "whitespace"),
                                  float(meta.get("float_tol", 1e-6)))
        else:
            result = run_tests(program, row_tests, config)
        fractions.append(result.pass_fraction)
        timeouts.append(float(result.timed_out))
        program_ok.append(float(result.program_ok))
        scores.append(result.pass_fraction if mode == "fraction" else float(result.all_passed))
    return RewardResult(scores=scores, components={
        "pass_fraction": fractions, "timed_out": timeouts, "program_ok": program_ok,
        "sandbox_isolated": [isolated] * len(completions)})
