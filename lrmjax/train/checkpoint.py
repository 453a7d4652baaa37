"""Orbax checkpoints of the whole run: state pytree + JSON extras (data position, curriculum,
RNG, config, the evaluations taken).

Under the workdir, `checkpoints/` keeps the last N saves and `best/` the one with the highest
held-out accuracy, each saved at a step that was evaluated, with that step's numbers; the
warm start keeps its own (`sft/`, see `train.sft`). Saves are asynchronous on one host
(synchronous across several); Orbax writes each step into a temporary directory and renames it
only when complete, so a save cut off by a crash is never listed (and never restored), and
the run that owns the workdir removes such leftovers when it opens the directory
(`cleanup_tmp_directories`). It deletes an old step by renaming it into `<dir>/.deleted/`
first (Orbax's `todelete_subdir`) and empties that between saves: a kill mid-deletion cannot
leave a half-deleted step under its name.

A save that fails in the background (disk full, say) is reported by the next call that waits
for it (the next save, `check`, `wait` or `close`) as one `CheckpointError` naming the step
that failed and the last good checkpoint; the run stops there.
"""

from __future__ import annotations

import copy
import glob
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from lrmjax import parallel

TRASH = ".deleted"  # Orbax's todelete_subdir: old steps are renamed here, then removed


class CheckpointError(RuntimeError):
    """A checkpoint save failed; the message names the last good checkpoint."""


def _state_tree(state: Any) -> dict[str, Any]:
    """The arrays of a TrainState as a plain dict (static optax objects excluded)."""
    return {"step": state.step, "params": state.params, "opt_state": state.opt_state,
            "critic_params": state.critic_params, "critic_opt_state": state.critic_opt_state,
            "kl_coef": state.kl_coef, "nonfinite": state.nonfinite}


class Checkpointer:
    """Saves and restores (state, extras) by step, in `workdir/<name>` (and `workdir/best`
    unless `best_metric` is None)."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool | None = None,
                 best_metric: str | None = "eval/greedy_pass@1", name: str = "checkpoints",
                 owner: bool = False):
        """`owner`: this process's run holds the workdir (`lifecycle.Run.lock`), so it removes
        what killed runs left (temporary directories, `.deleted/`) and deletes old steps
        through `.deleted/`. Leave it False to read (or write) next to a live run: cleaning up
        would delete that run's saves in flight."""
        if async_save is None:
            # Multi-host saves are synchronous: with two async managers, the hosts' background
            # commit threads and the next save's barriers deadlocked now and then (Orbax
            # 0.12, two processes on gloo; tests/test_multihost.py).
            async_save = jax.process_count() == 1
        self.best_metric = best_metric
        self._async = async_save
        self._pending: int | None = None  # the step of the save that may still be running
        self._closed = False
        self._owner = owner

        def manager(directory: str, **options: Any) -> ocp.CheckpointManager:
            directory = os.path.abspath(directory)
            if owner:
                _empty_trash(directory)
                options.update(cleanup_tmp_directories=True, todelete_subdir=TRASH)
            return ocp.CheckpointManager(
                directory, item_names=("state", "extras"),
                options=ocp.CheckpointManagerOptions(
                    create=True, enable_async_checkpointing=async_save, **options))

        self.manager = manager(os.path.join(workdir, name), max_to_keep=keep)
        self.best = None
        if best_metric is not None:
            self.best = manager(os.path.join(workdir, "best"), max_to_keep=1,
                                best_fn=lambda m: m[best_metric], best_mode="max")

    def _managers(self) -> list[ocp.CheckpointManager]:
        return [m for m in (self.manager, self.best) if m is not None]

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, extras: dict[str, Any]) -> None:
        """Starts saving (state, extras) as checkpoint `step`, once the previous save is done
        (`CheckpointError` if that one failed)."""
        self._save(self.manager, step, _host_tree(state), extras)

    def save_best(self, step: int, state: Any, extras: dict[str, Any],
                  eval_metrics: dict[str, float]) -> None:
        """Saves `state`, evaluated at `step` with `eval_metrics`, to `best/` if its
        `best_metric` beats the best so far (nothing is written otherwise)."""
        if self.best is None or self.best_metric not in eval_metrics:
            return
        self.wait()  # the best so far may still be on its way
        score = float(eval_metrics[self.best_metric])
        best = self.best.best_step()
        if best is not None and score <= (self.best.metrics(best) or {}).get(
                self.best_metric, float("-inf")):
            return
        self._save(self.best, step, _host_tree(state), extras,
                   metrics={self.best_metric: score})

    def _save(self, manager: ocp.CheckpointManager, step: int, tree: Any,
              extras: dict[str, Any], **kwargs: Any) -> None:
        self.wait()
        self._pending = step
        # A copy: the JSON is written in the background, while the caller updates `extras`.
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                  extras=ocp.args.JsonSave(copy.deepcopy(extras)))
        try:
            manager.save(step, args=args, force=True, **kwargs)
        except Exception as e:  # a synchronous save, or the blocking part of an async one
            raise self._failed(manager, e) from e
        if not self._async:
            self._pending = None

    def check(self) -> None:
        """Raises `CheckpointError` if a background save has failed; never waits."""
        if self._pending is not None and not any(
                m.is_saving_in_progress() for m in self._managers()):
            self.wait()

    def wait(self) -> None:
        """Waits for the save in flight; `CheckpointError` if it failed."""
        for m in self._managers():
            try:
                m.wait_until_finished()
            except Exception as e:
                raise self._failed(m, e) from e
            if self._owner:
                _empty_trash(str(m.directory))
        self._pending = None

    def _failed(self, manager: ocp.CheckpointManager, error: Exception) -> CheckpointError:
        step, self._pending = self._pending, None
        good = self.manager.latest_step()
        last = (f"The last good checkpoint is step {good} in {self.manager.directory}"
                if good is not None else "There is no complete checkpoint yet")
        return CheckpointError(
            f"saving checkpoint {step} to {manager.directory} failed: "
            f"{type(error).__name__}: {error}. {last}; fix the cause (free disk space?) and "
            "rerun with the same --workdir to resume from it.")

    def restore(self, step: int, state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores into the structure, dtypes and shardings of `state`."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_tree(state))
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), extras=ocp.args.JsonRestore()))
        tree = out["state"]
        return state.replace(**tree), dict(out["extras"])

    def restore_extras(self, step: int) -> dict[str, Any]:
        """The JSON extras of checkpoint `step` alone (no arrays are read)."""
        out = self.manager.restore(step, args=ocp.args.Composite(extras=ocp.args.JsonRestore()))
        return dict(out["extras"])

    def forget_best_after(self, step: int) -> None:
        """Deletes best checkpoints saved after `step`: a resume from `step` evaluates those
        steps again (and a save at a step that exists would fail)."""
        if self.best is not None:
            for s in self.best.all_steps():
                if s > step:
                    self.best.delete(s)

    def restore_params(self, step: int | None = None, best: bool = False) -> Any:
        """The policy params of checkpoint `step` (default: the latest, or the best), as host
        arrays: for sampling or export without rebuilding the optimizer."""
        manager = self.best if best else self.manager
        if manager is None:
            raise FileNotFoundError("this checkpointer keeps no best checkpoint")
        step = manager.best_step() if best else (manager.latest_step() if step is None else step)
        if step is None:
            raise FileNotFoundError(f"no {'best ' if best else ''}checkpoint in "
                                    f"{manager.directory}")
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return out["state"]["params"]

    def close(self) -> None:
        """Waits for the save in flight (raising `CheckpointError` if it failed) and closes the
        managers. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            for m in self._managers():
                m.close()


def _host_tree(state: Any) -> dict[str, Any]:
    tree = _state_tree(state)
    if jax.process_count() == 1:
        # One host copy per array: Orbax would otherwise slice every replicated array
        # once per device (a compiled slice per shape and device).
        tree = jax.device_get(tree)
    return tree


def _empty_trash(directory: str) -> None:
    """Removes the steps Orbax moved to `directory/.deleted` (process 0; no save in flight).
    Cut short, it leaves only files no step listing looks at."""
    if jax.process_index() == 0:
        shutil.rmtree(os.path.join(directory, TRASH), ignore_errors=True)


def save_reference(workdir: str, ref_params: Any) -> None:
    """Saves the reference policy (fixed for the whole run) once, to `workdir/reference`,
    unless it is there. Every host calls this (Orbax writes each host's shards)."""
    path = os.path.abspath(os.path.join(workdir, "reference"))
    # Host 0 decides: a host that looked after another had started writing would skip the
    # save and leave the others waiting in it.
    if not parallel.same_on_all_hosts(os.path.exists(path)):
        if jax.process_index() == 0:  # what a save cut off by a kill left
            for tmp in glob.glob(f"{path}.orbax-checkpoint-tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        tree = jax.device_get(ref_params) if jax.process_count() == 1 else ref_params
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)


def restore_reference(workdir: str, like: Any) -> Any:
    """The reference policy saved by `save_reference`, in the structure, dtypes and
    shardings of `like`."""
    path = os.path.abspath(os.path.join(workdir, "reference"))
    with ocp.StandardCheckpointer() as c:
        return c.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def data_positions(iterator: Any) -> list[Any]:
    """Every host's data position (`iterator.get_state()`), in process order, for a
    checkpoint's extras: they are written by host 0 alone, and each host reads its own shard
    (a collective: every host calls it)."""
    return parallel.every_host(iterator.get_state())


def restore_data_position(iterator: Any, saved: Any) -> None:
    """Puts `iterator` (this host's) at its position in `saved` (`data_positions`' list; a
    checkpoint from before per-host positions holds one dict)."""
    if isinstance(saved, dict):
        saved = [saved]
    if len(saved) != jax.process_count():
        raise ValueError(f"the checkpoint holds the data positions of {len(saved)} hosts; this "
                         f"run has {jax.process_count()}: resume with as many hosts")
    iterator.set_state(saved[jax.process_index()])
