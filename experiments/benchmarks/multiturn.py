"""Multi-turn rollouts: a T-turn episode against one turn of the same length, and against
re-prefilling the whole context every turn (the naive design).

Run (2-core CPU, fp32, random weights, no stops: every turn runs to its cap):

    .venv/bin/python experiments/benchmarks/multiturn.py --presets tiny,bench

Three ways to produce the same B*n rows of prompt + T turns of `--turn` model tokens with
T-1 observations of `--obs` tokens between them (R = T*turn + (T-1)*obs tokens after the
prompt):

* `episodes`: `lrmjax.episodes.EpisodeSampler` (one KV cache; each observation appended
  with one forward pass; earlier turns never recomputed);
* `one turn`: `Sampler.generate` decoding all R tokens in one turn (the same total tokens,
  every one decoded: the target is episodes <= 1.3x of it);
* `re-prefill`: `Sampler.generate` once per turn on the whole context so far as its
  prompt (the previous turns and observations re-encoded every turn).

A second table times ragged episodes, where only every 4th episode goes on after each turn
(the rest answer at once): finished episodes leaving the batch between turns
(`EpisodeSampler(shrink=True)`, the default) against every row kept to the end.

Timing: end to end from the host (padding, the host's step callback and transfers
included), median of --repeats after one warm-up call that compiles every program.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,bench")
    p.add_argument("--batch", type=int, default=8, help="prompts")
    p.add_argument("--n", type=int, default=4, help="episodes per prompt")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--turn", type=int, default=32, help="model tokens per turn")
    p.add_argument("--obs", type=int, default=16, help="observation tokens between turns")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _times(name: str, args: argparse.Namespace) -> tuple[float, ...]:
    """(episodes, one turn, re-prefill, ragged shrunk, ragged kept) seconds for `name`."""
    import dataclasses

    import jax
    import numpy as np

    from lrmjax import episodes, sampling
    from lrmjax.models import presets, transformer

    T, turn, obs = args.turns, args.turn, args.obs
    R = T * turn + (T - 1) * obs
    B, n, P = args.batch, args.n, args.prompt_len
    cfg = dataclasses.replace(presets.get(name), max_seq_len=P + R + 8)
    params = transformer.init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, cfg.vocab_size, (B, P)).astype(np.int32)
    mask = np.ones((B, P), bool)
    key = jax.random.key(1)
    sp = sampling.SamplingParams(temperature=1.0, n=n, max_new_tokens=R)
    observation = [int(x) for x in rng.integers(3, cfg.vocab_size, obs)]

    ep = episodes.EpisodeSampler(cfg, pad_id=0, stop_ids=(), turn_cap=turn,
                                 observation_cap=obs, max_turns=T, prompt_buckets=(P,),
                                 batch_buckets=(B,))
    one = sampling.Sampler(cfg, pad_id=0, stop_ids=(), prompt_buckets=(P,), batch_buckets=(B,))
    naive = sampling.Sampler(cfg, pad_id=0, stop_ids=(),
                             prompt_buckets=tuple(P + k * (turn + obs) for k in range(T)),
                             batch_buckets=(B * n,))
    per_turn = dataclasses.replace(sp, n=1, max_new_tokens=turn)

    def reprefill():
        ctx = np.repeat(tokens, n, axis=0)
        for k in range(T):
            roll = naive.generate(params, ctx, np.ones(ctx.shape, bool), per_turn,
                                  jax.random.fold_in(key, k))
            ctx = np.concatenate([ctx, roll.response_tokens], axis=1)
            if k + 1 < T:
                ctx = np.concatenate([ctx, np.tile(observation, (ctx.shape[0], 1))], axis=1)
        return ctx

    t_ep = _median_time(lambda: ep.run(params, tokens, mask, sp, key,
                                       lambda ends: {e.row: observation for e in ends}),
                        args.repeats)
    t_one = _median_time(lambda: one.generate(params, tokens, mask, sp, key), args.repeats)
    t_naive = _median_time(reprefill, args.repeats)

    def ragged(sampler):
        return lambda: sampler.run(params, tokens, mask, sp, key, lambda ends: {
            e.row: observation for e in ends if e.row % 4 == 0})

    kept = episodes.EpisodeSampler(cfg, pad_id=0, stop_ids=(), turn_cap=turn,
                                   observation_cap=obs, max_turns=T, prompt_buckets=(P,),
                                   batch_buckets=(B,), shrink=False)
    return (t_ep, t_one, t_naive, _median_time(ragged(ep), args.repeats),
            _median_time(ragged(kept), args.repeats))


def main() -> None:
    args = _args()
    common.force_cpu_devices(1)
    print(common.machine_summary())
    T, turn, obs = args.turns, args.turn, args.obs
    print(f"{args.batch} prompts x {args.n} episodes, prompt {args.prompt_len}, {T} turns of "
          f"{turn} tokens, {T - 1} observations of {obs} tokens: "
          f"R = {T * turn + (T - 1) * obs} tokens after the prompt")
    rows = {name: _times(name, args) for name in args.presets.split(",")}
    print("| preset | episodes | one turn (R decoded) | re-prefill per turn | "
          "episodes / one turn | re-prefill / episodes |")
    print("|---|---|---|---|---|---|")
    for name, (t_ep, t_one, t_naive, _, _) in rows.items():
        print(f"| {name} | {t_ep:.3f} s | {t_one:.3f} s | {t_naive:.3f} s | "
              f"{t_ep / t_one:.2f}x | {t_naive / t_ep:.2f}x |")
    print("\nRagged: every 4th episode goes on after each turn")
    print("| preset | finished leave the batch | every row kept | kept / left |")
    print("|---|---|---|---|")
    for name, (_, _, _, t_shrunk, t_kept) in rows.items():
        print(f"| {name} | {t_shrunk:.3f} s | {t_kept:.3f} s | {t_kept / t_shrunk:.2f}x |")


if __name__ == "__main__":
    main()
