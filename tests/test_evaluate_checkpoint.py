"""experiments/evaluate_checkpoint.py: a finished run's checkpoint evaluates to the run's own
final held-out metrics (under LoRA too: its base reloaded, the adapters from the checkpoint),
and `--set` changes the setting it is evaluated under."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("lora", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["full", "lora"])
def test_evaluates_a_run_as_the_run_did(tmp_path, lora):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "eval.json")
    config = f"{REPO}/configs/arith_grpo.py:runlocal"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # LoRA: the evaluation needs the warm start's params (from workdir/sft) under the adapters,
    # the base in the dtype the run kept it in; its warm start is the base with fresh adapters.
    run_set = ["model.lora.rank=4", "model.lora.base_dtype=bfloat16"] if lora else []
    subprocess.run([sys.executable, "-m", "lrmjax.main", f"--config={config}",
                    f"--workdir={workdir}", *(f"--config.{s}" for s in run_set)], cwd=REPO,
                   env=env, check=True, capture_output=True)
    with open(f"{workdir}/metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r.get("phase") == "eval"]
    assert evals[0]["step"] == 0
    for flag, row in [(None, evals[-1])] + ([("--warm-start", evals[0])] if lora else []):
        subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py", "--config",
                        config, "--workdir", workdir, "--out", out, "--set", "eval.k=0",
                        *(a for s in run_set for a in ("--set", s)), *([flag] if flag else [])],
                       cwd=REPO, env=env, check=True, capture_output=True)
        with open(out) as f:
            metrics = json.load(f)
        assert metrics["eval/greedy_pass@1"] == row["eval/greedy_pass@1"], flag
        assert metrics["eval/mean_response_length"] == row["eval/mean_response_length"], flag
        assert "eval/pass@1" not in metrics  # eval.k=0: greedy only
    bad = subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                          "--config", config, "--workdir", workdir, "--set", "no_such.key=1"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no_such" in bad.stderr
    one = subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                          "--config", config, "--workdir", workdir, "--groups", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert one.returncode != 0 and "a group needs at least 2 episodes" in one.stderr
    no_warm_start = subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                                    "--config", config, "--workdir", workdir, "--warm-start",
                                    "--set", "sft.steps=0"],
                                   cwd=REPO, env=env, capture_output=True, text=True)
    assert no_warm_start.returncode != 0 and "sft.steps" in no_warm_start.stderr


def test_warm_start_and_transcripts_of_an_episode_run(tmp_path):
    """`--warm-start` evaluates the policy RL started from (the run's step-0 evaluation), and
    `--transcripts` writes every held-out episode whole, scored as the evaluation scored it, and
    `--groups` sorts every held-out prompt by its greedy and sampled outcomes."""
    workdir = str(tmp_path / "run")
    config = f"{REPO}/configs/calc_tool_grpo.py:runlocal"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "lrmjax.main", f"--config={config}",
                    f"--workdir={workdir}", "--config.eval.every=2"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    with open(f"{workdir}/metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r.get("phase") == "eval"]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 2
    for flag, row in (("--warm-start", first), (None, last)):
        out, transcripts = str(tmp_path / "eval.json"), str(tmp_path / "greedy.jsonl")
        subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                        "--config", config, "--workdir", workdir, "--out", out,
                        "--set", "eval.k=0", "--transcripts", transcripts, "--groups", "3",
                        *([flag] if flag else [])],
                       cwd=REPO, env=env, check=True, capture_output=True)
        with open(out) as f:
            metrics = json.load(f)
        assert metrics["eval/greedy_pass@1"] == row["eval/greedy_pass@1"], flag
        assert metrics["eval/mean_response_length"] == row["eval/mean_response_length"], flag
        with open(transcripts) as f:
            rows = [json.loads(line) for line in f]
        assert len(rows) == 8  # eval.size of :runlocal
        assert all(r["prompt"].endswith("=") and r["answer"].isdigit() for r in rows)
        assert sum(r["score"] for r in rows) / len(rows) == metrics["eval/greedy_pass@1"]
        groups = {k: v for k, v in metrics.items() if k.startswith("groups/")}
        assert len(groups) == 6 and sum(groups.values()) == pytest.approx(1.0)
        assert all(v * 8 == round(v * 8) for v in groups.values())  # shares of 8 prompts
        solved = sum(v for k, v in groups.items() if k.startswith("groups/solved_"))
        assert solved == pytest.approx(metrics["eval/greedy_pass@1"])

