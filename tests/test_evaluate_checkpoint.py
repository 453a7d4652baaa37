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
    # LoRA: the evaluation needs the warm start's params (from workdir/sft) under the adapters.
    run_set = ["model.lora.rank=4"] if lora else []
    subprocess.run([sys.executable, "-m", "lrmjax.main", f"--config={config}",
                    f"--workdir={workdir}", *(f"--config.{s}" for s in run_set)], cwd=REPO,
                   env=env, check=True, capture_output=True)
    with open(f"{workdir}/metrics.jsonl") as f:
        final = [r for r in map(json.loads, f) if r.get("phase") == "eval"][-1]
    subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py", "--config",
                    config, "--workdir", workdir, "--out", out, "--set", "eval.k=0",
                    *(a for s in run_set for a in ("--set", s))],
                   cwd=REPO, env=env, check=True, capture_output=True)
    with open(out) as f:
        metrics = json.load(f)
    assert metrics["eval/greedy_pass@1"] == final["eval/greedy_pass@1"]
    assert metrics["eval/mean_response_length"] == final["eval/mean_response_length"]
    assert "eval/pass@1" not in metrics  # eval.k=0: greedy only
    bad = subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                          "--config", config, "--workdir", workdir, "--set", "no_such.key=1"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no_such" in bad.stderr
