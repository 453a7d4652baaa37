"""Where the time goes: wall time and XLA's per-op trace of one RL update step or one sampler
call, with the ops grouped by the model code they come from (layers merged).

    .venv/bin/python experiments/benchmarks/op_trace.py train --preset bench      # GRPO step shapes
    .venv/bin/python experiments/benchmarks/op_trace.py train --demo              # make demo shapes
    .venv/bin/python experiments/benchmarks/op_trace.py decode --preset bench --batch 32

`train` times `steps.rl_train_step` (on-policy, KL k3 in the loss when --kl > 0) on random
tokens: N rows of P prompt + R response slots (default 32 x (32 + 64), the GRPO-step
benchmark's shapes; `--demo` uses the demo's model and 256 x (10 + 6)), the rows in groups
of --n sharing a prompt that runs once per group, as the trainer runs it (`--no-shared-prompt`:
once per row). `decode` times
`sampling.generate` (greedy unless --temperature, exactly --new-tokens tokens). Op times
come from the profiler trace; ops that run concurrently overlap, so their sum can exceed the
wall time. Set the device count with --devices (XLA_FLAGS is set before jax starts).
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("train", "decode"))
    p.add_argument("--preset", default="bench")
    p.add_argument("--demo", action="store_true", help="train: the make-demo model and shapes")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--response-len", type=int, default=64)
    p.add_argument("--kl", type=float, default=0.04)
    p.add_argument("--n", type=int, default=4,
                   help="train: responses per prompt (rows come in groups sharing a prompt)")
    p.add_argument("--no-shared-prompt", action="store_true",
                   help="train: run every row's prompt (train.shared_prompt_forward=False)")
    p.add_argument("--batch", type=int, default=32, help="decode: prompts")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0,
                   help="decode: 0 is greedy; train: the loss's temperature (0 means 1)")
    p.add_argument("--stop-id", type=int, action="append", default=[],
                   help="decode: a stop token id (repeatable; none by default, so the loop "
                        "runs all --new-tokens steps either way: a stop id never drawn makes "
                        "the loop test for it)")
    p.add_argument("--stop-check-every", type=int,
                   help="decode: steps between stop tests (default: as Sampler picks it)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="retain: lrmjax.host.retain_freed_memory() as the trainer runs; "
                        "default: glibc's own settings")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    from lrmjax import host

    if args.malloc == "retain":
        host.retain_freed_memory()  # before the backend starts, as the trainer does
    import jax
    import numpy as np

    from lrmjax import config as config_lib
    from lrmjax import parallel, sampling
    from lrmjax.models import presets, sharding
    from lrmjax.tokenizers import CharTokenizer
    from lrmjax.train import steps
    from lrmjax.train.state import TrainState, adamw, lr_schedule, place_state

    mesh = parallel.make_mesh((-1, 1, 1))
    rng = np.random.default_rng(0)
    if args.demo:
        cfg = presets.get("tiny", vocab_size=CharTokenizer().vocab_size, num_layers=2,
                          max_seq_len=64)
        args.rows, args.prompt_len, args.response_len, args.kl, args.n = 256, 10, 6, 0.0, 8
    else:
        cfg = presets.get(args.preset)
    params = sharding.init_sharded_params(cfg, jax.random.key(0), mesh)
    shard = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))  # noqa: E731

    if args.what == "train":
        algo = config_lib.base_config("grpo").rl
        algo.kl_mode, algo.kl_coef = ("loss", args.kl) if args.kl > 0 else ("none", 0.0)
        N, P, R = args.rows, args.prompt_len, args.response_len
        temperature = args.temperature or 1.0  # the loss's; the GRPO-step benchmark's is 0.9
        group = 1 if args.no_shared_prompt else args.n
        state, state_sh = place_state(TrainState.create(
            params, adamw(lr_schedule(1e-6, 0, 100), grad_clip=1.0), kl_coef=args.kl), mesh)
        fn = jax.jit(functools.partial(steps.rl_train_step, model_cfg=cfg, algo=algo,
                                       prompt_len=P, temperature=temperature, on_policy=True,
                                       group_size=group),
                     in_shardings=(state_sh, parallel.batch_sharding(mesh)),
                     out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=(0,))
        mask = np.ones((N, P + R), bool)
        mask[:, :P // 4] = False
        tokens = rng.integers(3, cfg.vocab_size, (N, P + R)).astype(np.int32)
        tokens[:, :P] = np.repeat(tokens[::args.n, :P], args.n, axis=0)  # groups of n
        batch = {"tokens": tokens,
                 "mask": mask, "loss_mask": mask[:, P:].astype(np.float32),
                 "advantages": rng.normal(size=(N, R)).astype(np.float32),
                 "sampler_logprobs": -np.ones((N, R), np.float32),
                 "old_logprobs": -np.ones((N, R), np.float32),
                 "returns": np.zeros((N, R), np.float32)}
        batch = {k: shard(v) for k, v in batch.items()}
        if args.kl > 0:
            batch["ref_logprobs"] = jax.jit(functools.partial(
                steps.response_logprobs, model_cfg=cfg, prompt_len=P, temperature=temperature,
                group_size=group))(
                state.params, batch["tokens"], batch["mask"])
        compiled = fn.lower(state, batch).compile()
        holder = {"state": state}

        def call():
            holder["state"], m = compiled(holder["state"], batch)
            return m
        what = (f"rl_train_step, {cfg.name}, {N} x ({P} + {R}) tokens, kl {args.kl}, "
                f"temperature {temperature}, "
                f"{'shared prompts of ' + str(args.n) + ' rows' if group > 1 else 'no sharing'}")
    else:
        B = args.batch
        sp = sampling.SamplingParams(temperature=args.temperature,
                                     max_new_tokens=args.new_tokens)
        every = args.stop_check_every or sampling.default_stop_check_every(
            parallel.batch_divisor(mesh))
        fn = jax.jit(functools.partial(sampling.generate, cfg=cfg, sampling=sp,
                                       stop_ids=tuple(args.stop_id), pad_id=0,
                                       stop_check_every=every))
        toks = shard(rng.integers(5, cfg.vocab_size, (B, 64)).astype(np.int32))
        mask = shard(np.ones((B, 64), bool))
        key = jax.random.key(0)
        compiled = fn.lower(params, toks, mask, key).compile()
        call = functools.partial(compiled, params, toks, mask, key)
        what = (f"generate, {cfg.name}, batch {B}, prompt 64, {args.new_tokens} new tokens, "
                f"temperature {args.temperature}, stop ids {args.stop_id or 'none'} "
                f"tested every {every} step(s)")

    # Op name -> the model code it came from (layer numbers merged).
    source = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = .*op_name="([^"]+)"', line)
        if m:
            source[m.group(1)] = re.sub(r"layers_\d+", "layers_i", m.group(2))
    jax.block_until_ready(call())
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    wall = sorted(times)[len(times) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            jax.block_until_ready(call())
        trace = glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(trace))["traceEvents"]
    total, ops = collections.Counter(), 0
    for e in events:
        if e.get("ph") == "X" and e["name"] in source:
            kind = re.sub(r"\.\d+$", "", e["name"])
            total[(kind, source[e["name"]])] += e.get("dur", 0) / 1e3
            ops += 1
    print(f"{what}; {jax.device_count()} CPU device(s), malloc {args.malloc}; median wall "
          f"{wall * 1e3:.1f} ms of {args.repeats}; {ops} ops ran (all devices), their times "
          f"(ms, one profiled call) sum to {sum(total.values()):.1f}")
    dots = sum(ms for (_, src), ms in total.items() if src.endswith("dot_general"))
    print(f"matrix products (dot_general) {dots:.1f} ms, every other op "
          f"{sum(total.values()) - dots:.1f} ms")
    for (kind, src), ms in total.most_common(args.top):
        src = src.split("/", 1)[-1].replace("while/body/closed_call/", "")
        print(f"{ms:9.2f}  {kind:26s} {src[-90:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
