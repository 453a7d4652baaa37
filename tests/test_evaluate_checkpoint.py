"""experiments/evaluate_checkpoint.py: a finished run's checkpoint evaluates to the run's own
final held-out metrics, and `--set` changes the setting it is evaluated under."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluates_a_run_as_the_run_did(tmp_path):
    workdir, out = str(tmp_path / "run"), str(tmp_path / "eval.json")
    config = f"{REPO}/configs/arith_grpo.py:runlocal"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "lrmjax.main", f"--config={config}",
                    f"--workdir={workdir}"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    with open(f"{workdir}/metrics.jsonl") as f:
        final = [r for r in map(json.loads, f) if r.get("phase") == "eval"][-1]
    subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py", "--config",
                    config, "--workdir", workdir, "--out", out, "--set", "eval.k=0"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    with open(out) as f:
        metrics = json.load(f)
    assert metrics["eval/greedy_pass@1"] == final["eval/greedy_pass@1"]
    assert "eval/pass@1" not in metrics  # eval.k=0: greedy only
    bad = subprocess.run([sys.executable, f"{REPO}/experiments/evaluate_checkpoint.py",
                          "--config", config, "--workdir", workdir, "--set", "no_such.key=1"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no_such" in bad.stderr
