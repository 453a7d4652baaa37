"""Seconds per RL step of the device-reward path (`lrmjax.train.pure`), one run vs S runs
vmapped into one program, on the `make demo` shapes.

The demo's model (2 layers, width 128, character vocabulary), 3-digit additions with the
answer reversed, 32 prompts x 8 samples, 6 new tokens, GRPO without KL, the exact device
reward. Each configuration compiles `pure.train(num_steps=K)` once, runs it once to warm up,
then times one more call; it prints seconds per step of the whole program and per run-step.

    .venv/bin/python experiments/benchmarks/pure_vmap.py [--seeds 1,3] [--steps 20]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from lrmjax import host  # noqa: E402

host.retain_freed_memory()  # the trainer's malloc settings (lrmjax/host.py), before JAX starts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,3", help="vmapped runs per program, comma separated")
    p.add_argument("--steps", type=int, default=20)
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
    run = functools.partial(
        pure.train, num_steps=args.steps, data=data, model_cfg=cfg,
        algo=algorithms.get("grpo", kl_mode="none", kl_coef=0.0), batch_prompts=32,
        sampling=SamplingParams(temperature=1.0, max_new_tokens=6, n=8),
        reward_fn=arithmetic_device.arithmetic_device_reward, stop_ids=(tok.eos_id,),
        pad_id=tok.pad_id)

    def init(seed):
        return TrainState.create(transformer.init_params(cfg, jax.random.key(seed)), tx)

    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s); "
          f"32 prompts x 8 samples, 6 new tokens, {args.steps} steps per call, fp32")
    print("| runs vmapped | s per program step | s per run-step | vs 1 run |")
    print("|---|---|---|---|")
    base = None
    for count in [int(s) for s in args.seeds.split(",")]:
        states = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(s) for s in range(count)])
        keys = jnp.stack([jax.random.key(100 + s) for s in range(count)])
        fn = jax.jit(jax.vmap(run))
        jax.block_until_ready(fn(states, keys))
        t0 = time.perf_counter()
        jax.block_until_ready(fn(states, keys))
        per_step = (time.perf_counter() - t0) / args.steps
        per_run_step = per_step / count
        base = base or per_run_step
        print(f"| {count} | {per_step:.3f} | {per_run_step:.3f} | {base / per_run_step:.2f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
