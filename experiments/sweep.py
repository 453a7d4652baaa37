"""A sweep over seeds and hyperparameters as one compiled program, with confidence intervals.

    python experiments/sweep.py --config configs/arith_grpo.py --seeds 0-7 \\
        [--grid optim.lr=1e-4,3e-4 --grid rl.clip_ratio_high=0.2,0.28] [--set train.steps=100] \\
        [--out workdirs/sweep/arith_grpo]

The config's task needs a device reward (`lrmjax.train.sweep.DEVICE_REWARDS`; a config without
one is refused, naming what stops it). Every run is the config's whole experiment (warm start,
RL, held-out evaluations every `eval.every` steps) on the device-reward path
(`lrmjax.train.sweep.Program`). Grid keys that vmap can carry (`sweep.TRACEABLE`: learning
rates, KL coefficient, clip ratios, ...) and the seeds run as one jitted `vmap` of runs; any
other grid key (an estimator, a batch size) gives one program per value. `--one-by-one` calls
one compiled run once per run instead (as fast on 2 CPU cores: benchmarks/RESULTS.md).

Writes to --out: `results.md` (per grid point, the final metrics' mean and 95 % t-interval over
the seeds), `curves.png` (reward per step and held-out accuracy per evaluation, mean with the
t-interval as a band) and `runs.json` (every run's final metrics and curves).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, REPO)
# The table, the curves and the final metrics are those of the reproductions (one copy).
from experiments.repro.common import final_metrics, parse_seeds, plot, table  # noqa: E402


def parse_grid(items: list[str]) -> dict[str, list]:
    """['optim.lr=1e-4,3e-4', ...] -> {'optim.lr': [1e-4, 3e-4], ...} (Python literals; a bare
    word stays a string)."""
    grid = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not values:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        parsed = []
        for v in values.split(","):
            try:
                parsed.append(ast.literal_eval(v))
            except (ValueError, SyntaxError):
                parsed.append(v)
        grid[key] = parsed
    return grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="configs/X.py[:arg]")
    parser.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 0,1,2")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a swept config key (repeatable; the grid is their product)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable)")
    parser.add_argument("--out", default=None, help="default: workdirs/sweep/<config name>")
    parser.add_argument("--one-by-one", action="store_true",
                        help="one compiled run called once per run instead of one vmapped "
                             "program: as fast on 2 CPU cores (benchmarks/RESULTS.md), one run "
                             "in memory at a time")
    args = parser.parse_args()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    sys.path.insert(0, REPO)
    from lrmjax import config as config_lib
    from lrmjax import host

    path, _, arg = args.config.partition(":")
    name = os.path.splitext(os.path.basename(path))[0] + (f":{arg}" if arg else "")
    seeds = parse_seeds(args.seeds)
    grid = parse_grid(args.grid)

    def make_config(static: dict):
        cfg = config_lib.from_file(path, arg or None)
        for item in args.set + [f"{k}={v!r}" for k, v in static.items()]:
            key, _, value = item.partition("=")
            config_lib.set_by_path(cfg, key, value)
        return cfg

    host.prepare(make_config({}))  # before JAX starts: the CPU device count
    from lrmjax.train import sweep

    traced = {k: v for k, v in grid.items() if k in sweep.TRACEABLE}
    static = {k: v for k, v in grid.items() if k not in sweep.TRACEABLE}
    for key, values in traced.items():
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"--grid {key}: values must be numbers, got {values}")
    out_dir = args.out or os.path.join(REPO, "workdirs", "sweep", name.replace(":", "_"))
    os.makedirs(out_dir, exist_ok=True)
    points, t_start = [], time.time()
    static_points = [dict(zip(static, vs, strict=True))
                     for vs in itertools.product(*static.values())]
    traced_points = [dict(zip(traced, vs, strict=True))
                     for vs in itertools.product(*traced.values())]
    for fixed in static_points:
        cfg = make_config(fixed)
        program = sweep.Program(cfg, name)
        runs = [(tp, s) for tp in traced_points for s in seeds]
        hparams = {k: [float(tp[k]) for tp, _ in runs] for k in traced}
        t0 = time.time()
        vmapped = not args.one_by_one
        compiled = program.compile_many(len(runs), sorted(hparams), vmapped)
        t1 = time.time()
        out = program.run_many([s for _, s in runs], hparams, compiled, vmapped)
        t2 = time.time()
        how = "in one program" if vmapped else "one by one"
        print(f"{name} {fixed or ''}: {len(runs)} runs {how}, compiled in "
              f"{t1 - t0:.0f} s, ran in {t2 - t1:.0f} s", flush=True)
        for j, tp in enumerate(traced_points):
            idx = list(range(j * len(seeds), (j + 1) * len(seeds)))
            curves = {where: {k: np.asarray(v)[idx].tolist() for k, v in out[where].items()}
                      for where in ("train", "eval")}
            points.append({"point": dict(sorted({**fixed, **tp}.items())), "seeds": seeds,
                           "runs": [final_metrics(out, i) for i in idx], "curves": curves,
                           "seconds": {"compile": t1 - t0, "run": t2 - t1}})

    text = (f"# Sweep of `{name}`\n\n```\npython experiments/sweep.py "
            + " ".join(sys.argv[1:]) + "\n```\n\n"
            f"Seeds {args.seeds} ({len(seeds)} per grid point); each cell: mean over seeds "
            "[95 % confidence interval: Student's t over the seeds]. Held-out metrics are the "
            "last evaluation's (after RL); reward is the training batches' mean over the last 10 "
            "steps.\n\n" + table(points, sweep.t_interval) + "\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "runs.json"), "w") as f:
        json.dump(points, f)
    plot(points, sweep.t_interval, os.path.join(out_dir, "curves.png"))
    print(text)
    print(f"total {time.time() - t_start:.0f} s; wrote {out_dir}/results.md, curves.png, "
          "runs.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
