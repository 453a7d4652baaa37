"""Supervised warm start on task demonstrations, for models that cannot yet produce the
answer format (RL needs some reward signal to start from).

The warm start checkpoints itself to `workdir/sft` (params, optimizer state, data position,
summary so far) every `sft.eval_every` steps, at its end, and when a stop signal arrives; a
killed or stopped warm start resumes at its last checkpoint and ends as an uninterrupted one
would. Its last checkpoint, marked done, lets a run killed before its first RL checkpoint skip
the warm start on rerun.

With `sft.from_workdir` the run trains no warm start: it takes the params of that run's
finished one and saves them as its own last checkpoint (so a resume, a LoRA base and
`evaluate_checkpoint.py --warm-start` read this workdir alone), its summary marked with where
it came from.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax

from lrmjax import parallel
from lrmjax.data import datasets
from lrmjax.train import checkpoint as ckpt_lib
from lrmjax.train import evaluate as eval_lib
from lrmjax.train import policy as policy_lib
from lrmjax.train import steps
from lrmjax.train.inputs import Inputs, demonstrations
from lrmjax.train.state import TrainState, adamw, lr_schedule, place_state


def checkpointer(workdir: str) -> ckpt_lib.Checkpointer:
    """The warm start's checkpoints: `workdir/sft`, the last one kept."""
    return ckpt_lib.Checkpointer(workdir, keep=1, best_metric=None, name="sft", owner=True)


def warm_start(inp: Inputs, state: TrainState, writer: Any, ckpt: ckpt_lib.Checkpointer,
               run: Any) -> tuple[TrainState, dict]:
    """Trains on (prompt, demonstration) pairs for `sft.steps` steps, or until held-out greedy
    accuracy reaches `sft.target_accuracy` (checked every `sft.eval_every` steps), resuming
    from `ckpt`'s last checkpoint if there is one. `run` (`lifecycle.Run`) is asked for a stop
    after each step.

    Returns the state with the new params (and a fresh SFT optimizer's state, which the RL
    phase discards) and the SFT summary metrics.
    """
    cfg = inp.cfg
    s = cfg.sft
    tx = adamw(lr_schedule(s.lr, s.warmup_steps, s.steps, "constant"),
               grad_clip=cfg.optim.grad_clip)
    # Every leaf in a NamedSharding on the mesh: a restored state comes back in these.
    state, _ = place_state(TrainState.create(state.params, tx), inp.mesh)
    step_fn = jax.jit(parallel.in_mesh(functools.partial(steps.sft_train_step,
                                                         model_cfg=inp.model_cfg), inp.mesh),
                      donate_argnums=(0,))
    # A shuffle of the warm start's examples (`Inputs.sft_source`: the training prompts unless
    # config 'sft.task_kwargs' gives a pool of its own), seeded apart from the RL iterator's;
    # each host reads its block of every global batch.
    hosts = jax.process_count()
    data = iter(datasets.PromptDataset(inp.sft_source, s.batch_size // hosts,
                                       seed=cfg.seed + 1, shard_index=jax.process_index(),
                                       shard_count=hosts))
    summary = {"steps": 0, "eval_greedy_pass@1": float("nan"), "seconds": 0.0}
    if ckpt.latest_step() is None and s.from_workdir:
        summary = _finished_warm_start(cfg, s.from_workdir)
        # Its params alone: this run's SFT optimizer (its state unused; RL starts its own) may
        # be built otherwise, e.g. another 'optim.grad_clip'.
        state = state.replace(params=policy_lib.warm_start_params(inp, s.from_workdir))
        ckpt.save(summary["steps"], state, {"done": True, "data": ckpt_lib.data_positions(data),
                                            "summary": summary})
        writer.log(f"warm start from {summary['from_workdir']} (SFT step {summary['steps']}, "
                   f"held-out greedy accuracy {summary['eval_greedy_pass@1']:.3f})")
        ckpt.close()
        return state, summary
    if (latest := ckpt.latest_step()) is not None:
        state, extras = ckpt.restore(latest, state)
        ckpt_lib.restore_data_position(data, extras["data"])
        summary = extras["summary"]
        if extras["done"]:
            ckpt.close()
            return state, summary
        writer.log(f"resumed the warm start from {ckpt.manager.directory} at step {latest}")
    t0 = time.perf_counter() - summary["seconds"]
    for step in range(summary["steps"] + 1, s.steps + 1):
        batch = {k: parallel.host_to_global(v, inp.mesh) for k, v in
                 demonstrations(inp, next(data)).items()}
        state, m = step_fn(state, batch)
        if step % 10 == 0:
            writer.write(step, jax.device_get(m), phase="sft")
        evaluate, done = step % s.eval_every == 0, step == s.steps
        if evaluate or done:
            accuracy = _greedy_accuracy(inp, state.params, inp.eval_examples[:s.eval_size])
            writer.write(step, {"sft/eval_greedy_pass@1": accuracy}, phase="sft")
            writer.log(f"sft step {step}: loss {float(m['sft/loss']):.3f}, held-out greedy "
                       f"accuracy {accuracy:.3f}")
            summary["eval_greedy_pass@1"] = accuracy
            done = done or accuracy >= s.target_accuracy
        summary.update(steps=step, seconds=time.perf_counter() - t0)
        stop = run.stop_requested()
        if evaluate or done or stop:
            ckpt.save(step, state, {"done": done, "data": ckpt_lib.data_positions(data),
                                    "summary": summary})
        if stop:
            ckpt.wait()
            run.stop(f"SFT step {step}")
        if done:
            break
    ckpt.close()
    return state, summary


# Config groups that shape the params a warm start leaves (the rest, seed, RL and data
# included, may differ), less the keys that do not: how the model computes, and LoRA, whose
# adapters start on top of the warm start.
_SAME_AS_SOURCE = ("model", "tokenizer")
_MAY_DIFFER = ("model.dtype", "model.remat", "model.lora")


def _finished_warm_start(cfg: Any, source: str) -> dict:
    """The summary (with 'from_workdir') of the finished warm start of the run in workdir
    `source`. Raises ValueError naming the key when `source` has none, has not finished it,
    or built another model."""
    source = os.path.abspath(source)
    where = f"config 'sft.from_workdir' {source!r}"
    config_path = os.path.join(source, "config.json")
    if not (os.path.isdir(os.path.join(source, "sft")) and os.path.isfile(config_path)):
        raise ValueError(f"{where}: no run's warm start there (no config.json and sft/)")
    with open(config_path) as f:
        theirs = json.load(f)
    ours = json.loads(cfg.to_json_best_effort())  # as the run wrote its config.json
    differ = sorted(f"{group}.{key}" for group in _SAME_AS_SOURCE
                    for key in set(ours[group]) | set(theirs.get(group, {}))
                    if ours[group].get(key) != theirs.get(group, {}).get(key)
                    and f"{group}.{key}" not in _MAY_DIFFER)
    if differ:
        raise ValueError(f"{where}: that run's {differ} differ from this config's (its warm "
                         "start is another model)")
    src = ckpt_lib.Checkpointer(source, keep=1, best_metric=None, name="sft")
    try:
        step = src.latest_step()
        if step is None:
            raise ValueError(f"{where}: its sft/ holds no checkpoint")
        extras = src.restore_extras(step)
    finally:
        src.close()
    if not extras["done"]:
        raise ValueError(f"{where}: its warm start stopped at SFT step {step}, unfinished "
                         "(resume that run to finish it)")
    return {**extras["summary"], "from_workdir": source}


def _greedy_accuracy(inp: Inputs, params: Any, examples: list) -> float:
    out = eval_lib.evaluate_run(inp, params, jax.random.key(0), examples, k=0)
    return float(out["eval/greedy_pass@1"])
