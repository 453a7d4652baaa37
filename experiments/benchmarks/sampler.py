"""Sampler throughput: prefill and decode tokens/s, memory, and the fraction of the machine.

Run (2-core CPU, fp32, greedy, prompt 64, exactly 128 new tokens, EOS ignored):

    .venv/bin/python experiments/benchmarks/sampler.py --presets tiny,bench --batches 1,8,32

The GRPO benchmark's rollout (8 prompts x 4 samples at temperature 0.9, 64 new tokens):

    .venv/bin/python experiments/benchmarks/sampler.py --presets bench --batches 8 --n 4 \
        --prompt-len 32 --new-tokens 64 --temperature 0.9

Timing: `Sampler.generate` end to end (host padding included), median of --repeats after one
warm-up call (which compiles). Prefill is timed with max_new_tokens=1 (prefill + the first
token); with N = B * n rows, decode tok/s = N * (R - 1) / (t_total - t_prefill); new tok/s =
N * R / t_total is the figure comparable to the peers' "new tokens/s".

Machine limits: decode at batch 1 reads every weight once per token, so tok/s <= bandwidth /
weight bytes (bandwidth measured with a large jnp.sum); at large batch it is matmul bound:
tok/s <= matmul FLOP/s / cfg.flops_per_token(context) (a 2048^2 fp32 jnp.dot measures FLOP/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,bench")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--devices", type=int, default=1, choices=(1, 8),
                   help="1, or 8 faked CPU devices with the batch sharded over them")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--scan-layers", action="store_true", help="run the blocks with nn.scan")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--n", type=int, default=1, help="samples per prompt (one prefill each)")
    return p.parse_args()


def main() -> None:
    args = _args()
    common.force_cpu_devices(args.devices)
    import jax
    import numpy as np

    from lrmjax import parallel, sampling
    from lrmjax.models import presets, sharding, transformer

    print(common.machine_summary())
    bandwidth = common.memory_bandwidth_gbs()
    gflops = common.matmul_gflops()
    print(f"measured: memory read bandwidth {bandwidth:.1f} GB/s, fp32 2048^2 matmul "
          f"{gflops:.0f} GFLOP/s")
    mesh = parallel.make_mesh((-1, 1, 1)) if args.devices > 1 else None
    P, R = args.prompt_len, args.new_tokens
    sampling_desc = ("greedy" if args.temperature == 0 else f"temperature {args.temperature}")
    if args.n > 1:
        sampling_desc += f", {args.n} samples per prompt (batch = prompts)"
    header = (f"{'preset':>6} {'batch':>5} {'prefill tok/s':>13} {'decode tok/s':>12} "
              f"{'new tok/s':>10} {'total s':>8} {'program MiB':>11} {'peak RSS MiB':>12} "
              f"{'bound tok/s':>11} {'of bound':>8}")
    for name in args.presets.split(","):
        cfg = dataclasses.replace(presets.get(name), scan_layers=args.scan_layers)
        key = jax.random.key(0)
        if mesh is None:
            params = transformer.init_params(cfg, key)
        else:
            params = sharding.init_sharded_params(cfg, key, mesh)
        weight_bytes = 4 * cfg.num_params
        print(f"\n{name}: {cfg.num_params:,} params ({weight_bytes / 2**20:.0f} MiB fp32), "
              f"scan_layers={cfg.scan_layers}, devices={args.devices}, prompt {P}, "
              f"{R} new tokens, {sampling_desc}, fp32")
        print(header)
        sampler = sampling.Sampler(cfg, pad_id=0, stop_ids=(), mesh=mesh)
        rng = np.random.default_rng(0)
        for batch in (int(b) for b in args.batches.split(",")):
            tokens = rng.integers(3, cfg.vocab_size, (batch, P), dtype=np.int32)
            mask = np.ones((batch, P), bool)

            def run(new_tokens, tokens=tokens, mask=mask, sampler=sampler, params=params,
                    key=key):
                sp = sampling.SamplingParams(temperature=args.temperature,
                                             max_new_tokens=new_tokens, n=args.n)
                return sampler.generate(params, tokens, mask, sp, key)

            out = run(R)
            assert int(np.asarray(out.lengths).min()) == R, "EOS must be ignored"
            t_total, _ = common.timeit(lambda: run(R), repeats=args.repeats)
            t_prefill, _ = common.timeit(lambda: run(1), repeats=args.repeats)
            prefill = batch * P / t_prefill
            rows = batch * args.n
            decode = rows * (R - 1) / max(t_total - t_prefill, 1e-9)
            new = rows * R / t_total
            if rows == 1:
                bound = bandwidth * 1e9 / weight_bytes
            else:
                bound = gflops * 1e9 / cfg.flops_per_token(P + R // 2)
            program = max((common.program_memory_mb(c) or 0.0) for c in sampler.programs)
            print(f"{name:>6} {batch:>5} {prefill:>13,.0f} {decode:>12,.0f} {new:>10,.0f} "
                  f"{t_total:>8.3f} {program:>11.1f} {common.peak_rss_mb():>12.0f} "
                  f"{bound:>11,.0f} {decode / bound:>8.0%}")
        print("bound: batch 1 = bandwidth / weight bytes; batch > 1 = matmul FLOP/s / "
              "flops_per_token(prompt + R/2); 'of bound' compares decode tok/s to it")


if __name__ == "__main__":
    main()
