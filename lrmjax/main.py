"""Runs one experiment:

    python -m lrmjax.main --config configs/arith_grpo.py[:runlocal] --workdir DIR \
        [--config.rl.kl_coef=0.01 ...]

Rerunning the same command with the same workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from lrmjax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    cfg = _CONFIG.value
    config_lib.validate(cfg)
    from lrmjax.train import rl  # after flag parsing: keeps `--help` fast

    final = rl.train(cfg, _WORKDIR.value)
    if final:
        print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))


if __name__ == "__main__":
    app.run(main)
