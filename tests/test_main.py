"""lrmjax.main: the command line as users run it (a subprocess), stopped by the checks that
run before any work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(workdir, *overrides: str) -> str:
    """Runs arith_grpo with `overrides`; returns its output, asserting that it failed and
    left no trace in `workdir` (it stopped before any work)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lrmjax.main", f"--config={REPO}/configs/arith_grpo.py",
         f"--workdir={workdir}", *overrides], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert not os.path.exists(workdir)
    return proc.stdout


def test_algorithm_override_is_refused_saying_how_to_switch(tmp_path):
    out = _cli(tmp_path / "run", "--config.algorithm=ppo", "--config.rl.kl_coef=0.0")
    assert "--config.algorithm=ppo would only rename the run" in out
    assert "configs/arith_ppo.py" in out                     # a file that builds PPO
    assert "--config.rl.adv_estimator='gae'" in out and "--config.rl.use_critic=True" in out


def test_free_form_groups_take_new_keys_from_the_command_line(tmp_path):
    # A new reward weight and a new model override are accepted and reach validation, which
    # then stops the run on the override's value (12 tokens leave 2 after a 10-token prompt).
    out = _cli(tmp_path / "run", "--config.reward.fns.format=0.5",
               "--config.model.overrides.max_seq_len=12")
    assert "AttributeError" not in out and "KeyError" not in out
    assert "'sampling.max_new_tokens' = 6 does not fit model preset 'tiny'" in out
    assert "max_seq_len 12" in out


@pytest.mark.parametrize("override, message", [
    ("--config.reward.fns.math=heavy", "config 'reward.fns.math' must be a finite number"),
    ("--config.model.overrides.num_layrs=2", "['num_layrs'] in config 'model.overrides'"),
    ("--config.rl.kl_coeff=0", "Unknown config key 'rl.kl_coeff'"),
])
def test_command_line_keys_are_checked_by_validate(override, message, tmp_path):
    out = _cli(tmp_path / "run", override)
    assert message in out and "AttributeError" not in out
