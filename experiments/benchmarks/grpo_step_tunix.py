"""Tunix's GRPO learner timed on a local HF Qwen2 checkpoint (runs inside the Tunix venv).

Started by `grpo_step.py` as a subprocess with the Tunix venv's interpreter (google-tunix
0.1.7 never enters lrmjax's dependencies). It measures Tunix as the peers did
(/work/shared/peers/tunix_grpo_step.py): weights loaded from the safetensors, the actor, the
reference and the rollout share one (empty) mesh on one CPU device, vanilla rollout engine,
`kv_cache_size` = prompt + new tokens, no stop token (`eos_tokens=[-1]`), temperature 0.9,
`GRPOConfig(num_generations=4, num_iterations=1, beta=0.04)`, adamw(1e-6), and a cheap
length reward `len(completion) / 100`. A GRPO step is rollout -> reward -> reference (and
old-policy) logprobs -> advantages -> update; the reward function stamps the wall clock each
time it is called (once per step), so the interval between consecutive stamps is one full
step in steady state (the first `warmup` intervals include compilation and are dropped by
the caller).

Usage (normally via grpo_step.py):
  JAX_PLATFORMS=cpu .bench-venvs/tunix/bin/python grpo_step_tunix.py --model DIR \
      --prompts prompts.json --new-tokens 64 --prompt-len 32
Prints one JSON line on stdout: {"stamps": [...] (s since train() began), "total_s",
"train_steps", "mean_chars": [...], "mean_words": [...] (tokens per completion, per step)}.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (standard library only at import; tunix inside its functions)


def main(args: argparse.Namespace) -> dict:
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.interpreters import pxla
    from tunix.models.qwen2 import params as qp
    from tunix.rl import rl_cluster as rc
    from tunix.rl.grpo import grpo_learner as gl
    from tunix.rl.rollout import base_rollout

    path = pathlib.Path(args.model)
    cfg = common.tunix_model_config(path)
    actor = qp.create_model_from_safe_tensors(str(path), cfg, mesh=None, dtype=jnp.float32)
    ref = qp.create_model_from_safe_tensors(str(path), cfg, mesh=None, dtype=jnp.float32)
    mesh = pxla.thread_resources.env.physical_mesh  # the empty mesh, as the peers ran it
    steps = json.loads(pathlib.Path(args.prompts).read_text())  # [steps][prompts] id lists
    cluster_cfg = rc.ClusterConfig(
        role_to_mesh={rc.Role.ACTOR: mesh, rc.Role.REFERENCE: mesh, rc.Role.ROLLOUT: mesh},
        rollout_engine="vanilla", offload_to_cpu=False,
        training_config=rc.RLTrainingConfig(actor_optimizer=optax.adamw(1e-6),
                                            eval_every_n_steps=10**6, max_steps=len(steps)),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=args.new_tokens, max_prompt_length=args.prompt_len,
            kv_cache_size=args.prompt_len + args.new_tokens, temperature=args.temperature,
            eos_tokens=[-1]),
    )
    cluster = rc.RLCluster(actor=actor, reference=ref, tokenizer=common.IntTok(),
                           cluster_config=cluster_cfg)
    stamps: list[float] = []
    mean_chars: list[float] = []
    mean_words: list[float] = []  # = generated tokens per completion ("id id id")

    def len_reward(prompts, completions, **kw):
        stamps.append(time.perf_counter())
        mean_chars.append(float(np.mean([len(c) for c in completions])))
        mean_words.append(float(np.mean([len(c.split()) for c in completions])))
        return [len(c) / 100.0 for c in completions]

    learner = gl.GRPOLearner(
        cluster, gl.GRPOConfig(num_generations=args.n, num_iterations=1, beta=args.beta),
        reward_fns=[len_reward])
    data = [{"prompts": np.array([" ".join(map(str, p)) for p in batch])} for batch in steps]
    start = time.perf_counter()
    learner.train(data)
    end = time.perf_counter()
    return {"stamps": [s - start for s in stamps], "total_s": end - start,
            "train_steps": int(cluster.actor_trainer.train_steps), "mean_chars": mean_chars,
            "mean_words": mean_words}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="HF checkpoint directory")
    p.add_argument("--prompts", required=True, help="JSON: [steps][prompts] lists of ids")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--temperature", type=float, default=0.9)
    return p.parse_args(argv)


if __name__ == "__main__":
    _out = sys.stdout
    sys.stdout = sys.stderr  # Tunix's chatter must not corrupt the one JSON result line
    _result = main(parse_args())
    print(json.dumps(_result), file=_out, flush=True)
