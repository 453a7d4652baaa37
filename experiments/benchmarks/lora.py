"""LoRA sampling: adapters in every forward of the sampler vs weights merged once per rollout.

Run (2-core CPU, fp32, the GRPO benchmark's rollout: 8 prompts x 4 samples at temperature
0.9, prompt 32, exactly 64 new tokens, EOS ignored):

    .venv/bin/python experiments/benchmarks/lora.py --preset bench --ranks 8,32

Per rank, three timings of one rollout (`sampling.generate`, jitted; median of --repeats
after a warm-up call that compiles, the variants taking turns so that a drifting load on the
machine hits each alike): `base` (the params alone, no adapters: the floor),
`adapters` (base + adapters, `lora.LoraParams`: what `model.lora.merge_for_sampling=False`
runs) and `merged` (`lora.merge` then a rollout on the merged weights, the merge included:
`merge_for_sampling=True`); `merge` alone is also timed. The last column, adapters / merged,
above 1 means merging first is faster. Adapters have non-zero A and B (a trained state).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench")
    p.add_argument("--ranks", default="8,32")
    p.add_argument("--targets", default="q,k,v,o,gate,up,down")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args()


def main() -> None:
    args = _args()
    common.force_cpu_devices(1)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lrmjax import sampling
    from lrmjax.models import lora, presets, transformer

    print(common.machine_summary())
    P, R, B = args.prompt_len, args.new_tokens, args.prompts
    cfg0 = presets.get(args.preset)
    base = transformer.init_params(cfg0, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths = rng.integers(P // 2, P + 1, B)
    mask = jnp.asarray(np.arange(P)[None, :] >= (P - lengths)[:, None])
    tokens = jnp.where(mask, jnp.asarray(rng.integers(1, cfg0.vocab_size, (B, P))), 0)
    sp = sampling.SamplingParams(temperature=args.temperature, max_new_tokens=R, n=args.n)
    print(f"{args.preset}: {cfg0.num_params:,} params, {B} prompts x {args.n} samples, prompt "
          f"{P}, {R} new tokens, temperature {args.temperature}, fp32, targets {args.targets}")
    print(f"{'rank':>5} {'adapter params':>14} {'base s':>7} {'adapters s':>10} "
          f"{'merged s':>9} {'merge s':>8} {'adapters/base':>13} {'adapters/merged':>15}")
    for rank in (int(r) for r in args.ranks.split(",")):
        cfg = dataclasses.replace(cfg0, lora_rank=rank,
                                  lora_targets=tuple(args.targets.split(",")))
        adapters = lora.init_adapters(cfg, jax.random.key(1))
        leaves, tree = jax.tree.flatten(adapters)  # B = 0 would be a no-op update: make it not
        keys = jax.random.split(jax.random.key(2), len(leaves))
        adapters = jax.tree.unflatten(tree, [x + 0.01 * jax.random.normal(k, x.shape)
                                             for x, k in zip(leaves, keys, strict=True)])
        print(_row(rank, cfg, base, adapters, tokens, mask, sp, args.repeats))


def _row(rank, cfg, base, adapters, tokens, mask, sp, repeats) -> str:
    """One table row: the timings of the module docstring for these adapters."""
    import jax

    from lrmjax import sampling
    from lrmjax.models import lora, transformer

    gen = jax.jit(functools.partial(sampling.generate, cfg=cfg, sampling=sp, stop_ids=(),
                                    pad_id=0))
    merge = jax.jit(functools.partial(lora.merge, cfg=cfg))
    key = jax.random.key(3)
    runs = {"base": lambda: gen(base, tokens, mask, key),
            "adapters": lambda: gen(lora.LoraParams(base, adapters), tokens, mask, key),
            "merged": lambda: gen(merge(base, adapters), tokens, mask, key),
            "merge": lambda: merge(base, adapters)}
    for fn in runs.values():  # compile
        common.block(fn())
    # Round robin: a load that drifts during the measurement hits every variant alike.
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(common.timeit(fn, repeats=1, warmup=0)[0])
    t_base, t_ad, t_merged, t_merge = (statistics.median(times[k]) for k in runs)
    return (f"{rank:>5} {transformer.count_params(adapters):>14,} {t_base:>7.3f} "
            f"{t_ad:>10.3f} {t_merged:>9.3f} {t_merge:>8.3f} {t_ad / t_base:>13.2f} "
            f"{t_ad / t_merged:>15.2f}")


if __name__ == "__main__":
    main()
