"""PPO with a learned critic (GAE) on 3-digit addition, CPU-tiny model.

    python -m lrmjax.main --config configs/arith_ppo.py --workdir /tmp/arith_ppo

Same task and warm start as `arith_grpo.py`; the advantage comes from a value model (a copy
of the policy trunk with a scalar head and its own optimizer) instead of the group baseline,
and each batch is used for 2 epochs of 2 minibatches (so the clipped ratio matters).
"""

import os

from lrmjax import config as config_lib
from lrmjax.rl import algorithms


def get_config(arg: str | None = None):
    c = config_lib.from_file(os.path.join(os.path.dirname(__file__), "arith_grpo.py"), arg)
    c.algorithm = "ppo"
    c.rl = algorithms.get("ppo", kl_mode="none", kl_coef=0.0)
    c.sampling.n = 4
    c.train.minibatches = 2
    c.optim.critic_lr = 1e-3
    if arg != "runlocal":
        c.train.batch_prompts = 64
        c.train.ppo_epochs = 2
    return c
