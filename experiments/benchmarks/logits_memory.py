"""Temporaries of the RL loss's LM head, one pass against chunks (`steps.head_logprobs`).

    .venv/bin/python experiments/benchmarks/logits_memory.py

Compiles (ahead of time, from shapes: nothing is allocated) the value and gradient of a
loss over log p(target) and the entropy at every position, for a Qwen2.5-1.5B-shaped head
(hidden 1536, vocabulary 151,936) over 8 x 4,096 positions, and prints XLA's temporary
bytes for several `train.logits_chunk_mb` budgets. XLA:CPU's buffer assignment approximates
an accelerator's; the one-pass figure is dominated by the [tokens, V] logits and their
gradient, which chunking removes on any backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--positions", type=int, default=4096)
    p.add_argument("--budgets", default="0,256,1024", help="train.logits_chunk_mb values")
    args = p.parse_args()
    common.force_cpu_devices(1)
    import jax
    import jax.numpy as jnp

    from lrmjax.models import presets, transformer
    from lrmjax.train import steps

    cfg = dataclasses.replace(presets.get("tiny"), vocab_size=args.vocab,
                              hidden_size=args.hidden, tie_embeddings=False)
    head = {"lm_head": transformer.param_shapes(cfg)["lm_head"]}
    hidden = jax.ShapeDtypeStruct((args.rows, args.positions, args.hidden), jnp.float32)
    targets = jax.ShapeDtypeStruct((args.rows, args.positions), jnp.int32)
    tokens = args.rows * args.positions
    print(common.machine_summary())
    print(f"vocabulary {args.vocab}, hidden {args.hidden}, {args.rows} x {args.positions} "
          f"positions: full fp32 logits {tokens * args.vocab * 4 / 2**30:.2f} GiB")
    print("| train.logits_chunk_mb | tokens per chunk | temporaries (loss + gradient) |")
    print("|---|---|---|")
    for budget in (float(b) for b in args.budgets.split(",")):
        def loss(p, h, t, budget=budget):
            lp, ent = steps.head_logprobs(cfg, p, h, t, 1.0, budget)
            return jnp.mean(lp) + 0.01 * jnp.mean(ent)

        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
            head, hidden, targets).compile()
        chunk = steps.logits_chunk(tokens, args.vocab, budget) or tokens
        temp = compiled.memory_analysis().temp_size_in_bytes
        print(f"| {budget:g} | {chunk} | {temp / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
