"""lrmjax.train.checkpoint: TrainState round trips, retention, the best-checkpoint manager,
ignoring partial saves, restoring into shardings on the 8 faked devices."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrmjax import parallel
from lrmjax.models import heads, presets, sharding, transformer
from lrmjax.train import state as state_lib
from lrmjax.train.checkpoint import Checkpointer

CFG = presets.get("tiny", num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                  head_dim=16, mlp_dim=64, vocab_size=32, max_seq_len=32)
EXTRAS = {"data_position": 12, "curriculum": {"weights": [0.25, 0.75], "name": "band"},
          "rng": [123, 456], "config": {"rl": {"kl_coef": 0.04}, "seed": 0}}


@functools.cache
def _tx():
    # One object: the optimizer is static in TrainState (a new one would be a new treedef).
    return state_lib.adamw(lambda _: 1e-2, weight_decay=0.01, grad_clip=1.0)


@functools.cache
def _critic_tx():
    return optax.adam(1e-3)


def _trained_state(seed: int, critic: bool = False, params=None) -> state_lib.TrainState:
    """A state whose params and Adam moments are not at their initial values."""
    params = transformer.init_params(CFG, jax.random.key(seed)) if params is None else params
    kwargs = {}
    if critic:
        kwargs = dict(critic_params=heads.init_from_policy(CFG, params, jax.random.key(seed)),
                      critic_tx=_critic_tx())
    state = state_lib.TrainState.create(params, _tx(), kl_coef=0.01 * (seed + 1), **kwargs)
    rng = np.random.default_rng(seed)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    return _update(state, grads).replace(step=jnp.asarray(seed + 3, jnp.int32),
                                         nonfinite=jnp.asarray(seed + 1, jnp.int32))


@jax.jit
def _update(state, grads):
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def _assert_same_state(a, b):
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    assert ta == tb, (ta, tb)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("critic", [False, True], ids=["policy", "with_critic"])
def test_round_trip(tmp_path, critic):
    saved = _trained_state(0, critic)
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() is None
    ckpt.save(3, saved, EXTRAS)
    ckpt.close()

    ckpt = Checkpointer(str(tmp_path))   # a new process would do the same
    assert ckpt.latest_step() == 3
    target = _trained_state(1, critic)   # different values, same structure
    restored, extras = ckpt.restore(3, target)
    ckpt.close()
    assert extras == EXTRAS
    _assert_same_state(restored, saved)
    assert int(restored.step) == 3 and int(restored.nonfinite) == 1
    assert float(restored.kl_coef) == pytest.approx(0.01)
    assert restored.tx is target.tx       # static fields come from the target
    # The restored optimizer state continues exactly like the saved one.
    g = jax.tree.map(jnp.ones_like, saved.params)
    u1, _ = saved.tx.update(g, saved.opt_state, saved.params)
    u2, _ = restored.tx.update(g, restored.opt_state, restored.params)
    _assert_same_state(u1, u2)


def test_keep_last_n(tmp_path):
    state = _trained_state(0)
    ckpt = Checkpointer(str(tmp_path), keep=2)
    for step in range(1, 5):
        ckpt.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"at": step})
    ckpt.wait()
    assert ckpt.manager.all_steps() == [3, 4]
    assert ckpt.latest_step() == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]
    restored, extras = ckpt.restore(3, state)
    assert extras == {"at": 3} and int(restored.step) == 3
    ckpt.close()


def test_best_checkpoint_by_eval_metric(tmp_path):
    state = _trained_state(0)
    ckpt = Checkpointer(str(tmp_path), keep=5, best_metric="eval/greedy_pass@1")
    scores = {1: 0.2, 2: 0.7, 3: 0.5, 4: None, 5: 0.6}
    for step, score in scores.items():
        stepped = state.replace(step=jnp.asarray(step, jnp.int32))
        ckpt.save(step, stepped, {"at": step})
        if score is not None:
            ckpt.save_best(step, stepped, {"at": step},
                           {"eval/greedy_pass@1": score, "eval/pass@4": 1.0})
    # Metrics without the best metric do not reach best/ either.
    ckpt.save(6, state, {"at": 6})
    ckpt.save_best(6, state, {"at": 6}, {"eval/pass@4": 1.0})
    ckpt.wait()
    assert ckpt.best.all_steps() == [2]
    assert ckpt.manager.all_steps() == [2, 3, 4, 5, 6]
    assert sorted(os.listdir(tmp_path / "best")) == ["2"]
    ckpt.close()


def test_partial_save_is_not_latest(tmp_path):
    state = _trained_state(0)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(3, state, EXTRAS)
    ckpt.close()
    # A save cut off mid-write leaves only Orbax's temporary directory behind.
    os.makedirs(tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp-123" / "state")
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 3
    restored, extras = ckpt.restore(ckpt.latest_step(), _trained_state(1))
    assert extras == EXTRAS
    _assert_same_state(restored, state)
    ckpt.close()


def test_temporary_directories_are_removed_when_a_run_opens_them(tmp_path):
    """What saves cut off by a kill left in checkpoints/ and best/ goes at the next start."""
    state = _trained_state(0)
    for name in ("checkpoints", "best"):
        os.makedirs(tmp_path / name / "7.orbax-checkpoint-tmp-123" / "state")
    ckpt = Checkpointer(str(tmp_path), owner=True)
    ckpt.save(1, state, EXTRAS)
    ckpt.save_best(1, state, EXTRAS, {"eval/greedy_pass@1": 0.5})
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    assert sorted(os.listdir(tmp_path / "best")) == ["1"]


def test_a_deletion_cut_short_leaves_no_half_deleted_step(tmp_path, monkeypatch):
    """A kill while an old step is being deleted (here: removal stops after one file) must not
    leave a step that later runs list, restore from or warn about."""
    import shutil

    def cut_short(path, *args, **kwargs):
        for root, _, files in os.walk(path):
            if files:
                os.remove(os.path.join(root, files[0]))
                return

    state = _trained_state(0)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # Orbax deletes with rmtree, one thread
    monkeypatch.setattr(shutil, "rmtree", cut_short)
    ckpt = Checkpointer(str(tmp_path), keep=1, owner=True)
    ckpt.save(1, state, {"at": 1})
    ckpt.save(2, state, {"at": 2})  # deletes step 1
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path), keep=1, owner=True)  # the next start
    assert ckpt.manager.all_steps() == [2]
    ckpt.close()
    assert "1" not in os.listdir(tmp_path / "checkpoints")
    monkeypatch.undo()
    Checkpointer(str(tmp_path), keep=1, owner=True).close()  # not cut short: empties the bin
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_a_failed_background_save_stops_the_run_naming_the_last_good_one(tmp_path,
                                                                        monkeypatch):
    """Disk full in a background save: the next call that waits for it raises one
    CheckpointError naming the step that failed and the last good checkpoint."""
    import errno
    import time

    import orbax.checkpoint as ocp

    from lrmjax.train.checkpoint import CheckpointError

    async def disk_full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    state = _trained_state(0)
    ckpt = Checkpointer(str(tmp_path), async_save=True)
    ckpt.save(1, state, EXTRAS)
    ckpt.wait()
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
    ckpt.save(2, state, EXTRAS)  # returns: the write fails in the background
    monkeypatch.undo()
    deadline = time.time() + 60
    while ckpt.manager.is_saving_in_progress() and time.time() < deadline:
        time.sleep(0.05)
    want = (r"saving checkpoint 2 to .*checkpoints failed: OSError: .*No space left on device.*"
            r"The last good checkpoint is step 1 in .*checkpoints")
    with pytest.raises(CheckpointError, match=want):
        ckpt.check()  # the loop asks after every step, without waiting
    ckpt.save(3, state, EXTRAS)  # the run could go on once the cause is fixed
    ckpt.close()
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.manager.all_steps() == [1, 3]
    ckpt.close()

    # A synchronous save (multi-host) fails at once.
    ckpt = Checkpointer(str(tmp_path / "sync"), async_save=False)
    ckpt.save(1, state, EXTRAS)
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", disk_full)
    with pytest.raises(CheckpointError, match="saving checkpoint 2 .*last good checkpoint is "
                                              "step 1"):
        ckpt.save(2, state, EXTRAS)
    monkeypatch.undo()
    ckpt.close()


def test_restore_into_shardings_on_mesh(tmp_path):
    assert jax.device_count() == 8
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = sharding.param_shardings(CFG, mesh)
    # Something really is split (else this test would not test anything).
    specs = [s.spec for s in jax.tree.leaves(shardings)]
    assert any("fsdp" in str(s) for s in specs) and any("tensor" in str(s) for s in specs)

    saved = _trained_state(0, params=sharding.init_sharded_params(CFG, jax.random.key(0), mesh))
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(5, saved, EXTRAS)
    ckpt.close()

    target = _trained_state(1, params=sharding.init_sharded_params(CFG, jax.random.key(1),
                                                                   mesh))
    ckpt = Checkpointer(str(tmp_path))
    restored, _ = ckpt.restore(5, target)
    ckpt.close()
    _assert_same_state(restored, saved)
    for got, want, spec in zip(jax.tree.leaves(restored.params), jax.tree.leaves(target.params),
                               jax.tree.leaves(shardings), strict=True):
        assert got.sharding.is_equivalent_to(spec, got.ndim)
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    # The Adam moments follow their params' shardings too.
    mu = restored.opt_state[1][0].mu
    for got, spec in zip(jax.tree.leaves(mu), jax.tree.leaves(shardings), strict=True):
        assert got.sharding.is_equivalent_to(spec, got.ndim)
