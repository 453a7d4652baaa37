"""Small configs shared by the trainer tests: a 1-layer width-64 model on 2-digit addition."""

from __future__ import annotations

import json
import time

from lrmjax import config as config_lib
from lrmjax.envs.base import Environment, StepResult, register_env
from lrmjax.rewards import base as reward_base
from lrmjax.rl import algorithms


@reward_base.register("test_starts_with_7")
def starts_with_7(prompts, completions, metadata):
    """A trivially learnable reward: 1 for a completion that starts with '7'."""
    return [1.0 if c.startswith("7") else 0.0 for c in completions]


@reward_base.register("test_slow_starts_with_7")
def slow_starts_with_7(prompts, completions, metadata):
    """The same, 50 ms per row: slows a step enough for a test to kill it mid-run."""
    time.sleep(0.05 * len(completions))
    return starts_with_7(prompts, completions, metadata)


@reward_base.register("test_odd_length")
def odd_length(prompts, completions, metadata):
    """1.0 for a completion of odd length: varies across an untrained model's episodes."""
    return [float(len(c) % 2) for c in completions]


@reward_base.register("test_always_raises")
def always_raises(prompts, completions, metadata):
    """A broken verifier: every call raises."""
    raise ValueError("test_always_raises: broken on purpose")


@register_env("test_digit_turns")
class DigitTurns(Environment):
    """Turns end at any digit; each is answered '=<its length>;' for `max_turns` turns (an
    untrained model's episodes then have several turns and observations)."""

    max_turns = 3

    def stop_strings(self) -> tuple[str, ...]:
        return tuple("0123456789")

    def step(self, action: str) -> StepResult:
        return StepResult(f"={len(action)};", reward=0.0, info={"calls": 1})


def episode_config(c):
    """`c` playing `test_digit_turns` episodes (in-process environments, one device)."""
    c.env.name = "test_digit_turns"
    c.env.num_workers = 0
    c.env.turn_tokens = 4
    c.env.observation_tokens = 4
    c.sampling.max_new_tokens = 16
    c.model.overrides.max_seq_len = 8 + 3 * 4 + 2 * 4
    c.mesh.cpu_devices = 1
    return c


def small_config(algorithm: str = "grpo", steps: int = 2, **rl_overrides):
    c = config_lib.base_config(algorithm)
    if rl_overrides:
        c.rl = algorithms.get(algorithm, **rl_overrides)
    c.model.overrides.num_layers = 1
    c.model.overrides.hidden_size = 64
    c.model.overrides.num_heads = 2
    c.model.overrides.num_kv_heads = 1
    c.model.overrides.head_dim = 32
    c.model.overrides.mlp_dim = 128
    c.model.overrides.max_seq_len = 32
    c.data.task_kwargs.digits = 2
    c.data.task_kwargs.reverse_answer = True
    c.data.train_size = 2000
    c.sampling.n = 4
    c.sampling.max_new_tokens = 4
    c.sampling.max_prompt_len = 8
    if c.rl.overlong_buffer_len:  # DAPO: a 2-token ramp past the longest sum (198) and EOS
        c.sampling.max_new_tokens = 6
        c.rl.overlong_buffer_len = 2
    c.train.batch_prompts = 4
    c.train.steps = steps
    c.train.checkpoint_every = 1000
    c.train.rollout_log_every = 1
    c.train.progress = False
    c.train.export_hf = False
    c.optim.lr = 1e-3
    c.eval.size = 8
    c.eval.k = 2
    c.eval.every = 0
    return c


def read_metrics(workdir: str, phase: str = "rl", keep_perf: bool = False) -> list[dict]:
    """Rows of metrics.jsonl for `phase`, without wall-clock entries (timings vary) and,
    unless `keep_perf`, without perf/ entries."""
    dropped = ("timing_s/",) if keep_perf else ("timing_s/", "perf/")
    rows = []
    with open(f"{workdir}/metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row["phase"] != phase:
                continue
            rows.append({k: v for k, v in row.items()
                         if k != "time" and not k.startswith(dropped)})
    return rows
