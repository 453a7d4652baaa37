"""Tests for lrmjax.rl.advantages against independent numpy loop implementations."""

import functools
import itertools
import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrmjax.rl import advantages as A
from lrmjax.rl import algorithms

B, T, G = 8, 7, 4  # fixed shapes: one compilation per estimator


def make_batch(seed, b=B, t=T, binary=False, empty_row=True):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    if empty_row:
        lengths[rng.integers(b)] = 0
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    rewards = (
        rng.integers(0, 2, size=b).astype(np.float32)
        if binary
        else rng.normal(size=b).astype(np.float32)
    )
    return {
        "rewards": rewards,
        "response_mask": mask,
        "token_rewards": rng.normal(size=(b, t)).astype(np.float32) * 0.1,
        "values": rng.normal(size=(b, t)).astype(np.float32),
        "baseline_rewards": rng.normal(size=b).astype(np.float32),
    }


# ----------------------------- numpy references -----------------------------------------


def np_valid_idx(mask_row):
    return np.flatnonzero(mask_row > 0)


def np_token_rewards(rewards, mask, token_rewards=None):
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        idx = np_valid_idx(mask[i])
        if len(idx):
            out[i, idx[-1]] += rewards[i]
        if token_rewards is not None:
            out[i, idx] += token_rewards[i, idx]
    return out


def np_gae(r, v, mask, gamma, lam_rows):
    adv = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        next_v = next_a = 0.0
        for t in reversed(np_valid_idx(mask[i])):
            delta = r[i, t] + gamma * next_v - v[i, t]
            next_a = delta + gamma * lam_rows[i] * next_a
            next_v = v[i, t]
            adv[i, t] = next_a
    return adv, np.where(mask > 0, adv + v, 0.0)


def np_whiten(x, mask, eps=1e-8):
    vals = x[mask > 0]
    return np.where(mask > 0, (x - vals.mean()) / np.sqrt(vals.var() + eps), 0.0)


def np_bcast(scores, mask):
    return np.where(mask > 0, scores[:, None], 0.0)


def np_group_stats(r, n):
    mean, std = np.zeros_like(r), np.ones_like(r)
    for s in range(0, len(r), n):
        mean[s : s + n] = np.mean(r[s : s + n])
        std[s : s + n] = np.std(r[s : s + n], ddof=1)
    return mean, std


def np_passk(r, n, k):
    """Brute force over all k-subsets: response i's advantage is the mean over subsets that
    contain it of (max reward in subset - group mean) / group std (Chen et al. 2025)."""
    out = np.zeros(len(r))
    for s in range(0, len(r), n):
        g = (r[s : s + n] > 0.5).astype(float)
        subsets = list(itertools.combinations(range(n), k))
        vals = np.array([g[list(c)].max() for c in subsets])
        mean, std = vals.mean(), vals.std()
        for i in range(n):
            if std < 1e-6:
                continue
            mine = [val for c, val in zip(subsets, vals, strict=True) if i in c]
            out[s + i] = (np.mean(mine) - mean) / std
    return out


def reference(name, algo, d, n):
    m, r = d["response_mask"], d["rewards"].astype(np.float64)
    lengths = m.sum(-1)
    if name == "gae":
        tok = np_token_rewards(r, m, d["token_rewards"])
        lam = np.full(len(r), algo.lam)
        if algo.vapo_alpha is not None:
            lam = np.clip(1 - 1 / (algo.vapo_alpha * np.maximum(lengths, 1)), 0, 1)
        adv, _ = np_gae(tok, d["values"], m, algo.gamma, lam)
        _, ret = np_gae(tok, d["values"], m, algo.gamma, np.full(len(r), algo.lam_critic))
        return (np_whiten(adv, m) if algo.whiten_advantages else adv), ret
    if name in ("reinforce_pp", "reinforce_pp_baseline"):
        if name == "reinforce_pp_baseline":
            r = r - np_group_stats(r, n)[0]
        tok = np_token_rewards(r, m, d["token_rewards"])
        ret, _ = np_gae(tok, np.zeros_like(tok), m, algo.gamma, np.ones(len(r)))
        adv = np_whiten(ret, m)
        return adv, adv
    if name == "grpo":
        mean, std = np_group_stats(r, n)
        if algo.batch_std_norm:
            std = np.full_like(r, np.std(r, ddof=1))
        s = (r - mean) / (std + algo.adv_epsilon) if algo.norm_adv_by_std else r - mean
    elif name == "dr_grpo":
        s = r - np_group_stats(r, n)[0]
    elif name == "rloo":
        r = r + (d["token_rewards"] * m).sum(-1)
        s = np.array(
            [
                r[i] - np.mean(np.delete(r[i // n * n : i // n * n + n], i % n))
                for i in range(len(r))
            ]
        )
    elif name == "remax":
        s = r - d["baseline_rewards"]
    elif name == "gpg":
        groups = r.reshape(-1, n)
        invalid = sum(n for g in groups if np.all(g == g[0]))
        alpha = len(r) / (len(r) - invalid) if invalid < len(r) else 1.0
        s = alpha * (r - np_group_stats(r, n)[0])
    elif name == "opo":
        s = np.zeros_like(r)
        for g in range(0, len(r), n):
            lg, rg = lengths[g : g + n], r[g : g + n]
            s[g : g + n] = rg - (lg * rg).sum() / lg.sum()
    elif name == "grpo_passk":
        s = np_passk(r, n, algo.pass_k)
    else:
        raise KeyError(name)
    adv = np_bcast(s, m)
    return adv, adv


# Each estimator with the preset/overrides used to test it and the inputs it takes.
CASES = {
    "gae": (
        "ppo",
        {"whiten_advantages": False, "gamma": 0.9, "lam": 0.8, "lam_critic": 0.95},
        ("values", "token_rewards"),
    ),
    "grpo": ("grpo", {}, ()),
    "dr_grpo": ("dr_grpo", {}, ()),
    "rloo": ("rloo", {}, ("token_rewards",)),
    "reinforce_pp": ("reinforce_pp", {"gamma": 0.95}, ("token_rewards",)),
    "reinforce_pp_baseline": ("reinforce_pp_baseline", {}, ("token_rewards",)),
    "remax": ("remax", {}, ("baseline_rewards",)),
    "gpg": ("gpg", {}, ()),
    "opo": ("opo", {}, ()),
    "grpo_passk": ("grpo_passk", {"pass_k": 2}, ()),
}
EXTRA_CASES = {
    "gae_whiten": ("gae", "ppo", {"gamma": 0.99, "lam": 0.9}),
    "gae_vapo": ("gae", "vapo", {"whiten_advantages": False}),
    "grpo_no_std": ("grpo", "grpo", {"norm_adv_by_std": False}),
    "lite_ppo_batch_std": ("grpo", "lite_ppo", {}),
}


@functools.cache
def jitted(preset, overrides, inputs):
    algo = algorithms.get(preset, **dict(overrides))

    def f(d):
        kw = {k: d[k] for k in inputs}
        return A.compute_advantages(
            algo, rewards=d["rewards"], response_mask=d["response_mask"], group_size=G, **kw
        )

    return algo, jax.jit(f)


def run(name, preset, overrides, inputs, d):
    algo, f = jitted(preset, tuple(sorted(overrides.items())), tuple(inputs))
    adv, ret = f({k: d[k] for k in ("rewards", "response_mask", *inputs)})
    return algo, np.asarray(adv), np.asarray(ret)


def test_every_estimator_has_a_reference_case():
    assert set(CASES) == set(A.ADVANTAGE_ESTIMATORS)


@pytest.mark.parametrize("name", sorted(CASES) + sorted(EXTRA_CASES))
def test_matches_numpy_reference(name):
    if name in EXTRA_CASES:
        est, preset, overrides = EXTRA_CASES[name]
        inputs = CASES[est][2]
    else:
        est, (preset, overrides, inputs) = name, CASES[name]
    for seed in range(2):
        d = make_batch(seed, binary=(est in ("grpo_passk", "gpg")))
        algo, adv, ret = run(est, preset, overrides, inputs, d)
        ref_adv, ref_ret = reference(est, algo, d, G)
        np.testing.assert_allclose(adv, ref_adv, rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(ret, ref_ret, rtol=2e-4, atol=2e-5)


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    d = make_batch(3)
    _, adv, ret = run(
        "gae", "ppo", {"whiten_advantages": False, "lam": 1.0, "lam_critic": 1.0}, ("values",), d
    )
    m = d["response_mask"]
    tot = np.where(m.sum(-1) > 0, d["rewards"], 0.0)[:, None]
    np.testing.assert_allclose(ret, np.where(m > 0, tot, 0), atol=1e-5)
    np.testing.assert_allclose(adv, np.where(m > 0, tot - d["values"], 0), atol=1e-5)


def test_passk_with_k1_is_grpo_with_population_std():
    d = make_batch(5, binary=True)
    d["rewards"][:G] = [1, 0, 0, 1]
    _, adv, _ = run("grpo_passk", "grpo_passk", {"pass_k": 1}, (), d)
    r = d["rewards"].reshape(-1, G)
    std = r.std(-1, keepdims=True)
    expect = np.where(std > 0, (r - r.mean(-1, keepdims=True)) / np.where(std > 0, std, 1), 0)
    np.testing.assert_allclose(adv, np_bcast(expect.reshape(-1), d["response_mask"]), atol=1e-5)


def test_passk_closed_form_values():
    # N=4 responses, 1 correct, k=2: R = 1 - C(3,2)/C(4,2) = 1/2, sigma = 1/2,
    # A_pos = (1 - 1/2) / (1/2) = 1, A_neg = (1 - 1/2 - C(2,1)/C(3,1)) / (1/2) = -1/3.
    r = np.array([1, 0, 0, 0], np.float32)
    got = np.asarray(A.passk_scores(r, 4, 2))
    assert math.isclose(got[0], 1.0, abs_tol=1e-5)
    np.testing.assert_allclose(got[1:], -1 / 3, atol=1e-5)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_group_advantages_have_zero_group_mean(seed):
    d = make_batch(seed, empty_row=False)
    for est in ("grpo", "dr_grpo", "rloo", "gpg"):
        preset, overrides, _ = CASES[est]
        _, adv, _ = run(est, preset, overrides, (), d)
        per_resp = adv[:, 0].reshape(-1, G)  # every row has >= 1 token, column 0 is valid
        np.testing.assert_allclose(per_resp.mean(-1), 0.0, atol=1e-5)
    _, adv, _ = run("opo", "opo", {}, (), d)
    lengths = d["response_mask"].sum(-1).reshape(-1, G)
    np.testing.assert_allclose((adv[:, 0].reshape(-1, G) * lengths).sum(-1), 0.0, atol=1e-4)


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_padding_invariance(seed):
    """Garbage (NaN, huge) at padded positions and 3 appended padded columns change nothing."""
    d = make_batch(seed, binary=True)
    rng = np.random.default_rng(seed + 1)
    padded = dict(d)
    pad = 3
    padded["response_mask"] = np.pad(d["response_mask"], ((0, 0), (0, pad)))
    hole = padded["response_mask"] == 0
    for key in ("token_rewards", "values"):
        x = np.pad(d[key], ((0, 0), (0, pad)))
        garbage = rng.choice([np.nan, 1e30, -7.0], size=x.shape)
        padded[key] = np.where(hole, garbage, x).astype(np.float32)
    for est, (preset, overrides, inputs) in CASES.items():
        _, adv, ret = run(est, preset, overrides, inputs, d)
        algo, f = jitted(preset, tuple(sorted(overrides.items())), tuple(inputs))
        adv2, ret2 = map(
            np.asarray, f({k: padded[k] for k in ("rewards", "response_mask", *inputs)})
        )
        np.testing.assert_allclose(adv2[:, :T], adv, rtol=1e-5, atol=1e-6, err_msg=est)
        np.testing.assert_allclose(ret2[:, :T], ret, rtol=1e-5, atol=1e-6, err_msg=est)
        assert np.all(adv2[hole] == 0) and np.all(ret2[hole] == 0), est


def test_degenerate_groups():
    r = np.array([1, 1, 1, 1, 0, 1, 0, 0], np.float32)
    np.testing.assert_array_equal(np.asarray(A.degenerate_groups(r, 4)), [True, False])


def test_vapo_lambda():
    np.testing.assert_allclose(
        np.asarray(A.vapo_lambda(np.array([100.0, 1000.0, 5.0]), 0.05)),
        [0.8, 0.98, 0.0],
        atol=1e-6,
    )


# ----------------------------- bad input ---------------------------------------------


def _good():
    d = make_batch(0)
    return {"rewards": d["rewards"], "response_mask": d["response_mask"], "group_size": G}


@pytest.mark.parametrize(
    "change, match",
    [
        ({"group_size": 3}, "does not divide"),
        ({"group_size": 0}, "positive int"),
        ({"rewards": np.zeros((B, 1))}, r"rewards must be \[B\]"),
        ({"response_mask": np.ones((B + 1, T))}, "response_mask must be"),
        ({"values": np.zeros((B, T + 1))}, "values must match"),
        ({"baseline_rewards": np.zeros(B + 1)}, "baseline_rewards must be"),
        (
            {"rewards": np.r_[np.nan, np.zeros(B - 1)]},
            "rewards has a non-finite value nan at index 0",
        ),
        ({"response_mask": np.full((B, T), 0.5)}, "only 0/1"),
    ],
)
def test_check_inputs_rejects(change, match):
    with pytest.raises(ValueError, match=match):
        A.check_inputs(**{**_good(), **change})


def test_check_inputs_values_nan_only_matters_at_valid_positions():
    good = _good()
    values = np.zeros((B, T), np.float32)
    values[good["response_mask"] == 0] = np.nan
    A.check_inputs(algorithms.get("ppo"), values=values, **good)  # padding NaN is fine
    values[0, 0] = np.nan
    good["response_mask"][0, 0] = 1
    with pytest.raises(
        ValueError, match=r"values has a non-finite value at valid position \[0, 0\]"
    ):
        A.check_inputs(algorithms.get("ppo"), values=values, **good)


def test_estimator_specific_requirements():
    good = _good()
    with pytest.raises(ValueError, match="needs values"):
        A.check_inputs(algorithms.get("ppo"), **good)
    with pytest.raises(ValueError, match="needs baseline_rewards"):
        A.check_inputs(algorithms.get("remax"), **good)
    with pytest.raises(ValueError, match="outcome rewards only"):
        A.check_inputs(algorithms.get("grpo"), token_rewards=np.zeros((B, T)), **good)
    with pytest.raises(ValueError, match="binary rewards"):
        A.check_inputs(algorithms.get("grpo_passk"), **good)
    with pytest.raises(ValueError, match="group_size >= 2"):
        A.check_inputs(algorithms.get("rloo"), **{**good, "group_size": 1})


def test_shape_errors_raise_under_jit():
    algo = algorithms.get("grpo")
    f = jax.jit(lambda r, m: A.compute_advantages(algo, rewards=r, response_mask=m, group_size=3))
    with pytest.raises(ValueError, match="does not divide"):
        f(np.zeros(B, np.float32), np.ones((B, T), np.float32))
