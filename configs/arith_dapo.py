"""DAPO on 3-digit addition, CPU-tiny model: clip-higher, dynamic sampling (zero-variance
groups dropped and refilled), token-mean loss, soft overlong penalty, no KL.

    python -m lrmjax.main --config configs/arith_dapo.py --workdir /tmp/arith_dapo
"""

import os

from lrmjax import config as config_lib
from lrmjax.rl import algorithms


def get_config(arg: str | None = None):
    c = config_lib.from_file(os.path.join(os.path.dirname(__file__), "arith_grpo.py"), arg)
    c.algorithm = "dapo"
    # Responses are at most 8 tokens: the penalty ramps over the last 2.
    c.rl = algorithms.get("dapo", overlong_buffer_len=2)
    return c
