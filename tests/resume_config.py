"""Config for the SIGKILL/resume test: checkpoints every 3 steps, step count from the env;
multi-turn episodes when LRMJAX_TEST_EPISODES is set."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_helpers import episode_config, small_config  # noqa: E402


def get_config(arg=None):
    c = small_config("grpo", steps=int(os.environ.get("LRMJAX_TEST_STEPS", "6")))
    c.train.checkpoint_every = 3
    c.reward.fns = {"test_slow_starts_with_7": 1.0}
    c.eval.size = 4
    c.eval.k = 0
    if os.environ.get("LRMJAX_TEST_EPISODES"):
        episode_config(c)
    return c
