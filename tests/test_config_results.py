"""experiments/config_results.py (the README's config table) and experiments/run_results.py:
reading a run's held-out evaluations, the verdicts, the table, the README's markers, one real
`:runlocal` run through the script; and, marked slow, every procedural config in full, which
must keep learning by its floor."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"


def _experiment_module(name: str):
    """A script of experiments/ imported as a module (its folder on sys.path, as when run)."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


cr = _experiment_module("config_results")
run_results = _experiment_module("run_results")
PROCEDURAL = [n for n in cr.config_names() if cr.kind(n) == "procedural"]


def _eval_row(step: int, greedy: float, pass1: float = 0.0, pass4: float = 0.0,
              length: float = 5.0) -> dict:
    return {"step": step, "phase": "eval", "time": 1.0, "eval/greedy_pass@1": greedy,
            "eval/mean_response_length": length, "eval/pass@1": pass1, "eval/pass@4": pass4,
            "eval/maj@4": 0.5, "eval/add/greedy_pass@1": 0.99, "timing_s/eval": 0.1}


def _write_metrics(workdir: pathlib.Path, rows: list[dict]) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _run(config: str, seed: int, before: float | None, after: float | None,
         error: str | None = None, variant: str = "full", kind: str = "procedural",
         wall: float = 60.0) -> dict:
    """A run record as run_one makes it."""
    def ev(step, greedy):
        return None if greedy is None else {
            "step": step, "greedy_pass@1": greedy, "pass@1": greedy / 2, "pass@4": greedy,
            "maj@4": greedy, "mean_response_length": 4.0 + step / 100}

    return {"config": config, "kind": kind, "variant": variant, "seed": seed,
            "command": ["python", "-m", "lrmjax.main"], "returncode": 0 if error is None else 1,
            "error": error, "resumed": False, "wall_s": wall, "before": ev(0, before),
            "after": ev(400, after)}


def _results(runs: list[dict]) -> dict:
    return {"schema": 1, "invocation": cr.REPRODUCE, "commit": "abc1234", "dirty": False,
            "date": "2026-12-07T12:00:00Z",
            "machine": {"cpu": "Test CPU", "cores": 2, "jax": "0.0", "load_avg": [1.0, 2.0]},
            "seeds": [0, 1], "runs": runs}


# ------------------------------------------------------------------------------ run_results

def test_held_out_reads_rl_step_zero_and_the_last_evaluation(tmp_path):
    _write_metrics(tmp_path, [
        {"step": 0, "phase": "data", "data/train_prompts": 10},
        {"step": 5, "phase": "sft", "sft/eval_greedy_pass@1": 0.2},
        _eval_row(0, 0.30, 0.25, 0.50, length=4.0),
        {"step": 1, "phase": "rl", "reward/mean": 0.3},
        _eval_row(200, 0.50),
        _eval_row(400, 0.70, 0.65, 0.85, length=5.5),
    ])
    before, after = run_results.held_out(str(tmp_path))
    assert before == {"step": 0, "greedy_pass@1": 0.30, "mean_response_length": 4.0,
                      "pass@1": 0.25, "pass@4": 0.50, "maj@4": 0.5}   # no per-label metrics
    assert after["step"] == 400 and after["greedy_pass@1"] == 0.70
    assert after["pass@4"] == 0.85 and after["mean_response_length"] == 5.5


def test_held_out_without_evaluations(tmp_path):
    assert run_results.held_out(str(tmp_path / "missing")) == (None, None)
    _write_metrics(tmp_path / "sft_only", [{"step": 5, "phase": "sft", "sft/loss": 1.0}])
    assert run_results.held_out(str(tmp_path / "sft_only")) == (None, None)
    _write_metrics(tmp_path / "step0", [_eval_row(0, 0.3)])   # died during the first RL step
    before, after = run_results.held_out(str(tmp_path / "step0"))
    assert before["greedy_pass@1"] == 0.3 and after is None


def test_change_in_points():
    assert run_results.change(0.320, 0.720) == "+40.0 points"
    assert run_results.change(0.5, 0.45) == "-5.0 points"


# ------------------------------------------------------------------------------ the table

def test_verdict_bands():
    band = cr.FLAT_BAND
    assert cr.verdict(0.3, 0.3 + band) == "rises"
    assert cr.verdict(0.3, 0.7) == "rises"
    assert cr.verdict(0.3, 0.3) == "flat"
    assert cr.verdict(0.3, 0.3 + band / 2) == "flat"
    assert cr.verdict(0.3, 0.3 - band / 2) == "flat"
    assert cr.verdict(0.3, 0.3 - band) == "WORSE"


def test_render_table_rows():
    results = _results([
        _run("arith_grpo", 0, 0.30, 0.70, wall=50.0),
        _run("arith_grpo", 1, 0.40, 0.80, wall=70.0),
        _run("arith_ppo", 0, 0.30, 0.30),
        _run("arith_dapo", 0, 0.40, 0.20),
        _run("countdown_grpo", 0, 0.10, 0.50),
        _run("countdown_grpo", 1, None, None, error="exit 1"),
        _run("gsm8k_grpo_qwen2_5_1_5b", 0, 0.0, 0.0, variant="runlocal", kind="real-model"),
    ])
    table = cr.render_table(results, floors={"arith_grpo": 0.25})
    # How to redo it, where and when it was made.
    assert "`python experiments/config_results.py --write-readme` (`make config-results`)" \
        in " ".join(table.splitlines())
    assert "abc1234" in table and "Test CPU (2 cores" in table and "2026-12-07" in table
    rows = {line.split(" | ")[0][3:-1]: line.split(" | ") for line in table.splitlines()
            if line.startswith("| `")}
    assert list(rows) == ["arith_grpo", "arith_ppo", "arith_dapo", "countdown_grpo",
                          "gsm8k_grpo_qwen2_5_1_5b"]   # in the order they ran
    _, cmd, seeds, greedy, pass1, passk, length, wall, verdict = rows["arith_grpo"]
    assert cmd == "`python -m lrmjax.main --config configs/arith_grpo.py --workdir W " \
                  "--config.seed=S`"
    assert seeds == "0, 1"
    assert greedy == "0.350 -> 0.750 (0.300 -> 0.700; 0.400 -> 0.800)"
    assert pass1 == "0.175 -> 0.375" and passk == "0.350 -> 0.750 (k=4)"
    assert length == "4.0 -> 8.0" and wall == "60 s (50-70)"
    assert verdict == "rises (+40.0 points; test floor +25.0) |"
    assert rows["arith_ppo"][-1].startswith("flat (+0.0 points)")
    assert rows["arith_dapo"][-1].startswith("WORSE (-20.0 points)")
    # A failed seed is reported; the others' numbers still show.
    assert rows["countdown_grpo"][-1] == "FAILED (seed 1: exit 1) |"
    assert rows["countdown_grpo"][3] == "0.100 -> 0.500"
    # Real-model configs only run at :runlocal and claim nothing.
    real = rows["gsm8k_grpo_qwen2_5_1_5b"]
    assert ":runlocal" in real[1] and real[3:7] == ["-"] * 4
    assert real[-1] == ":runlocal runs |"


def test_from_json_redraws_the_table_without_running(tmp_path, capsys):
    results = _results([_run("arith_grpo", 0, 0.30, 0.70)])
    (tmp_path / "r.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{cr.BEGIN}\nold\n{cr.END}\n\nrest\n")
    rc = cr.main(["--from-json", str(tmp_path / "r.json"), "--write-readme",
                  "--readme", str(readme)])
    assert rc == 0
    text = readme.read_text()
    assert cr.render_table(results) in text and "old" not in text and text.endswith("\nrest\n")
    assert cr.render_table(results) in capsys.readouterr().out
    # A failed run makes the exit status nonzero.
    results["runs"].append(_run("arith_ppo", 0, None, None, error="timed out after 5 s"))
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert cr.main(["--from-json", str(tmp_path / "r.json")]) == 1


def test_update_replaces_only_the_rerun_configs_and_says_so():
    old = _results([_run("arith_grpo", 0, 0.30, 0.70), _run("arith_grpo", 1, 0.31, 0.71),
                    _run("calc_tool_grpo", 0, 0.30, 0.20), _run("calc_tool_grpo", 1, 0.3, 0.2),
                    _run("mixture_grpo", 0, 0.30, 0.50)])
    new = {**_results([_run("calc_tool_grpo", 0, 0.30, 0.60), _run("guess_grpo", 0, 0.5, 0.7)]),
           "invocation": "python experiments/config_results.py --configs calc_tool_grpo "
                         "guess_grpo --update --write-readme",
           "commit": "def5678", "date": "2026-12-08T09:00:00Z", "duration_s": 9.0}
    merged = cr.merge_update(old, new)
    # Order kept, both calc_tool_grpo runs replaced by the one new run, guess_grpo appended.
    assert [(r["config"], r["seed"], r["after"]["greedy_pass@1"]) for r in merged["runs"]] == [
        ("arith_grpo", 0, 0.70), ("arith_grpo", 1, 0.71), ("calc_tool_grpo", 0, 0.60),
        ("mixture_grpo", 0, 0.50), ("guess_grpo", 0, 0.7)]
    assert merged["commit"] == "abc1234" and merged["invocation"] == cr.REPRODUCE
    assert merged["updates"] == [{
        "invocation": new["invocation"], "commit": "def5678", "dirty": False,
        "date": "2026-12-08T09:00:00Z", "machine": new["machine"], "duration_s": 9.0,
        "configs": ["calc_tool_grpo", "guess_grpo"]}]
    table = cr.render_table(merged)
    assert "at commit def5678" in " ".join(table.split()) and "`guess_grpo`" in table
    # A second update appends; the first stays.
    again = cr.merge_update(merged, {**new, "commit": "0000000"})
    assert [u["commit"] for u in again["updates"]] == ["def5678", "0000000"]
    with pytest.raises(SystemExit):
        cr.main(["--update"])   # names no configs


# ------------------------------------------------------------------------------ the README

def test_replace_between_markers_is_idempotent():
    text = f"intro\n{cr.BEGIN}\nplaceholder\n{cr.END}\noutro\n"
    once = cr.replace_between_markers(text, "| a |\n")
    assert once == f"intro\n{cr.BEGIN}\n| a |\n{cr.END}\noutro\n"
    assert cr.replace_between_markers(once, "| a |\n") == once
    assert cr.replace_between_markers(once, "| b |") == once.replace("| a |", "| b |")


@pytest.mark.parametrize("text", [
    "no markers\n",
    f"{cr.BEGIN}\nonly the beginning\n",
    f"only the end\n{cr.END}\n",
    f"{cr.END}\nreversed\n{cr.BEGIN}\n",
    f"{cr.BEGIN}\n{cr.END}\ntwice\n{cr.BEGIN}\n{cr.END}\n",
])
def test_replace_between_markers_refuses_without_one_pair(text):
    with pytest.raises(ValueError, match="config-results:begin"):
        cr.replace_between_markers(text, "| a |")


def test_readme_holds_the_markers_once():
    text = (ROOT / "README.md").read_text()
    assert cr.replace_between_markers(text, "x")   # exactly one pair, in order


def test_readme_table_is_drawn_from_the_json():
    # Not edited by hand: `--from-json --write-readme` redraws it (after a change of FLOORS).
    if not os.path.exists(cr.JSON):
        pytest.skip("experiments/config_results.json not made yet (make config-results)")
    with open(cr.JSON) as f:
        block = cr.render_table(json.load(f))
    text = (ROOT / "README.md").read_text()
    assert cr.replace_between_markers(text, block) == text, (
        "README's config table is out of date: python experiments/config_results.py "
        "--from-json experiments/config_results.json --write-readme")


# ------------------------------------------------------------------------------ the configs

def test_config_kinds_and_floors():
    assert {"arith_grpo", "arith_dapo", "arith_ppo"} <= set(PROCEDURAL)
    assert cr.kind("gsm8k_grpo_qwen2_5_1_5b") == "real-model"
    assert cr.kind("math_dapo_qwen2_5_math_7b") == "real-model"
    # Every procedural config has a floor (a new one needs it), and only they do.
    assert sorted(cr.FLOORS) == PROCEDURAL
    assert all(0 < f < 1 for f in cr.FLOORS.values())


def test_run_one_runlocal_subprocess(tmp_path):
    # The quickest :runlocal config (about 15-30 s on the shared 2-core machine).
    workdir = tmp_path / "arith_grpo" / "seed0"
    run = cr.run_one("arith_grpo", 0, str(workdir), variant="runlocal", timeout_s=600)
    assert run["error"] is None and run["returncode"] == 0, f"{run['error']}\n{run['log_tail']}"
    assert run["command"][1:] == ["-m", "lrmjax.main", "--config",
                                  "configs/arith_grpo.py:runlocal", "--workdir", str(workdir),
                                  "--config.seed=0"]
    assert run["before"]["step"] == 0 and run["after"]["step"] == 4   # :runlocal's 4 steps
    assert {"greedy_pass@1", "pass@1", "pass@4", "mean_response_length"} <= set(run["after"])
    assert 0 < run["wall_s"] < 600 and not run["resumed"] and run["log_tail"] is None
    assert (tmp_path / "arith_grpo" / "seed0.log").stat().st_size > 0
    row = cr.table_row("arith_grpo", [run])
    assert row.endswith("| :runlocal runs |") and "(k=4)" in row


def test_run_one_reports_a_failure(tmp_path):
    run = cr.run_one("no_such_config", 0, str(tmp_path / "w"), timeout_s=300)
    assert run["returncode"] != 0 and run["error"] == f"exit {run['returncode']}"
    assert "no_such_config.py" in run["log_tail"]   # the end of the output says why
    assert run["before"] is None and run["after"] is None
    timed_out = cr.run_one("arith_grpo", 0, str(tmp_path / "t"), timeout_s=0.01)
    assert timed_out["error"] == "timed out after 0.01 s"
    assert cr.table_row("arith_grpo", [timed_out]).endswith(
        "| FAILED (seed 0: timed out after 0.01 s) |")


# ------------------------------------------------------------------------------ full runs

@pytest.mark.slow
@pytest.mark.parametrize("name", PROCEDURAL)
def test_procedural_config_keeps_learning(name, tmp_path):
    # Each config in full, as `make config-results` runs it, on seed 0: its held-out greedy
    # pass@1 must rise by the floor the README's table supports.
    run = cr.run_one(name, 0, str(tmp_path / name / "seed0"), timeout_s=3600)
    assert run["error"] is None, f"{run['error']}\n{run['log_tail']}"
    before, after = run["before"]["greedy_pass@1"], run["after"]["greedy_pass@1"]
    assert after >= before, f"{name}: held-out greedy pass@1 fell, {before:.3f} -> {after:.3f}"
    assert after - before >= cr.FLOORS[name], (
        f"{name}: held-out greedy pass@1 {before:.3f} -> {after:.3f} "
        f"({run_results.change(before, after)}), below its floor of "
        f"{100 * cr.FLOORS[name]:.1f} points (FLOORS in experiments/config_results.py)")
