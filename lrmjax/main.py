"""Runs one experiment:

    python -m lrmjax.main --config configs/arith_grpo.py[:runlocal] --workdir DIR \
        [--config.rl.kl_coef=0.01 ...]

Rerunning the same command with the same workdir resumes from the last checkpoint. Ctrl-C
(SIGINT) or SIGTERM stops the run after the current step, once that step is saved, and exits
with status 128 + the signal number; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import logging
import os
import sys

# Compiled programs are cached on disk, so a rerun (or a resume) starts in seconds.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from absl import app, flags
from ml_collections import config_flags

from lrmjax import host

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # lrmjax.config imports JAX, so not at module level: reward workers start with `spawn`,
    # which re-imports this module (as __mp_main__) in each worker, and they verify text.
    from lrmjax import config as config_lib

    cfg = _CONFIG.value
    config_lib.validate(cfg)
    # The CPU device count and malloc settings: before the backend starts (the first
    # jax.devices() call, in rl.train below).
    host.prepare(cfg)
    from lrmjax.train import lifecycle, rl  # after flag parsing: keeps `--help` fast

    try:
        final = rl.train(cfg, _WORKDIR.value)
    except lifecycle.Stopped as e:  # already logged, with how to resume
        sys.exit(128 + e.signum)
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()  # a barrier: host 0 hosts the service the others poll
    if final:
        print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))


if __name__ == "__main__":
    app.run(main)
