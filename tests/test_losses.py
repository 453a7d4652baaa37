"""Tests for lrmjax.rl.losses / aggregation / kl against independent numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrmjax.rl import aggregation as agg
from lrmjax.rl import algorithms, kl, losses

B, T = 6, 5
MODES = sorted(agg.AGGREGATIONS)


def make(seed, spread=0.3, seq_adv=False):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = 0  # one fully padded row
    m = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    old = (rng.normal(size=(B, T)) - 1.5).astype(np.float32)
    lp = (old + spread * rng.normal(size=(B, T))).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    if seq_adv:
        adv = np.repeat(adv[:, :1], T, axis=1)
    return {
        "logprobs": lp, "old_logprobs": old, "advantages": adv * m, "response_mask": m,
        "ref_logprobs": (old + 0.2 * rng.normal(size=(B, T))).astype(np.float32),
        "sampler_logprobs": (old + 0.5 * rng.normal(size=(B, T))).astype(np.float32),
        "entropy": rng.uniform(0, 3, size=(B, T)).astype(np.float32),
    }  # fmt: skip


# ------------------------------- numpy references ------------------------------------


def np_agg(loss, m, mode, norm_len=T):
    rows = m.sum(-1) > 0
    if mode == "token-mean":
        return (loss * m).sum() / m.sum()
    if mode == "token-sum":
        return (loss * m).sum()
    if mode == "seq-mean-token-mean":
        return np.mean([(loss[i] * m[i]).sum() / m[i].sum() for i in np.flatnonzero(rows)])
    if mode == "seq-mean-token-sum":
        return (loss * m).sum() / rows.sum()
    if mode == "seq-mean-token-sum-norm":
        return (loss * m).sum() / rows.sum() / norm_len
    raise KeyError(mode)


def np_ppo(lp, old, adv, lo, hi, c=None):
    r = np.exp(lp - old)
    out = np.zeros_like(r)
    for idx in np.ndindex(r.shape):
        a, ri = adv[idx], r[idx]
        v = max(-a * ri, -a * min(max(ri, 1 - lo), 1 + hi))
        if c is not None and a < 0:
            v = min(v, -a * c)
        out[idx] = v
    return out


def np_seq_mean(x, m):
    return np.array([(x[i] * m[i]).sum() / max(m[i].sum(), 1) for i in range(len(x))])


def np_gspo(lp, old, adv, m, lo, hi):
    s = np.exp(np_seq_mean(lp - old, m))
    a = np_seq_mean(adv, m)
    seq = np.maximum(-a * s, -a * np.clip(s, 1 - lo, 1 + hi))
    return np.where(m > 0, seq[:, None], 0.0)


def algo_for(policy_loss, mode="token-mean", **kw):
    return algorithms.get("dapo", policy_loss=policy_loss, loss_agg_mode=mode, **kw)


def loss_fn(algo, d, **extra):
    keys = ("old_logprobs", "advantages", "response_mask")
    return losses.actor_loss(algo, logprobs=d["logprobs"], **{k: d[k] for k in keys}, **extra)


# ------------------------------- policy losses -----------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("clip_c", [None, 1.5])
def test_ppo_matches_numpy(mode, clip_c):
    d = make(0, spread=0.6)
    algo = algo_for("ppo", mode, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=clip_c)
    loss, met = loss_fn(algo, d)
    ref = np_ppo(d["logprobs"], d["old_logprobs"], d["advantages"], 0.2, 0.28, clip_c)
    m = d["response_mask"]
    np.testing.assert_allclose(loss, np_agg(ref, m, mode), rtol=1e-5)
    r = np.exp(d["logprobs"] - d["old_logprobs"])
    a = d["advantages"]
    clipped = -a * np.clip(r, 0.8, 1.28) > -a * r
    np.testing.assert_allclose(met["pg_clipfrac"], (clipped * m).sum() / m.sum(), rtol=1e-6)
    np.testing.assert_allclose(met["ratio_max"], r[m > 0].max(), rtol=1e-5)
    np.testing.assert_allclose(
        met["ppo_kl"],
        (old_minus := (d["old_logprobs"] - d["logprobs"]))[m > 0].mean(),
        rtol=1e-5,
        atol=1e-7,
    )
    assert old_minus.shape == (B, T)
    if clip_c is not None:  # dual clip binds somewhere in this batch
        assert float(met["pg_clipfrac_lower"]) > 0


def test_gspo_matches_numpy_and_sequence_ratio_is_geometric_mean():
    d = make(1, spread=0.05)
    m = d["response_mask"]
    algo = algo_for("gspo", "seq-mean-token-mean", clip_ratio_low=0.01, clip_ratio_high=0.02)
    loss, met = loss_fn(algo, d)
    ref = np_gspo(d["logprobs"], d["old_logprobs"], d["advantages"], m, 0.01, 0.02)
    np.testing.assert_allclose(loss, np_agg(ref, m, "seq-mean-token-mean"), rtol=1e-5)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_gspo_ratio_is_geometric_mean_of_token_ratios(seed):
    d = make(seed, spread=0.2)
    m = d["response_mask"]
    r = np.exp(d["logprobs"].astype(np.float64) - d["old_logprobs"])
    geo = np.array([np.prod(r[i][m[i] > 0]) ** (1 / m[i].sum()) for i in range(B) if m[i].sum()])
    # With A = 1 and a wide clip the per-sequence loss is -s_i.
    algo = algo_for("gspo", "seq-mean-token-mean", clip_ratio_low=1.0, clip_ratio_high=100.0)
    mats, _ = losses.gspo_loss(d["logprobs"], d["old_logprobs"], jnp.asarray(m), m > 0,
                               clip_ratio_low=1.0, clip_ratio_high=100.0)  # fmt: skip
    s = -np.asarray(mats)[:, 0][m.sum(-1) > 0]
    np.testing.assert_allclose(s, geo, rtol=1e-5)
    assert algo.policy_loss == "gspo"


def test_cispo_and_reinforce_match_numpy():
    d = make(2, spread=0.6)
    m, lp, old, a = d["response_mask"], d["logprobs"], d["old_logprobs"], d["advantages"]
    w = np.clip(np.exp(lp - old), 1 - 0.3, 1 + 0.1)
    loss, met = loss_fn(algo_for("cispo", clip_ratio_low=0.3, clip_ratio_high=0.1), d)
    np.testing.assert_allclose(loss, np_agg(-w * a * lp, m, "token-mean"), rtol=1e-5)
    loss, _ = loss_fn(algo_for("reinforce", "seq-mean-token-sum"), d)
    np.testing.assert_allclose(loss, np_agg(-a * lp, m, "seq-mean-token-sum"), rtol=1e-5)


def test_gpg_is_an_alias_of_reinforce():
    # GPG's policy loss is REINFORCE (arXiv:2504.02546, Eq. 7): one function, two names.
    assert losses.POLICY_LOSSES["gpg"] is losses.POLICY_LOSSES["reinforce"]
    assert algorithms.get("grpo", policy_loss="gpg").policy_loss == "gpg"  # configs may say gpg


def test_kl_cov_matches_numpy():
    d = make(3, spread=0.4)
    m, lp, old, a = d["response_mask"], d["logprobs"], d["old_logprobs"], d["advantages"]
    valid = m > 0
    cov = (a - a[valid].mean()) * (lp - lp[valid].mean())
    k = max(int(0.2 * valid.sum()), 1)
    top = np.argsort(-np.where(valid, cov, -np.inf).ravel())[:k]
    sel = np.zeros(B * T, bool)
    sel[top] = True
    ref = -a * np.exp(lp - old) + 0.5 * np.abs(lp - old) * sel.reshape(B, T)
    loss, met = loss_fn(algo_for("kl_cov", kl_cov_ratio=0.2, kl_cov_coef=0.5), d)
    np.testing.assert_allclose(loss, np_agg(ref, m, "token-mean"), rtol=1e-5)
    np.testing.assert_allclose(met["pg_clipfrac"], k / valid.sum(), rtol=1e-6)


@functools.cache
def grad_fn(policy_loss, mode):
    algo = algo_for(policy_loss, mode, clip_ratio_low=0.2, clip_ratio_high=0.2)
    return jax.grad(lambda lp, d: loss_fn(algo, {**d, "logprobs": lp})[0])


@pytest.mark.parametrize("mode", MODES)
def test_gradient_at_ratio_one_equals_reinforce(mode):
    """At pi = pi_old every loss has the REINFORCE gradient -A * d agg / d l."""
    d = make(4, seq_adv=True)  # GSPO uses one advantage per sequence
    d["old_logprobs"] = d["logprobs"]
    m = d["response_mask"]
    rows = m.sum(-1) > 0
    weight = {  # d np_agg / d loss_it, written out per mode
        "token-mean": np.full((B, T), 1 / m.sum()),
        "token-sum": np.ones((B, T)),
        "seq-mean-token-mean": 1
        / (rows.sum() * np.maximum(m.sum(-1, keepdims=True), 1))
        * np.ones((B, T)),
        "seq-mean-token-sum": np.full((B, T), 1 / rows.sum()),
        "seq-mean-token-sum-norm": np.full((B, T), 1 / (rows.sum() * T)),
    }[mode]
    expected = -d["advantages"] * weight * m
    for name in losses.POLICY_LOSSES:
        g = grad_fn(name, mode)(d["logprobs"], d)
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_gspo_token_has_gspo_gradient():
    d = make(5, spread=0.01, seq_adv=True)
    g1 = grad_fn("gspo", "seq-mean-token-mean")(d["logprobs"], d)
    g2 = grad_fn("gspo_token", "seq-mean-token-mean")(d["logprobs"], d)
    np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


def test_cispo_keeps_gradient_on_clipped_tokens():
    d = make(6, spread=1.0)
    r = np.exp(d["logprobs"] - d["old_logprobs"])
    a, m = d["advantages"], d["response_mask"] > 0
    ppo_clipped = m & (((a > 0) & (r > 1.2)) | ((a < 0) & (r < 0.8))) & (a != 0)
    assert ppo_clipped.sum() >= 2
    g_ppo = np.asarray(grad_fn("ppo", "token-mean")(d["logprobs"], d))
    g_cispo = np.asarray(grad_fn("cispo", "token-mean")(d["logprobs"], d))
    assert np.all(g_ppo[ppo_clipped] == 0)
    assert np.all(g_cispo[ppo_clipped] != 0)
    w = np.clip(r, 0.8, 1.2)
    np.testing.assert_allclose(g_cispo, np.where(m, -w * a / m.sum(), 0), rtol=1e-5, atol=1e-8)


# ------------------------------- aggregation -------------------------------------------


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_microbatch_aggregation_is_exact(seed):
    rng = np.random.default_rng(seed)
    d = make(seed)
    loss = rng.normal(size=(B, T)).astype(np.float32)
    m = d["response_mask"]
    for mode in MODES:
        full = np_agg(loss, m, mode)
        num_full, den_full = agg.aggregate(loss, m, mode, norm_len=T)
        np.testing.assert_allclose(num_full / den_full, full, rtol=1e-5)
        nums = [agg.aggregate(loss[s : s + 2], m[s : s + 2], mode, T)[0] for s in (0, 2, 4)]
        den = agg.denominator(m, mode, T)
        np.testing.assert_allclose(sum(nums) / den, full, rtol=1e-5, err_msg=mode)


def test_actor_loss_microbatch_gradients_sum_to_full_batch():
    d = make(7, spread=0.5)
    for mode in MODES:
        algo = algorithms.get("grpo", loss_agg_mode=mode, kl_coef=0.1, entropy_coef=0.01)
        extra = {"ref_logprobs": d["ref_logprobs"], "entropy": d["entropy"]}

        def f(lp, dd, den=None, algo=algo):
            return losses.actor_loss(
                algo, logprobs=lp, old_logprobs=dd["old_logprobs"], advantages=dd["advantages"],
                response_mask=dd["response_mask"], ref_logprobs=dd["ref_logprobs"],
                entropy=dd["entropy"], loss_denominator=den,
            )[0]  # fmt: skip

        vg = jax.jit(jax.value_and_grad(f))
        full_loss, full_grad = vg(d["logprobs"], {**d, **extra})
        den = losses.loss_denominator(algo, d["response_mask"])
        total, grads = 0.0, []
        for s in (0, 3):
            mb = {k: v[s : s + 3] for k, v in d.items()}
            lv, gv = vg(mb["logprobs"], mb, den)
            total, grads = total + lv, grads + [gv]
        np.testing.assert_allclose(total, full_loss, rtol=1e-5, err_msg=mode)
        np.testing.assert_allclose(np.concatenate(grads), full_grad, rtol=1e-5, atol=1e-8)


def test_norm_len_required_and_unknown_mode():
    with pytest.raises(ValueError, match="norm_len"):
        agg.aggregate(np.ones((2, 2)), np.ones((2, 2)), "seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        agg.aggregate(np.ones((2, 2)), np.ones((2, 2)), "mean")


# ------------------------------- actor loss: full combination --------------------------


def test_actor_loss_combines_terms_like_numpy():
    d = make(8, spread=0.4)
    m, lp, ref = d["response_mask"], d["logprobs"], d["ref_logprobs"]
    algo = algorithms.get("grpo", kl_coef=0.1, entropy_coef=0.01, tis_mode="token", tis_cap=1.5)
    loss, met = losses.actor_loss(
        algo, logprobs=lp, old_logprobs=d["old_logprobs"], advantages=d["advantages"],
        response_mask=m, ref_logprobs=ref, entropy=d["entropy"],
        sampler_logprobs=d["sampler_logprobs"],
    )  # fmt: skip
    mode = algo.loss_agg_mode
    w = np.minimum(np.exp(d["old_logprobs"] - d["sampler_logprobs"]), 1.5)
    pg = np_agg(np_ppo(lp, d["old_logprobs"], d["advantages"], 0.2, 0.2) * w, m, mode)
    x = ref - lp
    k3 = np.exp(x) - 1 - x
    expected = pg + 0.1 * np_agg(k3, m, mode) - 0.01 * np_agg(d["entropy"], m, mode)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(met["pg_loss"], pg, rtol=1e-5)
    np.testing.assert_allclose(met["entropy"], d["entropy"][m > 0].mean(), rtol=1e-5)
    np.testing.assert_allclose(met["tis_weight_mean"], w[m > 0].mean(), rtol=1e-5)
    for key in ("pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "ratio_mean", "ratio_max",
                "kl_loss"):  # fmt: skip
        assert np.shape(met[key]) == ()


def test_actor_loss_padding_invariance_with_nan_garbage():
    d = make(9, spread=0.4)
    algo = algorithms.get("grpo", entropy_coef=0.01, top_entropy_frac=0.5, tis_mode="sequence")
    keys = ("old_logprobs", "advantages", "ref_logprobs", "entropy", "sampler_logprobs")

    def f(lp, dd):
        return losses.actor_loss(algo, logprobs=lp, response_mask=dd["response_mask"],
                                 **{k: dd[k] for k in keys})  # fmt: skip

    vg = jax.jit(jax.value_and_grad(f, has_aux=True))
    (l1, met1), g1 = vg(d["logprobs"], d)
    padded = {k: np.pad(v, ((0, 0), (0, 3))) for k, v in d.items()}
    hole = padded["response_mask"] == 0
    for k in padded:
        if k != "response_mask":
            padded[k] = np.where(hole, np.nan, padded[k]).astype(np.float32)
    (l2, met2), g2 = vg(padded["logprobs"], padded)
    np.testing.assert_allclose(l2, l1, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g2)[:, :T], g1, rtol=1e-6)
    assert np.all(np.asarray(g2)[hole] == 0)
    for k in met1:
        np.testing.assert_allclose(met2[k], met1[k], rtol=1e-6, err_msg=k)


def test_actor_loss_bad_input():
    d = make(0)
    algo = algorithms.get("grpo")
    with pytest.raises(ValueError, match="advantages must have the shape"):
        losses.actor_loss(algo, logprobs=d["logprobs"], old_logprobs=d["old_logprobs"],
                          advantages=d["advantages"][:, :-1], response_mask=d["response_mask"],
                          ref_logprobs=d["ref_logprobs"])  # fmt: skip
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        loss_fn(algo, d)
    with pytest.raises(ValueError, match="needs entropy"):
        loss_fn(algorithms.get("dapo", top_entropy_frac=0.2), d)
    with pytest.raises(ValueError, match="needs sampler_logprobs"):
        loss_fn(algorithms.get("dapo", tis_mode="token"), d)


# ------------------------------- regularizers -----------------------------------------


def test_kl_estimators_match_numpy_and_k3_nonnegative():
    rng = np.random.default_rng(0)
    lp, ref = rng.normal(size=(2, 50)) * 2 - 3
    m = np.ones_like(lp)
    x = ref - lp
    np.testing.assert_allclose(kl.kl_divergence(lp, ref, m, "k1"), lp - ref, rtol=1e-5)
    np.testing.assert_allclose(kl.kl_divergence(lp, ref, m, "k2"), 0.5 * x**2, rtol=1e-5)
    np.testing.assert_allclose(
        kl.kl_divergence(lp, ref, m, "k3"), np.minimum(np.exp(x) - 1 - x, 10.0), rtol=1e-5
    )
    assert np.all(np.asarray(kl.kl_divergence(lp, ref, m, "k3")) >= 0)


@settings(max_examples=5, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=4, max_size=4),
       st.lists(st.floats(-30, 30), min_size=4, max_size=4))  # fmt: skip
def test_k3_nonnegative_property(a, b):
    out = kl.kl_divergence(jnp.array(a), jnp.array(b), jnp.ones(4), "k3")
    assert np.all(np.asarray(out) >= 0)


def test_k1_and_k3_are_unbiased_monte_carlo():
    rng = np.random.default_rng(0)
    q = np.array([0.5, 0.3, 0.15, 0.05])
    p = np.array([0.25, 0.25, 0.25, 0.25])
    true_kl = float(np.sum(q * np.log(q / p)))
    y = rng.choice(4, size=200_000, p=q)
    lq, lp = np.log(q)[y][None], np.log(p)[y][None]
    m = np.ones_like(lq)
    for est in ("k1", "k3"):
        samples = np.asarray(kl.kl_divergence(lq, lp, m, est), np.float64)
        se = samples.std() / np.sqrt(samples.size)
        assert abs(samples.mean() - true_kl) < 4 * se, est
    k2 = np.asarray(kl.kl_divergence(lq, lp, m, "k2"), np.float64).mean()
    assert k2 > 0  # biased but positive


def test_kl_penalty_rewards_and_adaptive_controller():
    lp, ref, m = np.array([[-1.0, -2.0]]), np.array([[-1.5, -1.0]]), np.array([[1.0, 0.0]])
    np.testing.assert_allclose(kl.kl_penalty_rewards(lp, ref, m, 0.1, "k1"), [[-0.05, 0.0]])
    st0 = kl.init_kl_controller(0.1)
    st1 = kl.update_kl_controller(st0, observed_kl=0.3, n_steps=100, kl_target=0.1,
                                  kl_horizon=1000)  # fmt: skip
    # error = clip(0.3/0.1 - 1, -0.2, 0.2) = 0.2 -> 0.1 * (1 + 0.2 * 100 / 1000)
    np.testing.assert_allclose(st1.coef, 0.1 * 1.02, rtol=1e-6)
    st2 = kl.update_kl_controller(st0, 0.09, 100, 0.1, 1000)
    np.testing.assert_allclose(st2.coef, 0.1 * (1 - 0.1 * 0.1), rtol=1e-5)
    assert kl.update_kl_controller(st0, 5.0, 100, None, 1000) is st0
    jax.jit(kl.update_kl_controller, static_argnums=(3, 4))(st0, 0.2, 10, 0.1, 100.0)


def test_entropy_from_logits_stable_and_correct():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 11)) * 3
    logits[0, 0] += 1e4  # large shift: softmax must not overflow
    logits = logits.astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(losses.entropy_from_logits(jnp.asarray(logits)), ref, rtol=1e-4,
                               atol=1e-5)  # fmt: skip
    big = np.full((1, 1, 5), -1e9)
    big[..., 0] = 0
    assert np.isfinite(np.asarray(losses.entropy_from_logits(jnp.asarray(big)))).all()


def test_top_entropy_mask():
    ent = np.array([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    m = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)  # 7.0 is padding and must be ignored
    sel = np.asarray(losses.top_entropy_mask(ent, m, 0.25))  # ceil(0.25 * 7) = 2 tokens
    np.testing.assert_array_equal(sel, [[0, 1, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_array_equal(np.asarray(losses.top_entropy_mask(ent, m, 1.0)), m)


def test_tis_weights_token_and_sequence():
    old = np.array([[-1.0, -2.0, -1.0]])
    smp = np.array([[-1.5, -1.0, -9.0]])
    m = np.array([[1.0, 1.0, 0.0]])
    w, met = losses.tis_weights(old, smp, m > 0, "token", 1.2)
    np.testing.assert_allclose(w, [[1.2, np.exp(-1.0), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(met["tis_clipfrac"], 0.5)
    w, _ = losses.tis_weights(old, smp, m > 0, "sequence", 5.0)
    np.testing.assert_allclose(w, [[np.exp(-0.5), np.exp(-0.5), 0.0]], rtol=1e-6)


def test_critic_loss_matches_numpy():
    rng = np.random.default_rng(0)
    v, old, ret = rng.normal(size=(3, B, T))
    m = make(0)["response_mask"]
    algo = algorithms.get("ppo", vf_clip=0.2, vf_coef=0.5)
    loss, met = losses.critic_loss(algo, values=v, old_values=old, returns=ret, response_mask=m)
    vc = old + np.clip(v - old, -0.2, 0.2)
    l1, l2 = (v - ret) ** 2, (vc - ret) ** 2
    ref = 0.5 * np.maximum(l1, l2)
    valid = m > 0
    np.testing.assert_allclose(loss, 0.5 * ref[valid].mean(), rtol=1e-5)
    np.testing.assert_allclose(met["vf_clipfrac"], (l2 > l1)[valid].mean(), rtol=1e-6)
    ev = 1 - np.var((ret - v)[valid]) / np.var(ret[valid])
    np.testing.assert_allclose(met["vf_explained_var"], ev, rtol=1e-5)
