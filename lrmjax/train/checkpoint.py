"""Orbax checkpoints of the whole run: state pytree + JSON extras (data position, curriculum,
RNG, config).

Two managers under the workdir: `checkpoints/` keeps the last N saves, `best/` keeps the one
with the highest held-out accuracy. Saves are asynchronous on one host (synchronous across
several); Orbax writes each step into a temporary directory and renames it only when
complete, so a save cut off by a crash is never listed (and never restored).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lrmjax import parallel


def _state_tree(state: Any) -> dict[str, Any]:
    """The arrays of a TrainState as a plain dict (static optax objects excluded)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "critic_params": state.critic_params, "critic_opt_state": state.critic_opt_state,
            "kl_coef": state.kl_coef, "nonfinite": state.nonfinite}


class Checkpointer:
    """Saves and restores (state, extras) by step."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool | None = None,
                 best_metric: str = "eval/greedy_pass@1"):
        if async_save is None:
            # Multi-host saves are synchronous: with two async managers, the hosts' background
            # commit threads and the next save's barriers deadlocked now and then (Orbax
            # 0.12, two processes on gloo; tests/test_multihost.py).
            async_save = jax.process_count() == 1
        directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.best_metric = best_metric
        self.manager = ocp.CheckpointManager(
            directory, item_names=("state", "extras"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=async_save))
        self.best = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "best")), item_names=("state", "extras"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode="max",
                enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, extras: dict[str, Any],
             eval_metrics: dict[str, float] | None = None) -> None:
        tree = _state_tree(state)
        if jax.process_count() == 1:
            # One host copy per array: Orbax would otherwise slice every replicated array
            # once per device (a compiled slice per shape and device).
            tree = jax.device_get(tree)
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                  extras=ocp.args.JsonSave(extras))
        self.manager.save(step, args=args, force=True)
        if eval_metrics is not None and self.best_metric in eval_metrics:
            self.best.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree),
                extras=ocp.args.JsonSave(extras)),
                metrics={self.best_metric: float(eval_metrics[self.best_metric])}, force=True)

    def restore(self, step: int, state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores into the structure, dtypes and shardings of `state`."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extras=ocp.args.JsonRestore()))
        tree = out["state"]
        return state.replace(**tree), dict(out["extras"])

    def restore_params(self, step: int | None = None, best: bool = False) -> Any:
        """The policy params of checkpoint `step` (default: the latest, or the best), as host
        arrays: for sampling or export without rebuilding the optimizer."""
        manager = self.best if best else self.manager
        step = manager.best_step() if best else (manager.latest_step() if step is None else step)
        if step is None:
            raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in "
                                    f"{manager.directory}")
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return out["state"]["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        self.best.close()


def save_reference(workdir: str, ref_params: Any) -> None:
    """Saves the reference policy (fixed for the whole run) once, to `workdir/reference`,
    unless it is there. Every host calls this (Orbax writes each host's shards)."""
    path = os.path.abspath(os.path.join(workdir, "reference"))
    # Host 0 decides: a host that looked after another had started writing would skip the
    # save and leave the others waiting in it.
    if not parallel.same_on_all_hosts(os.path.exists(path)):
        tree = jax.device_get(ref_params) if jax.process_count() == 1 else ref_params
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)


def restore_reference(workdir: str, like: Any) -> Any:
    """The reference policy saved by `save_reference`, in the structure, dtypes and
    shardings of `like`."""
    path = os.path.abspath(os.path.join(workdir, "reference"))
    with ocp.StandardCheckpointer() as c:
        return c.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))
