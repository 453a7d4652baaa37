"""How fast the speed targets could possibly be met here: floors from XLA:CPU's own GEMM rate
at the exact shapes the models multiply, and from the machine's read bandwidth.

    .venv/bin/python experiments/benchmarks/floor.py
    .venv/bin/python experiments/benchmarks/floor.py --tunix-decode 120,824 --tunix-grpo 9.79

Decoding and the GRPO step spend most of their time multiplying activations by weight
matrices. This script times those GEMMs alone, jitted on 1 CPU device in fp32, at the shapes
of the `bench` preset in each phase (a distinct weight matrix per layer, so the
weights stream from memory as they do in the model), and adds them up:

- decode, batch B: 127 steps of [B, D] x every weight (the first of 128 new tokens comes from
  the prefill), plus the prefill of B x 64 prompt tokens; at batch 1 the floor is instead the
  weight bytes read once per token at the measured read bandwidth;
- a GRPO step (8 prompts x 4 samples, prompts of 32 and 64 new tokens, KL in the loss): the
  sampler (one prefill of the 8 prompts, 63 decode steps of 32 rows), the reference forward
  (2,272 token-passes: each group's prompt once and its 4 responses without their last token,
  as the trainer's shared-prompt forward runs them; the vocabulary head on the 2,048 response
  positions) and the update (the same forward plus two GEMMs per weight in the backward: the
  input and weight gradients).

Everything else (attention over the cache, softmax, norms, sampling, the optimizer) adds
time, so each sum is a floor *for this compiler on this machine*: a phase cannot be faster
than its weight GEMMs at the rate XLA:CPU reaches for those shapes. A faster GEMM library,
another machine or bf16 would lower it. The targets come from the Tunix figures measured by
vs_peers.py and grpo_step.py (pass the latest with --tunix-decode / --tunix-grpo).

The tiny model is left out: its GEMMs are too small to bound its step, which goes mostly to
the fixed cost of hundreds of small ops per layer pass (and split over 2 devices its GEMMs run
faster than the 1-device rates measured here).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import common  # noqa: E402

# The grpo_step.py shapes (prompts x samples, prompt slots, new tokens) and vs_peers.py's.
GRPO_PROMPTS, GRPO_N, GRPO_P, GRPO_R = 8, 4, 32, 64
DECODE_PROMPT, DECODE_NEW = 64, 128


def weight_shapes(cfg) -> list[tuple[str, int, int]]:
    """(name, in, out) of one layer's weight matrices."""
    D, H, K, d, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
    return [("q", D, H * d), ("k", D, K * d), ("v", D, K * d), ("o", H * d, D),
            ("gate", D, F), ("up", D, F), ("down", F, D)]


# kind -> (einsum, A's shape, B's shape) in terms of M, K, N.
GEMMS = {
    "fwd": ("mk,kn->mn", "MK", "KN"),       # x [M, K] @ W [K, N]
    "dx": ("mn,kn->mk", "MN", "KN"),        # dy [M, N] @ W^T: the input gradient
    "dw": ("mk,mn->kn", "MK", "MN"),        # x^T @ dy: the weight gradient
    "head_fwd": ("mk,nk->mn", "MK", "NK"),  # x @ E^T, the table E stored [V, D]
    "head_dx": ("mn,nk->mk", "MN", "NK"),   # dlogits @ E
    "head_dw": ("mn,mk->nk", "MN", "MK"),   # dlogits^T @ x
}


def operand_shapes(kind: str, M: int, K: int, N: int) -> tuple[tuple[int, ...], ...]:
    dims = {"M": M, "K": K, "N": N}
    return tuple(tuple(dims[c] for c in spec) for spec in GEMMS[kind][1:])


class GemmTimer:
    """Seconds per GEMM of a given kind and shape, measured once and cached.

    `kind` is a key of GEMMS: a weight's forward product and the two backward products, for
    a [K, N] kernel or for the vocabulary head's [V, D] table (as the tied model stores it).
    """

    def __init__(self, repeats: int):
        self.repeats, self.cache, self.rows = repeats, {}, []

    def __call__(self, kind: str, M: int, K: int, N: int, count: int) -> float:
        key = (kind, M, K, N)
        if key not in self.cache:
            self.cache[key] = self._measure(kind, M, K, N, count)
            t = self.cache[key]
            self.rows.append((kind, M, K, N, t, 2 * M * K * N / t / 1e9))
        return self.cache[key]

    def _measure(self, kind: str, M: int, K: int, N: int, count: int) -> float:
        import jax
        import jax.numpy as jnp
        import numpy as np

        rng = np.random.default_rng(0)
        arr = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32))  # noqa: E731
        eq = GEMMS[kind][0]
        a_shape, b_shape = operand_shapes(kind, M, K, N)
        a = arr(*a_shape)
        bs = [arr(*b_shape) for _ in range(count)]  # one per layer: no reuse from caches

        def chain(a, bs):
            # One GEMM at a time, each with the whole machine, as a layer's GEMM runs at
            # best: the barrier makes the next GEMM's input wait for this GEMM's output.
            # Every product is an output, so XLA can neither skip nor shrink one (it folds a
            # slice or a reduction of a result into the GEMM).
            outs = []
            for b in bs:
                out = jnp.einsum(eq, a, b)
                a, out = jax.lax.optimization_barrier((a, out))
                outs.append(out)
            return outs

        fn = jax.jit(chain)
        _, times = common.timeit(lambda: fn(a, bs), repeats=self.repeats)
        return min(times) / count  # the best run: a floor, not a typical time


def forward_gemms(timer: GemmTimer, cfg, rows: int, head_rows: int) -> float:
    """Seconds of one forward's weight GEMMs: every layer at `rows` tokens, the head at
    `head_rows` (0: no head)."""
    t = sum(timer("fwd", rows, k, n, cfg.num_layers) for _, k, n in weight_shapes(cfg))
    t *= cfg.num_layers
    if head_rows:
        t += timer("head_fwd", head_rows, cfg.hidden_size, cfg.vocab_size, 1)
    return t


def backward_gemms(timer: GemmTimer, cfg, rows: int, head_rows: int) -> float:
    """Seconds of the backward's weight GEMMs: the input and weight gradient of each."""
    t = sum(timer("dx", rows, k, n, cfg.num_layers) + timer("dw", rows, k, n, cfg.num_layers)
            for _, k, n in weight_shapes(cfg)) * cfg.num_layers
    V, D = cfg.vocab_size, cfg.hidden_size
    return t + timer("head_dx", head_rows, D, V, 1) + timer("head_dw", head_rows, D, V, 1)


def decode_floor(timer: GemmTimer, cfg, batch: int) -> float:
    """Seconds for `DECODE_NEW` new tokens of `batch` rows after a `DECODE_PROMPT` prefill."""
    prefill = forward_gemms(timer, cfg, batch * DECODE_PROMPT, batch)
    return prefill + (DECODE_NEW - 1) * forward_gemms(timer, cfg, batch, batch)


def grpo_floor(timer: GemmTimer, cfg) -> dict[str, float]:
    rows = GRPO_PROMPTS * GRPO_N
    # As train.shared_prompt_forward runs them (steps.grouped_hidden): each prompt once, each
    # response without its last token; the head on every response position.
    tokens, response = GRPO_PROMPTS * GRPO_P + rows * (GRPO_R - 1), rows * GRPO_R
    sample = (forward_gemms(timer, cfg, GRPO_PROMPTS * GRPO_P, GRPO_PROMPTS)
              + (GRPO_R - 1) * forward_gemms(timer, cfg, rows, rows))
    ref = forward_gemms(timer, cfg, tokens, response)
    update = ref + backward_gemms(timer, cfg, tokens, response)
    return {"sample": sample, "reference": ref, "update": update,
            "step": sample + ref + update}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tunix-decode", default="120,824",
                   help="Tunix new tok/s at batch 1 and 32 (vs_peers.py)")
    p.add_argument("--tunix-grpo", type=float, default=9.79,
                   help="Tunix s/step on bench (grpo_step.py)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    common.force_cpu_devices(1)
    from lrmjax.models import presets

    tunix_b1, tunix_b32 = (float(x) for x in args.tunix_decode.split(","))
    timer = GemmTimer(args.repeats)
    bench = presets.get("bench")
    print(common.machine_summary())
    bandwidth = common.memory_bandwidth_gbs()
    print(f"measured: read bandwidth {bandwidth:.1f} GB/s, fp32 2048^2 matmul "
          f"{common.matmul_gflops():.0f} GFLOP/s")

    lines = []
    weight_bytes = bench.num_params * 4
    b1 = bandwidth * 1e9 / weight_bytes
    lines.append(f"decode bench batch 1: {weight_bytes / 2**20:.0f} MiB of weights per token at "
                 f"{bandwidth:.1f} GB/s -> at most {b1:,.0f} new tok/s; target 1.5x Tunix = "
                 f"{1.5 * tunix_b1:,.0f} ({b1 / tunix_b1:.2f}x Tunix at best)")
    t32 = decode_floor(timer, bench, 32)
    b32 = 32 * DECODE_NEW / t32
    lines.append(f"decode bench batch 32: weight GEMMs {t32:.2f} s for {DECODE_NEW} tokens -> at "
                 f"most {b32:,.0f} new tok/s; target 2x Tunix = {2 * tunix_b32:,.0f} "
                 f"({b32 / tunix_b32:.2f}x Tunix at best)")
    f = grpo_floor(timer, bench)
    lines.append(f"GRPO step bench: weight GEMMs {f['step']:.2f} s (sample {f['sample']:.2f} + "
                 f"reference {f['reference']:.2f} + update {f['update']:.2f}); target 0.5x Tunix "
                 f"= {0.5 * args.tunix_grpo:.2f} s ({f['step'] / args.tunix_grpo:.2f}x Tunix at "
                 "best)")

    print("\nGEMM rates (1 CPU device, fp32; kind M K N: ms per GEMM, GFLOP/s)")
    for kind, M, K, N, t, gf in sorted(timer.rows, key=lambda r: (-r[1], r[0])):
        print(f"  {kind:9s} {M:6d} {K:6d} {N:6d} {t * 1e3:9.3f} {gf:7.0f}")
    print("\nfloors (weight GEMMs only, at the rates above; everything else adds time):")
    for line in lines:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
