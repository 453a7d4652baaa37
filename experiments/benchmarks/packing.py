"""Update time with sequence packing against padded rows, on long-tailed response lengths.

    .venv/bin/python experiments/benchmarks/packing.py                     # bench, full size
    .venv/bin/python experiments/benchmarks/packing.py --scale 0.125 --sequences 32 --rounds 2

The lengths are drawn like a reasoning run's: responses log-normal with median 300 and 95th
percentile 2,000 tokens, capped at a 4,096-token budget R; prompts uniform on [P/4, P] with
P = 256 (every length times --scale). One RL update (`steps.rl_train_step`: GRPO's clipped
loss, on-policy, token-mean, one AdamW step) runs on the same batch two ways:

  padded  N rows of P + R slots, in N / --rows-per-micro microbatches (`train.microbatches`)
  packed  `train.pack_tokens` = P + R: the sequences packed by first-fit-decreasing into rows
          of P + R tokens, in token-budget microbatches of the same slots (`packing.plan`)

Both are compiled first (and run once); then --rounds rounds each time one update of each,
padded first in even rounds and packed first in odd ones, so a slow phase of a shared
machine hits both. Reported: the median wall time of each and the median CPU time of the
process (all threads: less sensitive to a busy neighbour than the wall time), their ratios,
the padding share of the token slots (perf/padding_fraction) and the packed rows. Without
--platform gpu it runs on one CPU device.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[2]))  # lrmjax, uninstalled
import common  # noqa: E402


def lengths(rng: np.random.Generator, n: int, scale: float) -> tuple[np.ndarray, int, int]:
    """Prompt lengths [n], response lengths [n] and the slots (P, R) at `scale`: responses
    log-normal (median 300, p95 2,000) capped at R = 4,096; prompts uniform on [P/4, P]."""
    P, R = max(4, round(256 * scale)), max(8, round(4096 * scale))
    sigma = np.log(2000 / 300) / 1.6449
    resp = np.clip(np.round(rng.lognormal(np.log(300 * scale), sigma, n)), 1, R)
    prompt = rng.integers(max(1, P // 4), P + 1, n)
    return prompt.astype(int), resp.astype(int), P, R


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="bench", help="a name in lrmjax.models.presets")
    p.add_argument("--scale", type=float, default=1.0, help="times every length")
    p.add_argument("--sequences", type=int, default=64, help="responses in the update")
    p.add_argument("--rows-per-micro", type=int, default=4,
                   help="padded rows per microbatch (the packed microbatches hold as many slots)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", help="compute dtype")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    args = p.parse_args()
    if args.platform == "cpu":
        common.force_cpu_devices(1)
    import jax
    import jax.numpy as jnp

    from lrmjax.models import presets, transformer
    from lrmjax.rl import algorithms
    from lrmjax.train import packing, steps
    from lrmjax.train import state as state_lib

    rng = np.random.default_rng(args.seed)
    N = args.sequences
    p_len, r_len, P, R = lengths(rng, N, args.scale)
    L = P + R
    base = presets.get(args.preset)
    cfg = dataclasses.replace(base, max_seq_len=max(base.max_seq_len, L),
                              dtype=jnp.dtype(args.dtype), remat=args.remat)
    mask = np.concatenate([np.arange(P)[None] >= (P - p_len)[:, None],
                           np.arange(R)[None] < r_len[:, None]], axis=1)
    tokens = np.where(mask, rng.integers(1, cfg.vocab_size, mask.shape), 0).astype(np.int32)
    resp = mask[:, P:].astype(np.float32)
    batch = {"tokens": tokens, "mask": mask, "loss_mask": resp,
             "advantages": (rng.normal(size=resp.shape) * resp).astype(np.float32),
             "sampler_logprobs": np.zeros_like(resp)}
    micro = N // args.rows_per_micro
    pl = packing.plan(mask, P, L, packing.micro_rows(N, L, L, micro, 1))
    padded_frac = 1 - mask.sum() / mask.size
    packed_frac = 1 - pl.tokens / pl.slots

    algo = algorithms.get("grpo", kl_mode="none", loss_agg_mode="token-mean")
    params = transformer.init_params(cfg, jax.random.key(0))
    tx = state_lib.adamw(lambda _: 1e-6)
    step = jax.jit(functools.partial(
        steps.rl_train_step, model_cfg=cfg, algo=algo, prompt_len=P, temperature=1.0,
        microbatches=micro, on_policy=True), donate_argnums=(0,))
    padded = jax.device_put(batch)
    packed = jax.device_put({**batch, "pack": pl.arrays()})

    states: dict = {}

    def run(name, data):
        state = states.pop(name)
        t0, c0 = time.perf_counter(), time.process_time()
        state, m = step(state, data)
        loss = float(m["actor/loss"])            # waits for the step
        states[name] = state
        return time.perf_counter() - t0, time.process_time() - c0, loss

    print(common.machine_summary())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=os.path.dirname(__file__)).stdout.strip()
    except OSError:
        commit = "?"
    print(f"commit {commit}; preset {args.preset} ({transformer.count_params(params):,} "
          f"params, {args.dtype}{', remat' if args.remat else ''}); {N} sequences, P = {P}, "
          f"R = {R}; response tokens median {np.median(r_len):.0f}, p95 "
          f"{np.percentile(r_len, 95):.0f}, max {r_len.max()}; {mask.sum():,} real tokens")
    print(f"padded: {N} rows x {L} slots in {micro} microbatches of {args.rows_per_micro}; "
          f"packed: {pl.blocks} microbatches of {pl.rows} rows x {L} tokens")
    for name, data in (("padded", padded), ("packed", packed)):
        states[name] = state_lib.TrainState.create(jax.tree.map(jnp.copy, params), tx)
        t, _, loss = run(name, data)
        print(f"  {name}: first update (compile + run) {t:.1f} s, loss {loss:.6f}", flush=True)
    wall, cpu = {"padded": [], "packed": []}, {"padded": [], "packed": []}
    for r in range(args.rounds):
        order = ("padded", "packed") if r % 2 == 0 else ("packed", "padded")
        for name in order:
            t, c, _ = run(name, padded if name == "padded" else packed)
            wall[name].append(t)
            cpu[name].append(c)
        print(f"  round {r}: padded {wall['padded'][-1]:.2f} s ({cpu['padded'][-1]:.1f} CPU s),"
              f" packed {wall['packed'][-1]:.2f} s ({cpu['packed'][-1]:.1f} CPU s)", flush=True)
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in wall}
    print("| layout | token slots | padding fraction | update s (median) | CPU s (median) |")
    print("|---|---|---|---|---|")
    print(f"| padded | {mask.size:,} | {padded_frac:.3f} | {med['padded'][0]:.2f} | "
          f"{med['padded'][1]:.1f} |")
    print(f"| packed | {pl.slots:,} | {packed_frac:.3f} | {med['packed'][0]:.2f} | "
          f"{med['packed'][1]:.1f} |")
    print(f"packed / padded update time: {med['packed'][0] / med['padded'][0]:.3f} wall, "
          f"{med['packed'][1] / med['padded'][1]:.3f} CPU")


if __name__ == "__main__":
    main()
