"""lrmjax.train.state: TrainState, lr schedules, AdamW with clipping, guarded updates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrmjax.train import state as state_lib


def _values(schedule, steps):
    return [float(schedule(s)) for s in steps]


def test_warmup_then_constant():
    s = state_lib.lr_schedule(2.0, warmup_steps=10, total_steps=100, kind="constant")
    assert _values(s, [0, 1, 5, 9, 10, 11, 50, 100, 1000]) == pytest.approx(
        [0.0, 0.2, 1.0, 1.8, 2.0, 2.0, 2.0, 2.0, 2.0])


def test_constant_without_warmup_starts_at_lr():
    s = state_lib.lr_schedule(0.5, warmup_steps=0, total_steps=100)
    assert _values(s, [0, 1, 99]) == pytest.approx([0.5, 0.5, 0.5])


def test_warmup_then_cosine():
    lr, warm, total, ratio = 1.0, 10, 110, 0.1
    s = state_lib.lr_schedule(lr, warm, total, kind="cosine", min_lr_ratio=ratio)

    def want(step):  # hand-written: linear warmup, then cosine from lr to ratio * lr
        if step < warm:
            return lr * step / warm
        t = min(step - warm, total - warm) / (total - warm)
        return lr * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    steps = [0, 5, 10, 35, 60, 85, 110, 500]
    assert _values(s, steps) == pytest.approx([want(x) for x in steps], abs=1e-6)
    assert float(s(60)) == pytest.approx(0.55)         # halfway: (1 + 0.1) / 2
    assert float(s(110)) == pytest.approx(0.1)         # end value: min_lr_ratio * lr
    assert float(s(10_000)) == pytest.approx(0.1)      # and it stays there


def test_cosine_without_warmup():
    s = state_lib.lr_schedule(3.0, 0, 100, kind="cosine", min_lr_ratio=0.0)
    assert _values(s, [0, 50, 100]) == pytest.approx([3.0, 1.5, 0.0], abs=1e-6)


def test_unknown_schedule():
    with pytest.raises(ValueError, match="Unknown lr schedule 'linear'"):
        state_lib.lr_schedule(1.0, 0, 10, kind="linear")


def _np_adamw(params, grads_seq, lrs, b1, b2, eps, wd, clip):
    """Reference AdamW (Loshchilov & Hutter) with global-norm clipping, in numpy."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, (g, lr) in enumerate(zip(grads_seq, lrs, strict=True), start=1):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if clip > 0:
            norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in g.values()))
            g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - b1 ** t), v2[k] / (1 - b2 ** t)
            p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + eps) + wd * p[k])
    return p


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_adamw_matches_numpy_reference(clip):
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(4,)).astype(np.float32)}
    # Norms ~7 (clipped at 1), ~0.07 (not clipped) and ~3.5 (clipped).
    grads = [{k: (s * rng.normal(size=x.shape)).astype(np.float32) for k, x in params.items()}
             for s in (2.0, 0.02, 1.0)]
    schedule = lambda count: 0.1 * (count + 1)   # distinct lr per step: count starts at 0
    tx = state_lib.adamw(schedule, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.01, grad_clip=clip)
    p = jax.tree.map(jnp.asarray, params)
    opt = tx.init(p)
    for g in grads:
        updates, opt = tx.update(jax.tree.map(jnp.asarray, g), opt, p)
        p = optax.apply_updates(p, updates)
    want = _np_adamw(params, grads, [0.1, 0.2, 0.3], 0.8, 0.95, 1e-6, 0.01, clip)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-5, atol=1e-6)
    if clip:
        # Without clipping the trajectory is a different one.
        other = _np_adamw(params, grads, [0.1, 0.2, 0.3], 0.8, 0.95, 1e-6, 0.01, 0.0)
        assert not np.allclose(other["w"], want["w"], atol=1e-3)


def test_train_state_create_and_pytree():
    params = {"w": jnp.ones((2, 2))}
    tx = optax.sgd(0.1)
    s = state_lib.TrainState.create(params, tx, kl_coef=0.04)
    assert int(s.step) == 0 and int(s.nonfinite) == 0
    assert float(s.kl_coef) == pytest.approx(0.04) and s.kl_coef.dtype == jnp.float32
    assert s.critic_params is None and s.critic_opt_state is None and s.critic_tx is None
    # tx is static: only arrays are leaves, and the state passes through jit.
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(s))
    out = jax.jit(lambda st: st.replace(step=st.step + 1))(s)
    assert int(out.step) == 1 and out.tx is tx

    critic = {"v": jnp.zeros(3)}
    s = state_lib.TrainState.create(params, tx, critic_params=critic, critic_tx=optax.adam(1e-3))
    assert s.critic_opt_state is not None
    assert jax.tree.structure(s.critic_opt_state) == jax.tree.structure(
        optax.adam(1e-3).init(critic))


def _problem():
    params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.asarray([0.1, -0.1])}
    grads = {"w": jnp.asarray([[0.3, 0.1], [-0.2, 0.4]]), "b": jnp.asarray([1.0, -1.0])}
    tx = state_lib.adamw(lambda c: 0.05, weight_decay=0.1, grad_clip=0.5)
    opt = tx.init(params)
    # One real step first, so the moments are not zero.
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
    return tx, params, opt, grads


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_guarded_update_ok_equals_plain_update():
    tx, params, opt, grads = _problem()
    new_p, new_opt = jax.jit(lambda g, o, p: state_lib.guarded_update(tx, g, o, p, jnp.bool_(True))
                             )(grads, opt, params)
    updates, want_opt = tx.update(grads, opt, params)
    want_p = optax.apply_updates(params, updates)
    for x, y in zip(jax.tree.leaves((new_p, new_opt)), jax.tree.leaves((want_p, want_opt)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert not np.allclose(np.asarray(new_p["w"]), np.asarray(params["w"]))


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_guarded_update_not_ok_leaves_everything(bad):
    tx, params, opt, grads = _problem()
    grads = jax.tree.map(lambda g: g.at[0].set(bad), grads)
    new_p, new_opt = jax.jit(lambda g, o, p: state_lib.guarded_update(
        tx, g, o, p, jnp.bool_(False)))(grads, opt, params)
    _assert_trees_equal(new_p, params)
    _assert_trees_equal(new_opt, opt)   # moments and the step count included
