"""Runs one experiment:

    python -m lrmjax.main --config configs/arith_grpo.py[:runlocal] --workdir DIR \
        [--config.rl.kl_coef=0.01 ...]

Rerunning the same command with the same workdir resumes from the last checkpoint. Ctrl-C
(SIGINT) or SIGTERM stops the run after the current step, once that step is saved, and exits
with status 128 + the signal number; a second Ctrl-C stops at once.

`--config.KEY=VALUE` sets one value; in the free-form groups it may also add a key:
`--config.reward.fns.math=1.0` (a reward weight), `--config.model.overrides.num_layers=2` (a
ModelConfig field), `--config.data.task_kwargs.digits=4`; `--config.reward.fns="{'math': 1.0}"`
replaces a whole group. `config.validate` then refuses, naming the key, anything misspelt or
of the wrong type, before any work. `--config.algorithm` is refused: see
`check_algorithm_override`.
"""

from __future__ import annotations

import glob
import logging
import os
import sys

# Compiled programs are cached on disk, so a rerun (or a resume) starts in seconds.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from lrmjax import host


class _UnlockingParser(flags.ArgumentParser):
    """The `--config` flag's parser: config_flags' own (which runs the config file), then an
    unlock of the whole config, before the `--config.*` overrides are applied, so that they
    can add keys to the free-form groups (reward weights, model overrides, task kwargs).
    config_flags cannot lock a config and accept new keys at once; `config.validate` refuses
    every key outside `base_config` (naming it and the valid keys: a clearer message than a
    locked ConfigDict's error), and `main` locks the config once validated. Remembers the
    file's `algorithm` for `check_algorithm_override`."""

    def __init__(self, file_parser: flags.ArgumentParser):
        self._file_parser = file_parser
        self.file_algorithm: str | None = None

    def parse(self, argument: str):
        cfg = self._file_parser.parse(argument)
        if isinstance(cfg, ml_collections.ConfigDict):  # not config_flags' stand-in for a
            # file that failed to load, which raises its error on any use
            _unlock(cfg)  # `rl` comes locked from lrmjax.rl.algorithms.get
            self.file_algorithm = cfg.get("algorithm")
        return cfg

    def flag_type(self) -> str:
        return self._file_parser.flag_type()


def _unlock(cfg: ml_collections.ConfigDict) -> None:
    """Unlocks `cfg` and every group in it (ConfigDict.unlock skips the groups below an
    unlocked one)."""
    cfg.unlock()
    for value in cfg.values():
        if isinstance(value, ml_collections.ConfigDict):
            _unlock(value)


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=False, accept_new_attributes=True)
_PARSER = flags.FLAGS["config"].parser = _UnlockingParser(flags.FLAGS["config"].parser)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots.")
flags.mark_flags_as_required(["config", "workdir"])


def check_algorithm_override(file_algorithm: str | None, algorithm: str,
                             config_file: str) -> None:
    """Refuses `--config.algorithm=X` when the config file built another algorithm.

    An algorithm is the set of RL knobs in `config.rl`, which the file built from its preset
    (and adjusted: e.g. `kl_mode='none'`, an overlong buffer sized to the response budget)
    when it ran; `config.algorithm` is only its name. Changing the name alone would run the
    file's algorithm under the new name. Re-deriving `config.rl` from the new preset instead
    would drop the file's adjustments, and config_flags has already applied any
    `--config.rl.*` overrides to the old group by then, so the result would depend on rules
    a reader cannot see. So the override is refused, with the two ways that say what runs: a
    config file that builds the algorithm, or the knobs that differ as `--config.rl.*`
    overrides of this file's algorithm. Raises ValueError naming both.
    """
    if file_algorithm is None or algorithm == file_algorithm:
        return
    from lrmjax.rl import algorithms

    if algorithm not in algorithms.PRESETS:
        raise ValueError(f"config 'algorithm': unknown algorithm {algorithm!r}; valid: "
                         f"{sorted(algorithms.PRESETS)}")
    path = config_file.split(":", 1)[0]
    folder = os.path.dirname(path) or "."
    files = sorted(os.path.relpath(p) for pattern in (f"*_{algorithm}.py", f"*_{algorithm}_*.py")
                   for p in glob.glob(os.path.join(folder, pattern)))
    where = ", ".join(files) or f"e.g. a copy of {path} that calls base_config({algorithm!r})"
    old, new = algorithms.get(file_algorithm), algorithms.get(algorithm)
    knobs = " ".join(f"--config.rl.{k}={new[k]!r}" for k in sorted(new.keys())
                     if new[k] != old[k])
    raise ValueError(
        f"--config.algorithm={algorithm} would only rename the run: {path} built the RL knobs "
        f"(config.rl) from the {file_algorithm!r} preset when it ran. To run {algorithm!r}, "
        f"use a config file that builds it ({where}), or keep config.algorithm and set the "
        f"knobs where the presets differ: {knobs or '(none)'}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    # lrmjax.config imports JAX, so not at module level: reward workers start with `spawn`,
    # which re-imports this module (as __mp_main__) in each worker, and they verify text.
    from lrmjax import config as config_lib

    cfg = _CONFIG.value
    check_algorithm_override(_PARSER.file_algorithm, cfg.get("algorithm"),
                             config_flags.get_config_filename(flags.FLAGS["config"]))
    config_lib.validate(cfg)
    cfg.lock()  # no key is added at run time
    # The CPU device count and malloc settings: before the backend starts (the first
    # jax.devices() call, in rl.train below).
    host.prepare(cfg)
    from lrmjax.train import lifecycle, rl  # after flag parsing: keeps `--help` fast

    try:
        final = rl.train(cfg, _WORKDIR.value)
    except lifecycle.Stopped as e:  # already logged, with how to resume
        sys.exit(128 + e.signum)
    except lifecycle.WorkdirBusy as e:  # a user's mistake, not a bug: no traceback
        sys.exit(f"error: {e}")
    import jax

    if jax.distributed.is_initialized():
        jax.distributed.shutdown()  # a barrier: host 0 hosts the service the others poll
    if final:
        print("final eval: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(final.items())))


if __name__ == "__main__":
    app.run(main)
