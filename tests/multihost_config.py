"""Config for the two-process test: a small GRPO run with a KL term (so the reference model,
its checkpoint and the ref logprobs take part), an SFT warm start, evaluation and checkpoints;
`:episodes` plays multi-turn episodes (tests/train_helpers.py's `test_digit_turns`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import episode_config, small_config  # noqa: E402


def get_config(arg=None):
    c = small_config("grpo", steps=3, kl_mode="loss", kl_coef=0.04)
    c.reward.fns = {"test_starts_with_7": 1.0}
    c.train.batch_prompts = 8            # 4 prompts per host, 32 responses over 8 devices
    c.train.checkpoint_every = 2
    c.sft.steps = 4
    c.sft.batch_size = 8
    c.sft.eval_every = 2
    c.eval.size = 8
    c.eval.batch_size = 8
    c.eval.every = 2
    c.eval.k = 2
    if arg == "episodes":   # multi-turn episodes, each host playing its own rows
        c = episode_config(c)
        c.mesh.cpu_devices = 8
        c.reward.fns = {"test_odd_length": 1.0}   # the last turn's text: varied lengths
    elif arg:
        raise ValueError(f"multihost_config: unknown argument {arg!r}")
    return c
