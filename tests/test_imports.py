"""Import hygiene: reward workers import no JAX, and lrmjax's imports go one way.

The layering (DESIGN.md, STYLE.md): rl, parallel <- models <- sampling <- rewards <- train
<- main. The graph is read from the source with `ast` (module-level and function-level imports
alike), so nothing here imports the modules it checks.
"""

from __future__ import annotations

import ast
import graphlib
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lrmjax"
HEAVY = ("jax", "flax")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


# --------------------------------------------------------------------- reward workers: no JAX
# Everything a reward worker imports to verify text: every reward module but the model-based
# ones (they run a model on the device and are imported where used), the procedural tasks the
# `task` reward verifies with, and lrmjax.main, which a worker started with `spawn` re-imports
# (as __mp_main__) when the trainer runs as `python -m lrmjax.main`; and what environment
# workers run: the environments, their tools (with the tool-call parsing), the episode
# bookkeeping and the chat-template deltas.
VERIFIER_MODULES = sorted(
    {m for m in MODULES if m.startswith("lrmjax.rewards")} - {"lrmjax.rewards.model_based"}
) + ["lrmjax.data.tasks", "lrmjax.main", "lrmjax.envs.tools", "lrmjax.envs.tool_calls",
     "lrmjax.envs.chat", "lrmjax.envs.base", "lrmjax.envs.pool", "lrmjax.envs.runner",
     "lrmjax.envs.tool_env", "lrmjax.envs.guess", "lrmjax.workers"]


def _python(code: str, **kwargs) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("module", VERIFIER_MODULES)
def test_verifier_modules_import_no_jax(module):
    out = _python(f"import json, sys\nimport {module}\n"
                  f"print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))")
    assert json.loads(out.splitlines()[-1]) == [], f"importing {module} imports them"


def test_a_spawned_reward_worker_verifies_without_jax(tmp_path):
    """A real RewardPool worker scores with the `math` and `task` rewards, then reports which
    of jax / flax its process has imported."""
    (tmp_path / "probe_reward.py").write_text(textwrap.dedent(r"""
        import sys

        from lrmjax.rewards import base


        def verify_then_report(prompts, completions, metadata):
            boxed = ["\\boxed{" + c + "}" for c in completions]
            assert base.get("math")(prompts, boxed, metadata).scores == [1.0]
            assert base.get("task")(prompts, completions, metadata) == [1.0]
            loaded = [float(m in sys.modules) for m in ("jax", "flax")]
            return base.RewardResult([1.0], {"jax": loaded[:1], "flax": loaded[1:]})
        """))
    out = _python(textwrap.dedent("""
        import json

        import probe_reward
        from lrmjax.data.tasks import ArithmeticTask
        from lrmjax.rewards.pool import RewardPool

        ex = ArithmeticTask(digits=2).example(0)
        with RewardPool(probe_reward.verify_then_report, num_workers=1, timeout_s=120) as pool:
            scores, metrics, comps = pool.score([ex.prompt], [ex.answer],
                                                [{**ex.metadata, "answer": ex.answer}])
        print(json.dumps({"score": float(scores[0]), "errors": metrics["reward/errors"],
                          **{k: float(v[0]) for k, v in comps.items()}}))
        """), env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])})
    got = json.loads(out.splitlines()[-1])
    assert got == {"score": 1.0, "errors": 0.0, "jax": 0.0, "flax": 0.0}


# ------------------------------------------------------------------------ the import graph
def _imports(module: str, path: pathlib.Path) -> set[str]:
    """The lrmjax modules that `module` imports anywhere in its source (a `from pkg import x`
    counts as importing pkg.x when that is a module, else pkg)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import lrmjax.x.y` of an attribute
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...],
                allowed: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """'m imports d' for each edge from a module under `importers` to one under `forbidden`
    (and not itself under `importers`), except the (m, d) pairs in `allowed`."""
    return [f"{m} imports {d}" for m in sorted(GRAPH) if _within(m, importers)
            for d in sorted(GRAPH[m])
            if _within(d, forbidden) and not _within(d, importers) and (m, d) not in allowed]


def test_the_graph_sees_function_level_imports():
    # main imports the trainer inside main() (after flag parsing): the scan must see it.
    assert "lrmjax.train.rl" in GRAPH["lrmjax.main"]


def test_rl_imports_nothing_else_of_lrmjax():
    assert _violations(("lrmjax.rl",), ("lrmjax",)) == []


def test_parallel_imports_no_model_or_anything_above():
    assert _violations(("lrmjax.parallel",), ("lrmjax.models", "lrmjax.sampling",
                                              "lrmjax.rewards", "lrmjax.train",
                                              "lrmjax.main")) == []


# The one exception, known and left as it is: the tiny random HF checkpoints train their
# tokenizer on the shipped text fixtures, found at `lrmjax.data.FIXTURES_DIR` (inside a
# function; lrmjax/data/__init__.py imports only pathlib).
MODELS_MAY_IMPORT = frozenset({("lrmjax.models.tiny_hf", "lrmjax.data")})


def test_models_import_no_sampling_rewards_data_or_train():
    assert _violations(("lrmjax.models",), ("lrmjax.sampling", "lrmjax.rewards", "lrmjax.data",
                                            "lrmjax.train", "lrmjax.main"),
                       MODELS_MAY_IMPORT) == []


def test_sampling_imports_no_rewards_or_train():
    assert _violations(("lrmjax.sampling",), ("lrmjax.rewards", "lrmjax.train",
                                              "lrmjax.main")) == []


def test_only_train_and_main_import_train():
    top = ("lrmjax.train", "lrmjax.main")
    below = [f"{m} imports {d}" for m in sorted(GRAPH) if not _within(m, top)
             for d in sorted(GRAPH[m]) if _within(d, top)]
    assert below == []
    assert _violations(("lrmjax.train",), ("lrmjax.main",)) == []


def test_no_import_cycles():
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as e:
        pytest.fail("import cycle: " + " -> ".join(e.args[1]))
