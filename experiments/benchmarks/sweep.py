"""S RL runs in one program (`vmap`) against the same S runs one after another, on the
device-reward path (`lrmjax.train.pure.train`), and against the host trainer's step time.

Shapes: `demo` is `make demo`'s RL phase (the demo model, 3-digit additions with the answer
reversed, 32 prompts x 8 samples, 6 new tokens, GRPO without KL, the exact device reward);
`small` is the same with 4 prompts x 4 samples, a batch that leaves the device idle between
small ops. For each S: the vmapped program (compiled once for S and warmed up) and S calls of
the one-run program back to back (compiled once and warmed up), timed alternately `--repeats`
times; the tables give each one's fastest repeat (on a shared machine the minimum is the
figure least disturbed by neighbours). `--host` also runs the host trainer
(`lrmjax.train.rl`, no warm start) for the same number of steps per shape and reports S times
its median step (`timing_s/step`) x steps.

    .venv/bin/python experiments/benchmarks/sweep.py [--runs 1,4,8,16] [--steps 10] \\
        [--shapes demo,small] [--repeats 3] [--host]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from lrmjax import host  # noqa: E402

# The host trainer's malloc settings (lrmjax/host.py; a tenth of a step here), before JAX's
# backend starts: without them the pure path is timed at a handicap.
host.retain_freed_memory()

SHAPES = {"demo": (32, 8), "small": (4, 4)}  # prompts, samples per prompt


def host_step_seconds(prompts: int, n: int, steps: int) -> float:
    """Median `timing_s/step` of a host-trainer run of `configs/arith_grpo.py` without the
    warm start (a fresh process, so its XLA device count is the config's)."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "lrmjax.main", "--config",
               os.path.join(REPO, "configs", "arith_grpo.py"), "--workdir", workdir,
               "--config.sft.steps=0", f"--config.train.steps={steps}",
               f"--config.train.batch_prompts={prompts}", f"--config.sampling.n={n}",
               "--config.eval.size=16", "--config.eval.every=0", "--config.eval.k=0",
               "--config.train.export_hf=False", "--config.train.progress=False",
               f"--config.train.checkpoint_every={steps}"]
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    import numpy as np

    times = [r["timing_s/step"] for r in rows if r.get("phase") == "rl" and r["step"] > 1]
    return float(np.median(times))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default="1,4,8,16", help="S values, comma separated")
    p.add_argument("--steps", type=int, default=10, help="RL steps per run")
    p.add_argument("--shapes", default="demo,small")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--host", action="store_true", help="also time the host trainer")
    p.add_argument("--per-step", type=int, default=0, metavar="ROUNDS",
                   help="compare one step of the pure path and of the host trainer instead")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp

    from lrmjax.data.tasks import arithmetic_device
    from lrmjax.models import transformer
    from lrmjax.rl import algorithms
    from lrmjax.sampling import SamplingParams
    from lrmjax.train import pure
    from lrmjax.train.state import TrainState

    tok, cfg, data, tx = common.demo_device_setup()

    def init(seed):
        return TrainState.create(transformer.init_params(cfg, jax.random.key(seed)), tx)

    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s), "
          f"{common.cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{args.steps} RL steps per run, fp32")
    if args.per_step:
        return per_step(args.per_step, data, cfg, init, tok)
    print("| shape | S | one program (s) | one after another (s) | ratio | "
          "host trainer, one after another (s) |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        prompts, n = SHAPES[shape]
        run = functools.partial(
            pure.train, num_steps=args.steps, data=data, model_cfg=cfg,
            algo=algorithms.get("grpo", kl_mode="none", kl_coef=0.0), batch_prompts=prompts,
            sampling=SamplingParams(temperature=1.0, max_new_tokens=6, n=n),
            reward_fn=arithmetic_device.arithmetic_device_reward, stop_ids=(tok.eos_id,),
            pad_id=tok.pad_id)
        one = jax.jit(run)
        jax.block_until_ready(one(init(0), jax.random.key(100)))
        host = host_step_seconds(prompts, n, args.steps + 2) * args.steps if args.host else None
        for count in [int(s) for s in args.runs.split(",")]:
            states = [init(s) for s in range(count)]
            keys = [jax.random.key(100 + s) for s in range(count)]
            many = jax.jit(jax.vmap(run))
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
            jax.block_until_ready(many(stacked, jnp.stack(keys)))
            sequential, together = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for s in range(count):
                    jax.block_until_ready(one(states[s], keys[s]))
                sequential.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                jax.block_until_ready(many(stacked, jnp.stack(keys)))
                together.append(time.perf_counter() - t0)
            sequential, together = min(sequential), min(together)
            host_cell = f"{host * count:.2f}" if host is not None else "-"
            print(f"| {shape} ({prompts}x{n}) | {count} | {together:.2f} | {sequential:.2f} | "
                  f"{sequential / together:.2f}x | {host_cell} |", flush=True)
    return 0


def per_step(rounds: int, data, cfg, init, tok) -> int:
    """The --per-step comparison (module docstring)."""
    import jax
    import numpy as np

    from lrmjax.data.tasks import arithmetic_device
    from lrmjax.rl import algorithms
    from lrmjax.sampling import SamplingParams
    from lrmjax.train import pure

    def step_fn(shared):
        return jax.jit(functools.partial(
            pure.rl_step, data=data, model_cfg=cfg, shared_prompt=shared,
            algo=algorithms.get("grpo", kl_mode="none", kl_coef=0.0), batch_prompts=32,
            sampling=SamplingParams(temperature=1.0, max_new_tokens=6, n=8),
            reward_fn=arithmetic_device.arithmetic_device_reward, stop_ids=(tok.eos_id,),
            pad_id=tok.pad_id))

    def median_step(fn, calls=30):
        state, _ = fn(init(0), jax.random.key(0))
        times = []
        for i in range(calls):
            t0 = time.perf_counter()
            state, _ = fn(state, jax.random.key(i + 1))
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    fns = {"pure, shared prompt": step_fn(True), "pure, no shared prompt": step_fn(False)}
    results: dict[str, list[float]] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            results.setdefault(name, []).append(median_step(fn))
        results.setdefault("host trainer", []).append(host_step_seconds(32, 8, 32))
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in results.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    print("| path | s per step (median of the rounds' medians) |\n|---|---|")
    for name, values in results.items():
        print(f"| {name} | {np.median(values):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
