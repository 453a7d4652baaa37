"""Advantage estimators for RL on language models.

Conventions (all functions are pure JAX and jittable with `group_size` static):
  rewards        [B]     outcome reward per response
  response_mask  [B, T]  1 = real response token, 0 = padding (right or anywhere)
  token_rewards  [B, T]  optional per-token rewards (process rewards, KL penalty), added to
                         the outcome reward, which is placed on the last valid token
  values         [B, T]  critic values V(s_t) (gae only)
The batch is group-major: B = num_groups * group_size, and the `group_size` responses of one
prompt are contiguous, so `rewards.reshape(-1, group_size)` gives the groups.
Outputs are `[B, T]` and exactly 0 at padded positions; values at padded positions of any
input never influence a result.

`compute_advantages(algo, ...)` is the one entry point the trainer calls; it dispatches on
`algo.adv_estimator` through the `ADVANTAGE_ESTIMATORS` registry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax.rl.aggregation import masked_count, masked_whiten, safe_divide

Array = jax.Array


class AdvantageInputs(NamedTuple):
    """Everything an estimator may read (None = not provided)."""

    rewards: Array  # [B]
    response_mask: Array  # [B, T] bool
    group_size: int
    token_rewards: Array | None  # [B, T]
    values: Array | None  # [B, T]
    baseline_rewards: Array | None  # [B]


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def response_lengths(response_mask: Array) -> Array:
    """Number of valid tokens per response, `[B, T] -> [B]` float32."""
    return masked_count(response_mask, axis=-1)


def outcome_token_rewards(rewards: Array, response_mask: Array) -> Array:
    """Place the outcome reward `[B]` on the last valid token of each row, `[B, T]`.

    A row without valid tokens gets no reward anywhere.
    """
    m = response_mask.astype(bool)
    t = m.shape[-1]
    last = t - 1 - jnp.argmax(m[:, ::-1], axis=-1)
    onehot = (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(m, axis=-1, keepdims=True)
    return jnp.where(onehot, rewards[:, None], 0.0)


def broadcast_scores(scores: Array, response_mask: Array) -> Array:
    """Per-response scalar `[B]` -> the same value on every valid token `[B, T]`."""
    return jnp.where(response_mask.astype(bool), scores[:, None], 0.0)


def _groups(x: Array, group_size: int) -> Array:
    return x.reshape(-1, group_size)


def gae(
    token_rewards: Array,
    values: Array,
    response_mask: Array,
    gamma: float,
    lam: float | Array,
) -> tuple[Array, Array]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438, Eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}, computed with a
    reverse `lax.scan` over T. Padded positions are skipped (the bootstrap value and running
    advantage pass through them unchanged), so padding anywhere in a row is transparent and
    the value after the last valid token is 0 (episode end).

    Args:
      token_rewards, values, response_mask: `[B, T]`.
      gamma: discount. lam: GAE lambda, a scalar or per-row `[B]` (VAPO's length-adaptive).
    Returns:
      (advantages, returns = advantages + values), both `[B, T]`, 0 at padding.
    """
    m = response_mask.astype(bool)
    r = jnp.where(m, token_rewards, 0.0).astype(jnp.float32)
    v = jnp.where(m, values, 0.0).astype(jnp.float32)
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), r.shape[:1])

    def step(carry, xs):
        next_value, next_adv = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_value - v_t
        adv_t = delta + gamma * lam * next_adv
        carry = (jnp.where(m_t, v_t, next_value), jnp.where(m_t, adv_t, next_adv))
        return carry, adv_t

    zeros = jnp.zeros(r.shape[:1], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = jnp.where(m, adv.T, 0.0)
    return adv, jnp.where(m, adv + v, 0.0)


def discounted_returns(token_rewards: Array, response_mask: Array, gamma: float) -> Array:
    """Return-to-go G_t = sum_{s >= t, valid} gamma^(s-t) r_s, `[B, T]` (0 at padding).

    GAE with V = 0 and lambda = 1; padded positions are skipped as in `gae`.
    """
    return gae(token_rewards, jnp.zeros_like(token_rewards), response_mask, gamma, 1.0)[0]


def vapo_lambda(lengths: Array, alpha: float) -> Array:
    """VAPO length-adaptive GAE lambda (Yue et al. 2025, arXiv:2504.05118, Eq. 7).

    lambda_policy = 1 - 1 / (alpha * l), clipped to [0, 1] (for l < 1/alpha the formula
    would go negative; 0 then means one-step TD).
    """
    return jnp.clip(1.0 - 1.0 / (alpha * jnp.maximum(lengths, 1.0)), 0.0, 1.0)


def group_mean_std(rewards: Array, group_size: int) -> tuple[Array, Array]:
    """Per-response group mean and unbiased (ddof=1) group std, each `[B]`.

    A group of one has mean 0 and std 1 (its advantage is its reward), as in verl.
    """
    if group_size == 1:
        return jnp.zeros_like(rewards), jnp.ones_like(rewards)
    g = _groups(rewards, group_size)
    mean = jnp.mean(g, axis=-1, keepdims=True)
    std = jnp.std(g, axis=-1, ddof=1, keepdims=True)
    return (
        jnp.broadcast_to(mean, g.shape).reshape(-1),
        jnp.broadcast_to(std, g.shape).reshape(-1),
    )


def grpo_scores(
    rewards: Array,
    group_size: int,
    *,
    epsilon: float = 1e-6,
    norm_by_std: bool = True,
    batch_std: bool = False,
) -> Array:
    """GRPO outcome advantage per response `[B]` (Shao et al. 2024, arXiv:2402.03300, Eq. 3).

    A_i = (r_i - mean(group)) / (std(group) + epsilon). `norm_by_std=False` gives Dr. GRPO
    (Liu et al. 2025, arXiv:2503.20783). `batch_std=True` divides by the std of all rewards
    in the batch instead: Lite PPO's "group-level mean, batch-level std" (Liu et al. 2025,
    "Tricks or Traps?", arXiv:2508.08221, Sec. 4.1). Stds are unbiased (ddof=1).
    """
    mean, std = group_mean_std(rewards, group_size)
    centered = rewards - mean
    if not norm_by_std:
        return centered
    if batch_std:
        std = jnp.std(rewards, ddof=1) if rewards.shape[0] > 1 else jnp.float32(1.0)
    return centered / (std + epsilon)


def rloo_scores(rewards: Array, group_size: int) -> Array:
    """RLOO: r_i minus the mean of the other n-1 rewards of its group, `[B]`.

    Ahmadian et al. 2024 (arXiv:2402.14740, Eq. 6), = n/(n-1) (r_i - mean(group)).
    """
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2 (leave-one-out), got {group_size}")
    g = _groups(rewards, group_size)
    loo = (jnp.sum(g, axis=-1, keepdims=True) - g) / (group_size - 1)
    return (g - loo).reshape(-1)


def degenerate_groups(rewards: Array, group_size: int) -> Array:
    """`[num_groups]` bool: groups whose rewards are all equal (zero advantage signal).

    DAPO's dynamic sampling (arXiv:2503.14476, Eq. 11) drops these groups; GPG rescales by
    their share. Exact equality, so pass rewards that are exactly equal when they should be.
    """
    g = _groups(rewards, group_size)
    return jnp.all(g == g[:, :1], axis=-1)


def gpg_scores(
    rewards: Array, group_size: int, *, epsilon: float = 1e-6, norm_by_std: bool = False
) -> Array:
    """GPG advantage (Chu et al. 2025, arXiv:2504.02546, Eq. 8-9), `[B]`.

    A_i = alpha * (r_i - mean(group)) / F_norm with F_norm = 1 (or group std + eps with
    `norm_by_std`) and alpha = B / (B - M), M = number of responses in groups whose rewards
    are all equal: those contribute no gradient, so the batch mean is rescaled to the valid
    ones. If every group is degenerate, alpha = 1 (all advantages are 0 anyway).
    """
    mean, std = group_mean_std(rewards, group_size)
    n_groups = rewards.shape[0] // group_size
    n_valid = n_groups - jnp.sum(degenerate_groups(rewards, group_size))
    alpha = jnp.where(n_valid > 0, n_groups / jnp.maximum(n_valid, 1), 1.0)
    scale = std + epsilon if norm_by_std else 1.0
    return alpha * (rewards - mean) / scale


def opo_scores(rewards: Array, lengths: Array, group_size: int) -> Array:
    """OPO length-weighted optimal baseline (Hao et al. 2025, arXiv:2505.23585, Eq. 5), `[B]`.

    b = sum_j l_j r_j / sum_j l_j over the group; A_i = r_i - b. A group with total length 0
    uses the plain mean.
    """
    g_r = _groups(rewards, group_size)
    g_l = _groups(lengths, group_size)
    total = jnp.sum(g_l, axis=-1, keepdims=True)
    weighted = safe_divide(jnp.sum(g_l * g_r, axis=-1, keepdims=True), total)
    b = jnp.where(total > 0, weighted, jnp.mean(g_r, axis=-1, keepdims=True))
    return (g_r - b).reshape(-1)


def _comb_ratio(a: Array, m: int, k: int) -> Array:
    """C(a, k) / C(m, k) for integer-valued a <= m (0 when a < k), as a stable product."""
    out = jnp.ones_like(a)
    for j in range(k):
        out = out * jnp.maximum(a - j, 0.0) / (m - j)
    return out


def passk_scores(rewards: Array, group_size: int, k: int, epsilon: float = 1e-6) -> Array:
    """Analytic Pass@k advantage (Chen et al. 2025, "Pass@k Training", arXiv:2508.10751, Sec. 4).

    For a group of N responses with N_neg incorrect ones (binary rewards, correct = r > 0.5):
      mean pass@k of the group  R = 1 - C(N_neg, k) / C(N, k),  sigma = sqrt(R (1 - R)),
      A_pos = (1 - R) / sigma,  A_neg = (1 - R - C(N_neg - 1, k - 1) / C(N - 1, k - 1)) / sigma.
    For k = 1 this is GRPO with the population std. Groups with sigma = 0 get 0.
    """
    if not 1 <= k <= group_size:
        raise ValueError(f"pass_k must be in [1, group_size={group_size}], got {k}")
    correct = _groups(rewards > 0.5, group_size)
    n_neg = jnp.sum(~correct, axis=-1, keepdims=True).astype(jnp.float32)
    mean = 1.0 - _comb_ratio(n_neg, group_size, k)
    sigma = jnp.sqrt(jnp.maximum(mean * (1.0 - mean), 0.0))
    a_pos = 1.0 - mean
    a_neg = 1.0 - mean - _comb_ratio(n_neg - 1.0, group_size - 1, k - 1)
    adv = jnp.where(correct, a_pos, a_neg)
    return jnp.where(sigma > epsilon, adv / jnp.maximum(sigma, epsilon), 0.0).reshape(-1)


# --------------------------------------------------------------------------------------
# Registry entries: (algo, AdvantageInputs) -> (advantages [B,T], returns [B,T])
# --------------------------------------------------------------------------------------


# Properties of the estimators in ADVANTAGE_ESTIMATORS (below), used both by the trace-time
# input checks here and by `algorithms.validate`.
CRITIC_ESTIMATORS = frozenset({"gae"})  # need values [B, T]: use_critic must be True
BASELINE_ESTIMATORS = frozenset({"remax"})  # need baseline_rewards [B]: a greedy rollout
# accept token_rewards [B, T] (process rewards, kl_mode='reward')
# (rloo sums them into the sequence reward, RLOO paper Sec. 3: r(x, y) - beta KL(y)).
TOKEN_REWARD_ESTIMATORS = frozenset({"gae", "reinforce_pp", "reinforce_pp_baseline", "rloo"})


def _require(name: str, inp: AdvantageInputs) -> None:
    """Static (trace-time) checks that an estimator got exactly the inputs it uses."""
    if name in CRITIC_ESTIMATORS and inp.values is None:
        raise ValueError(f"adv_estimator {name!r} needs values [B, T] from a critic")
    if name in BASELINE_ESTIMATORS and inp.baseline_rewards is None:
        raise ValueError(f"adv_estimator {name!r} needs baseline_rewards [B] (greedy rewards)")
    if name not in TOKEN_REWARD_ESTIMATORS and inp.token_rewards is not None:
        raise ValueError(
            f"adv_estimator {name!r} takes outcome rewards only; token_rewards are accepted "
            f"by {sorted(TOKEN_REWARD_ESTIMATORS)} (use kl_mode='loss' for KL)"
        )


def _all_token_rewards(inp: AdvantageInputs, scores: Array) -> Array:
    tok = outcome_token_rewards(scores, inp.response_mask)
    if inp.token_rewards is not None:
        tok = tok + jnp.where(inp.response_mask, inp.token_rewards, 0.0)
    return tok


def _gae_entry(algo, inp: AdvantageInputs):
    """GAE with decoupled actor/critic lambda (VC-PPO, Yuan et al. 2025, arXiv:2503.01491,
    Sec. 4: returns use lam_critic, advantages use lam) and optional VAPO length-adaptive
    actor lambda (algo.vapo_alpha). Advantages are batch-whitened if algo.whiten_advantages."""
    _require("gae", inp)
    tok = _all_token_rewards(inp, inp.rewards)
    lam_actor = algo.lam
    if algo.vapo_alpha is not None:
        lam_actor = vapo_lambda(response_lengths(inp.response_mask), algo.vapo_alpha)
    adv, _ = gae(tok, inp.values, inp.response_mask, algo.gamma, lam_actor)
    _, returns = gae(tok, inp.values, inp.response_mask, algo.gamma, algo.lam_critic)
    if algo.whiten_advantages:
        adv = masked_whiten(adv, inp.response_mask)
    return adv, returns


def _sequence_rewards(inp: AdvantageInputs) -> Array:
    """Outcome reward plus the sum of token_rewards over the response, `[B]`."""
    if inp.token_rewards is None:
        return inp.rewards
    return inp.rewards + jnp.sum(jnp.where(inp.response_mask, inp.token_rewards, 0.0), axis=-1)


def _outcome_entry(name: str, score_fn: Callable[..., Array]):
    """Critic-free estimator: one score per response, broadcast; returns = advantages."""

    def entry(algo, inp: AdvantageInputs):
        _require(name, inp)
        adv = broadcast_scores(score_fn(algo, inp), inp.response_mask)
        return adv, adv

    entry.__name__ = f"_{name}_entry"
    return entry


def _reinforce_pp_entry(subtract_group_mean: bool):
    """REINFORCE++ (Hu 2025, arXiv:2501.03262, Eq. 5-7): per-token reward = outcome on the
    last token + token_rewards (e.g. -beta KL_t), discounted return-to-go, then whitening over
    all valid tokens of the batch. The -baseline variant subtracts the group mean of the
    outcome reward first (Sec. 3.2 "REINFORCE++-baseline")."""

    def entry(algo, inp: AdvantageInputs):
        name = "reinforce_pp_baseline" if subtract_group_mean else "reinforce_pp"
        _require(name, inp)
        scores = inp.rewards
        if subtract_group_mean:
            scores = scores - group_mean_std(scores, inp.group_size)[0]
        returns = discounted_returns(_all_token_rewards(inp, scores), inp.response_mask, algo.gamma)
        adv = masked_whiten(returns, inp.response_mask)
        return adv, adv

    return entry


ADVANTAGE_ESTIMATORS: dict[str, Callable[[ml_collections.ConfigDict, AdvantageInputs], tuple]] = {
    "gae": _gae_entry,
    "grpo": _outcome_entry(
        "grpo",
        lambda algo, inp: grpo_scores(
            inp.rewards,
            inp.group_size,
            epsilon=algo.adv_epsilon,
            norm_by_std=algo.norm_adv_by_std,
            batch_std=algo.batch_std_norm,
        ),
    ),
    "dr_grpo": _outcome_entry(
        "dr_grpo", lambda algo, inp: grpo_scores(inp.rewards, inp.group_size, norm_by_std=False)
    ),
    "rloo": _outcome_entry(
        "rloo", lambda algo, inp: rloo_scores(_sequence_rewards(inp), inp.group_size)
    ),
    "reinforce_pp": _reinforce_pp_entry(subtract_group_mean=False),
    "reinforce_pp_baseline": _reinforce_pp_entry(subtract_group_mean=True),
    # ReMax (Li et al. 2023, arXiv:2310.10505, Eq. 5): r(x, y) - r(x, y_greedy).
    "remax": _outcome_entry("remax", lambda algo, inp: inp.rewards - inp.baseline_rewards),
    "gpg": _outcome_entry(
        "gpg",
        lambda algo, inp: gpg_scores(
            inp.rewards, inp.group_size, epsilon=algo.adv_epsilon, norm_by_std=algo.norm_adv_by_std
        ),
    ),
    "opo": _outcome_entry(
        "opo",
        lambda algo, inp: opo_scores(
            inp.rewards, response_lengths(inp.response_mask), inp.group_size
        ),
    ),
    "grpo_passk": _outcome_entry(
        "grpo_passk",
        lambda algo, inp: passk_scores(inp.rewards, inp.group_size, algo.pass_k, algo.adv_epsilon),
    ),
}


def _check_shapes(
    rewards, response_mask, group_size, token_rewards=None, values=None, baseline_rewards=None
) -> None:
    """Shape and group-size checks; shapes are static, so these also run under jit."""
    if not isinstance(group_size, int | np.integer) or group_size < 1:
        raise ValueError(f"group_size must be a positive int (static), got {group_size!r}")
    if len(rewards.shape) != 1:
        raise ValueError(f"rewards must be [B], got shape {tuple(rewards.shape)}")
    if len(response_mask.shape) != 2 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(
            f"response_mask must be [B, T] with B = len(rewards) = {rewards.shape[0]}, "
            f"got shape {tuple(response_mask.shape)}"
        )
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the batch size {rewards.shape[0]} "
            "(the batch must be group-major: num_groups * group_size)"
        )
    for name, x in (("token_rewards", token_rewards), ("values", values)):
        if x is not None and tuple(x.shape) != tuple(response_mask.shape):
            raise ValueError(
                f"{name} must match response_mask {tuple(response_mask.shape)}, "
                f"got {tuple(x.shape)}"
            )
    if baseline_rewards is not None and tuple(baseline_rewards.shape) != tuple(rewards.shape):
        raise ValueError(
            f"baseline_rewards must be [B] = {tuple(rewards.shape)}, "
            f"got {tuple(baseline_rewards.shape)}"
        )


def compute_advantages(
    algo: ml_collections.ConfigDict,
    *,
    rewards: Array,
    response_mask: Array,
    group_size: int,
    token_rewards: Array | None = None,
    values: Array | None = None,
    baseline_rewards: Array | None = None,
) -> tuple[Array, Array]:
    """Advantages and returns for one batch, per `algo.adv_estimator`.

    Args:
      algo: algorithm ConfigDict (see `lrmjax.rl.algorithms`).
      rewards: `[B]` outcome rewards; B = num_groups * group_size, group-major.
      response_mask: `[B, T]`, 1 = response token.
      group_size: responses per prompt (static Python int).
      token_rewards: optional `[B, T]` extra per-token rewards (gae, reinforce_pp*), e.g.
        `kl.kl_penalty_rewards(...)` for kl_mode='reward'.
      values: `[B, T]` critic values (gae).
      baseline_rewards: `[B]` rewards of the greedy response of each prompt (remax).
    Returns:
      (advantages `[B, T]`, returns `[B, T]`), float32, 0 at padded positions; returns are
      the GAE value targets for gae and equal the advantages for critic-free estimators.
    Raises:
      ValueError on an unknown estimator, mismatched shapes, a group size that does not
      divide B, or missing/unsupported inputs. NaN checks need concrete values: call
      `check_inputs` on host arrays.
    """
    name = algo.adv_estimator
    if name not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown adv_estimator {name!r}; valid: {sorted(ADVANTAGE_ESTIMATORS)}")
    _check_shapes(rewards, response_mask, group_size, token_rewards, values, baseline_rewards)
    m = jnp.asarray(response_mask).astype(bool)

    def f32(x):
        return None if x is None else jnp.asarray(x, jnp.float32)

    # Padded positions are zeroed before any arithmetic (NaN * 0 would still be NaN).
    inp = AdvantageInputs(
        rewards=f32(rewards),
        response_mask=m,
        group_size=int(group_size),
        token_rewards=None if token_rewards is None else jnp.where(m, f32(token_rewards), 0.0),
        values=None if values is None else jnp.where(m, f32(values), 0.0),
        baseline_rewards=f32(baseline_rewards),
    )
    adv, returns = ADVANTAGE_ESTIMATORS[name](algo, inp)
    adv = jax.lax.stop_gradient(jnp.where(m, adv, 0.0))
    return adv, jax.lax.stop_gradient(jnp.where(m, returns, 0.0))


def check_inputs(
    algo: ml_collections.ConfigDict | None = None,
    *,
    rewards,
    response_mask,
    group_size: int,
    token_rewards=None,
    values=None,
    baseline_rewards=None,
) -> None:
    """Host-side validation of concrete arrays before they enter a jitted step.

    Checks shapes and group size, that the mask is 0/1, that rewards (and baselines) are
    finite, and that token_rewards / values are finite at valid positions (padding may hold
    anything). With `algo`, also the estimator's own requirements (by tracing
    `compute_advantages` abstractly) and binary rewards for grpo_passk.
    Raises ValueError naming the problem and the first offending index.
    """
    rewards = np.asarray(rewards)
    response_mask = np.asarray(response_mask)
    arrays = {"token_rewards": token_rewards, "values": values}
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    base = None if baseline_rewards is None else np.asarray(baseline_rewards)
    _check_shapes(
        rewards, response_mask, group_size, arrays.get("token_rewards"), arrays.get("values"), base
    )
    if not np.all((response_mask == 0) | (response_mask == 1)):
        raise ValueError("response_mask must contain only 0/1 (or False/True)")
    for name, x in (("rewards", rewards), ("baseline_rewards", base)):
        if x is not None and not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise ValueError(f"{name} has a non-finite value {x[bad]} at index {bad}")
    valid = response_mask.astype(bool)
    for name, x in arrays.items():
        bad = valid & ~np.isfinite(x)
        if bad.any():
            i, t = map(int, np.argwhere(bad)[0])
            raise ValueError(f"{name} has a non-finite value at valid position [{i}, {t}]")
    if algo is None:
        return
    if algo.adv_estimator == "grpo_passk" and not np.all((rewards == 0) | (rewards == 1)):
        raise ValueError("adv_estimator 'grpo_passk' needs binary rewards in {0, 1}")
    spec = functools.partial(compute_advantages, algo, group_size=int(group_size))
    jax.eval_shape(
        lambda r, m, tr, v, b: spec(
            rewards=r, response_mask=m, token_rewards=tr, values=v, baseline_rewards=b
        ),
        rewards.astype(np.float32),
        response_mask,
        arrays.get("token_rewards"),
        arrays.get("values"),
        base,
    )
