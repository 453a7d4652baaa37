"""Every experiment under configs/: loads, validates on the 8 faked devices, rejects unknown
arguments, and its `:runlocal` variant runs end to end through the CLI."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lrmjax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs",
                                                                          "*.py")))
# Configs for published checkpoints leave the model to the launch command
# (--config.model.hf_path=...): without it they must not validate.
NEEDS_HF_PATH = {"gsm8k_grpo_qwen2_5_1_5b", "math_dapo_qwen2_5_math_7b",
                 "tool_math_qwen2_5_1_5b", "search_qa_qwen2_5_1_5b"}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"config_{name}",
                                                  os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configs_are_found():
    assert "arith_grpo" in CONFIGS and len(CONFIGS) >= 6


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
    module = _load(name)
    assert module.__doc__ and "python -m lrmjax.main" in module.__doc__   # the launch command
    cfg = module.get_config()
    if name in NEEDS_HF_PATH:
        assert not cfg.model.hf_path
        with pytest.raises(ValueError, match="model.hf_path"):
            config_lib.validate(cfg, 8)
        cfg.model.hf_path = "/models/checkpoint"
    config_lib.validate(cfg, 8)
    small = module.get_config("runlocal")
    config_lib.validate(small, 8)
    # The smoke run is smaller than the experiment.
    assert small.train.steps < cfg.train.steps
    assert (small.train.batch_prompts * small.sampling.n
            <= cfg.train.batch_prompts * cfg.sampling.n)


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_argument_raises(name):
    with pytest.raises(ValueError, match="bogus"):
        _load(name).get_config("bogus")


def _run_cli(name: str, workdir: str, *flags: str) -> None:
    # The conftest environment (8 faked CPU devices, shared XLA compilation cache) is inherited.
    proc = subprocess.run(
        [sys.executable, "-m", "lrmjax.main", f"--config={REPO}/configs/{name}.py:runlocal",
         f"--workdir={workdir}", *flags], cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    output = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]  # nothing goes wrong at exit either
    cfg = _load(name).get_config("runlocal")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    rl_steps = sorted({r["step"] for r in rows if r["phase"] == "rl"})
    assert rl_steps == list(range(1, cfg.train.steps + 1))
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert "eval/greedy_pass@1" in summary["after"]
    png = open(os.path.join(workdir, "curves.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


_SLOW = pytest.mark.slow   # 20-60 s each on the shared 2-core machine: over the fast budget
RUNLOCAL = [
    "arith_grpo",                                   # the fast suite's end-to-end smoke run
    "calc_tool_grpo",                               # multi-turn episodes end to end
    "guess_grpo",                                   # feedback over several turns
    pytest.param("arith_dapo", marks=_SLOW),
    pytest.param("arith_ppo", marks=_SLOW),
    pytest.param("countdown_grpo", marks=_SLOW),
    pytest.param("gsm8k_grpo_qwen2_5_1_5b", marks=_SLOW),
    pytest.param("math_dapo_qwen2_5_math_7b", marks=_SLOW),
    pytest.param("mixture_grpo", marks=_SLOW),    # the mixture's fast test: test_train.py
    pytest.param("search_qa_qwen2_5_1_5b", marks=_SLOW),
    pytest.param("tool_math_qwen2_5_1_5b", marks=_SLOW),  # its fast test: test_envs.py
]


def test_every_config_has_a_runlocal_case():
    names = [p if isinstance(p, str) else p.values[0] for p in RUNLOCAL]
    assert sorted(names) == CONFIGS


@pytest.mark.parametrize("name", RUNLOCAL)
def test_runlocal_end_to_end(name, tmp_path):
    # The fast smoke run scores in a reward worker process, as real runs do.
    flags = ["--config.reward.num_workers=1"] if name == "arith_grpo" else []
    _run_cli(name, str(tmp_path / name), *flags)


def test_arith_dapo_penalty_spares_every_correct_answer():
    # The longest sum, 1998, is 4 tokens + EOS; the ramp starts after them. The budget
    # arith_dapo inherited from arith_grpo (6 tokens, ramp over the last 2) penalized it.
    cfg = _load("arith_dapo").get_config()
    longest, _ = config_lib.longest_answer(cfg)
    assert longest == 4
    assert cfg.sampling.max_new_tokens - cfg.rl.overlong_buffer_len >= longest + 1
    cfg.sampling.max_new_tokens = _load("arith_grpo").get_config().sampling.max_new_tokens
    with pytest.raises(ValueError, match="'rl.overlong_buffer_len' = 2 with 'sampling"):
        config_lib.validate(cfg)
