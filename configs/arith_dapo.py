"""DAPO on 3-digit addition, CPU-tiny model: clip-higher, dynamic sampling (zero-variance
groups dropped and refilled), token-mean loss, soft overlong penalty, no KL.

    python -m lrmjax.main --config configs/arith_dapo.py --workdir /tmp/arith_dapo
"""

import importlib.util
import os


def get_config(arg: str | None = None):
    from lrmjax.rl import algorithms

    path = os.path.join(os.path.dirname(__file__), "arith_grpo.py")
    spec = importlib.util.spec_from_file_location("arith_grpo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.algorithm = "dapo"
    # Responses are at most 8 tokens: a 2-token ramp before the limit.
    c.rl = algorithms.get("dapo", overlong_buffer_len=2)
    return c
