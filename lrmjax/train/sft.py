"""Supervised warm start on task demonstrations, for models that cannot yet produce the
answer format (RL needs some reward signal to start from)."""

from __future__ import annotations

import functools
import time
from typing import Any

import jax

from lrmjax import parallel
from lrmjax.data import datasets
from lrmjax.train import evaluate as eval_lib
from lrmjax.train import steps
from lrmjax.train.inputs import Inputs, demonstrations
from lrmjax.train.state import TrainState, adamw, lr_schedule


def warm_start(inp: Inputs, state: TrainState, writer: Any) -> tuple[TrainState, dict]:
    """Trains on (prompt, demonstration) pairs for `sft.steps` steps, or until held-out greedy
    accuracy reaches `sft.target_accuracy` (checked every `sft.eval_every` steps).

    Returns the state with the new params (and a fresh SFT optimizer's state, which the RL
    phase discards) and the SFT summary metrics.
    """
    cfg = inp.cfg
    s = cfg.sft
    tx = adamw(lr_schedule(s.lr, s.warmup_steps, s.steps, "constant"),
               grad_clip=cfg.optim.grad_clip)
    state = TrainState.create(state.params, tx)
    step_fn = jax.jit(functools.partial(steps.sft_train_step, model_cfg=inp.model_cfg),
                      donate_argnums=(0,))
    # A separate shuffle of the training prompts (seeded apart from the RL iterator's); each
    # host reads its block of every global batch.
    hosts = jax.process_count()
    data = iter(datasets.PromptDataset(inp.train_source, s.batch_size // hosts,
                                       seed=cfg.seed + 1, shard_index=jax.process_index(),
                                       shard_count=hosts))
    t0 = time.perf_counter()
    accuracy, step = float("nan"), 0
    for step in range(1, s.steps + 1):
        batch = {k: parallel.host_to_global(v, inp.mesh) for k, v in
                 demonstrations(inp, next(data)).items()}
        state, m = step_fn(state, batch)
        if step % 10 == 0:
            writer.write(step, jax.device_get(m), phase="sft")
        if step % s.eval_every == 0 or step == s.steps:
            accuracy = _greedy_accuracy(inp, state.params, inp.eval_examples[:s.eval_size])
            writer.write(step, {"sft/eval_greedy_pass@1": accuracy}, phase="sft")
            writer.log(f"sft step {step}: loss {float(m['sft/loss']):.3f}, held-out greedy "
                       f"accuracy {accuracy:.3f}")
            if accuracy >= s.target_accuracy:
                break
    return state, {"steps": step, "eval_greedy_pass@1": accuracy,
                   "seconds": time.perf_counter() - t0}


def _greedy_accuracy(inp: Inputs, params: Any, examples: list) -> float:
    out = eval_lib.evaluate_run(inp, params, jax.random.key(0), examples, k=0)
    return float(out["eval/greedy_pass@1"])
