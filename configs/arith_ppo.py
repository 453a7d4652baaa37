"""PPO with a learned critic (GAE) on 3-digit addition, CPU-tiny model.

    python -m lrmjax.main --config configs/arith_ppo.py --workdir /tmp/arith_ppo

Same task and warm start as `arith_grpo.py`; the advantage comes from a value model (a copy
of the policy trunk with a scalar head, its own optimizer) instead of the group baseline.
"""

import importlib.util
import os


def _arith_grpo():
    path = os.path.join(os.path.dirname(__file__), "arith_grpo.py")
    spec = importlib.util.spec_from_file_location("arith_grpo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg: str | None = None):
    from lrmjax.rl import algorithms

    c = _arith_grpo().get_config(arg)
    c.algorithm = "ppo"
    c.rl = algorithms.get("ppo", kl_mode="none", kl_coef=0.0)
    c.sampling.n = 4 if arg == "runlocal" else 4
    c.train.batch_prompts = 8 if arg == "runlocal" else 64
    c.train.ppo_epochs = 1 if arg == "runlocal" else 2
    c.train.minibatches = 2
    c.optim.critic_lr = 1e-3
    return c
