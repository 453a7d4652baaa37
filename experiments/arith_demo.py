"""The embedded default (`make demo`): SFT warm start, then GRPO on 3-digit addition, on
several seeds, with a before/after table of held-out greedy accuracy.

    python experiments/arith_demo.py [--seeds 0,1,2] [--workdir workdirs/demo] [--config ARG]
        [--set train.steps=400 --set optim.lr=5e-4 ...]

Each seed is a full `lrmjax.train.rl.train` run of `configs/arith_grpo.py` in
`<workdir>/seed<k>` (rerunning resumes or reuses finished runs). The table compares held-out
greedy pass@1 on 500 unseen problems right after the warm start ("before") with the end of RL
("after").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import run_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "demo"))
    parser.add_argument("--config", default=None, help="config argument, e.g. runlocal")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. optim.lr=5e-4 (repeatable)")
    args = parser.parse_args()
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    sys.path.insert(0, REPO)
    from lrmjax import config as config_lib
    from lrmjax import host

    def make_config(seed: int):
        cfg = config_lib.from_file(os.path.join(REPO, "configs", "arith_grpo.py"), args.config)
        for item in args.set:
            key, _, value = item.partition("=")
            config_lib.set_by_path(cfg, key, value)
        cfg.seed = seed
        cfg.train.progress = False
        config_lib.validate(cfg)
        return cfg

    seeds = [int(s) for s in args.seeds.split(",")]
    # Before the JAX backend starts (the first jax.devices() call): the CPU device count and
    # malloc settings (lrmjax/host.py).
    host.prepare(make_config(seeds[0]))
    from lrmjax.train import rl

    rows = []
    start = time.time()
    for seed in seeds:
        cfg = make_config(seed)
        workdir = os.path.join(args.workdir, f"seed{seed}")
        t0 = time.time()
        summary_path = os.path.join(workdir, "summary.json")
        if not os.path.exists(summary_path):
            rl.train(cfg, workdir)
        with open(summary_path) as f:
            sft_steps = json.load(f)["sft"].get("steps", 0)
        before, after = (e["greedy_pass@1"] for e in run_results.held_out(workdir))
        rows.append((seed, sft_steps, before, after, time.time() - t0))
        print(f"seed {seed}: held-out greedy pass@1 {before:.3f} -> {after:.3f} "
              f"({run_results.change(before, after)}) in {time.time() - t0:.0f} s", flush=True)

    lines = ["| seed | SFT steps | after SFT (before RL) | after RL | change |",
             "|---|---|---|---|---|"]
    for seed, sft_steps, before, after, _ in rows:
        lines.append(f"| {seed} | {sft_steps} | {before:.3f} | {after:.3f} | "
                     f"{run_results.change(before, after)} |")
    table = "\n".join(lines)
    print("\nHeld-out greedy pass@1 on unseen 3-digit additions:\n" + table)
    print(f"\ntotal {time.time() - start:.0f} s. Curves: {args.workdir}/seed*/curves.png; "
          f"TensorBoard: tensorboard --logdir {args.workdir}")
    with open(os.path.join(args.workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
