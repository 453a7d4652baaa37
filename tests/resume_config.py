"""Config for the SIGKILL/resume test: checkpoints every 3 steps, step count from the env;
multi-turn episodes when LRMJAX_TEST_EPISODES is set; LoRA adapters on a warm-started base
with a KL loss to it (the reference) when LRMJAX_TEST_LORA is set."""

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
    if os.environ.get("LRMJAX_TEST_LORA"):
        c.model.lora.rank = 4
        c.optim.lr = 1e-3
        c.rl.kl_mode = "loss"
        c.rl.kl_coef = 0.05
        c.sft.steps = 4  # the base is the warm start's: a resume reloads it from workdir/sft
        c.sft.eval_every = 2
        c.sft.eval_size = 4
        c.sft.batch_size = 8
    return c
