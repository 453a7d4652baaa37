"""DAPO on 3-digit addition, CPU-tiny model: clip-higher, dynamic sampling (zero-variance
groups dropped and refilled), token-mean loss, soft overlong penalty, no KL.

    python -m lrmjax.main --config configs/arith_dapo.py --workdir /tmp/arith_dapo

The overlong penalty must spare correct answers: the longest, a 4-digit sum, is 5 tokens with
EOS (one per character), so the budget grows to 8 tokens and the ramp covers the last 2
(responses of 7 and 8 tokens, all wrong). Config validation refuses a ramp that reaches the
task's longest answer.
"""

import os

from lrmjax import config as config_lib
from lrmjax.rl import algorithms


def get_config(arg: str | None = None):
    c = config_lib.from_file(os.path.join(os.path.dirname(__file__), "arith_grpo.py"), arg)
    c.algorithm = "dapo"
    c.sampling.max_new_tokens = 8           # a 4-digit sum + EOS (5), then a 1-token margin
    c.rl = algorithms.get("dapo", overlong_buffer_len=2)
    return c
