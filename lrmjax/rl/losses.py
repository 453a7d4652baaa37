"""Policy losses, regularizers and the actor/critic loss entry points.

Conventions: token-level inputs are `[B, T]` with a response mask `[B, T]` (1 = response
token). A policy loss returns a per-token loss matrix `[B, T]` (0 at padding) and scalar
metrics; `actor_loss` aggregates it with one of the modes of `lrmjax.rl.aggregation`, adds
the entropy bonus and KL term, and is what the trainer calls inside its jitted step.
Padded positions are zeroed before any arithmetic, so NaN/inf there can reach neither the
loss nor its gradient.

Diagnostic metrics (clip fractions, ppo_kl, ratio_mean/max, entropy) are token means over
the valid tokens of the call; loss-valued metrics (pg_loss, kl_loss) follow the denominator
used for the loss, so with a global `loss_denominator` they add up over microbatches.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from lrmjax.rl import aggregation as agg
from lrmjax.rl.kl import kl_divergence

Array = jax.Array
Metrics = dict[str, Array]

# Log-ratios are clipped before exp so a far-off-policy token cannot overflow (as in verl).
_MAX_LOG_RATIO = 20.0

TIS_MODES: tuple[str, ...] = ("none", "token", "sequence")


def _nonzero(coef: float | Array) -> bool:
    """Whether a coefficient's term is on: a traced coefficient (a swept hyperparameter,
    `lrmjax.train.pure.Knobs`) always is, since its value is not known when tracing."""
    return isinstance(coef, jax.Array) or coef != 0


def _ratio(logprobs: Array, old_logprobs: Array) -> tuple[Array, Array]:
    log_ratio = jnp.clip(logprobs - old_logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.exp(log_ratio), log_ratio


def _ratio_metrics(ratio: Array, log_ratio: Array, mask: Array) -> Metrics:
    ratio = jax.lax.stop_gradient(ratio)
    return {
        # Low-variance-free k1 estimate of KL(old || new) on the sampled tokens (verl's ppo_kl).
        "ppo_kl": agg.masked_mean(-jax.lax.stop_gradient(log_ratio), mask),
        "ratio_mean": agg.masked_mean(ratio, mask),
        "ratio_max": agg.masked_max(ratio, mask),
    }


def _seq_mean(x: Array, mask: Array) -> Array:
    """Per-row mean over valid tokens, `[B, T] -> [B]` (0 for an empty row)."""
    return agg.safe_divide(agg.masked_sum(x, mask, axis=-1), agg.masked_count(mask, axis=-1))


def clipped_surrogate(
    ratio: Array,
    advantages: Array,
    mask: Array,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None = None,
) -> tuple[Array, Metrics]:
    """PPO clipped surrogate per token, `[B, T]` (Schulman et al. 2017, arXiv:1707.06347, Eq. 7).

    l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)): decoupled clip range (DAPO
    "clip-higher", arXiv:2503.14476, Eq. 10). Dual clip (Ye et al. 2020, arXiv:1912.09729,
    Eq. 5): for A < 0, l = min(l, -A c) bounds the loss of a very large ratio; None = off.
    Metrics: pg_clipfrac (tokens where clipping removed the gradient), pg_clipfrac_lower
    (tokens where the dual clip bound).
    """
    loss1 = -advantages * ratio
    loss2 = -advantages * jnp.clip(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped = jnp.maximum(loss1, loss2)
    metrics = {"pg_clipfrac": agg.masked_mean((loss2 > loss1).astype(jnp.float32), mask)}
    if clip_ratio_c is None:
        metrics["pg_clipfrac_lower"] = jnp.float32(0.0)
        return jnp.where(mask, clipped, 0.0), metrics
    loss3 = -advantages * clip_ratio_c
    dual = jnp.where(advantages < 0, jnp.minimum(clipped, loss3), clipped)
    lower = (clipped > loss3) & (advantages < 0)
    metrics["pg_clipfrac_lower"] = agg.masked_mean(lower.astype(jnp.float32), mask)
    return jnp.where(mask, dual, 0.0), metrics


def ppo_loss(
    logprobs, old_logprobs, advantages, mask, *, clip_ratio_low, clip_ratio_high, clip_ratio_c=None
) -> tuple[Array, Metrics]:
    """Token-level PPO / GRPO / DAPO loss `[B, T]`: ratio r_t = pi(y_t) / pi_old(y_t)."""
    ratio, log_ratio = _ratio(logprobs, old_logprobs)
    loss, metrics = clipped_surrogate(
        ratio, advantages, mask, clip_ratio_low, clip_ratio_high, clip_ratio_c
    )
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, mask)}


def gspo_loss(
    logprobs, old_logprobs, advantages, mask, *, clip_ratio_low, clip_ratio_high
) -> tuple[Array, Metrics]:
    """GSPO sequence-level loss (Zheng et al. 2025, arXiv:2507.18071, Eq. 5-7).

    s_i = exp(mean_t (log pi - log pi_old)) (the geometric mean of token ratios), clipped per
    sequence; A_i = mean of the advantages over the response's tokens. The per-sequence loss
    max(-A_i s_i, -A_i clip(s_i)) is placed on every valid token of the row, so
    seq-mean-token-mean aggregation gives the paper's 1/G sum_i. No dual clip.
    """
    log_s = jnp.clip(_seq_mean(logprobs - old_logprobs, mask), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    s = jnp.exp(log_s)
    adv = _seq_mean(advantages, mask)
    loss1 = -adv * s
    loss2 = -adv * jnp.clip(s, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    seq_loss = jnp.maximum(loss1, loss2)
    ratio = jnp.broadcast_to(s[:, None], mask.shape)
    log_ratio = jnp.broadcast_to(log_s[:, None], mask.shape)
    clipped = jnp.broadcast_to((loss2 > loss1)[:, None], mask.shape).astype(jnp.float32)
    metrics = {
        "pg_clipfrac": agg.masked_mean(clipped, mask),
        "pg_clipfrac_lower": jnp.float32(0.0),
        **_ratio_metrics(ratio, log_ratio, mask),
    }
    return jnp.where(mask, seq_loss[:, None], 0.0), metrics


def gspo_token_loss(
    logprobs, old_logprobs, advantages, mask, *, clip_ratio_low, clip_ratio_high
) -> tuple[Array, Metrics]:
    """GSPO-token (arXiv:2507.18071, Eq. 13-14): s_it = sg[s_i] * pi_t / sg[pi_t].

    Numerically s_it = s_i, but each token keeps its own gradient s_i * grad log pi_t and its
    own advantage A_it; with A_it = A_i it has the same gradient as GSPO.
    """
    log_s = jnp.clip(_seq_mean(logprobs - old_logprobs, mask), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    log_ratio = jax.lax.stop_gradient(log_s)[:, None] + logprobs - jax.lax.stop_gradient(logprobs)
    ratio = jnp.exp(log_ratio)
    loss, metrics = clipped_surrogate(ratio, advantages, mask, clip_ratio_low, clip_ratio_high)
    return loss, {**metrics, **_ratio_metrics(ratio, log_ratio, mask)}


def cispo_loss(
    logprobs, old_logprobs, advantages, mask, *, clip_ratio_low, clip_ratio_high
) -> tuple[Array, Metrics]:
    """CISPO (MiniMax-M1, arXiv:2506.13585, Eq. 4-5): -sg(clip(r_t, 1-eps_l, 1+eps_h)) A_t log pi_t.

    The importance weight is clipped and detached instead of the update: every token keeps
    its gradient. pg_clipfrac = tokens whose weight was truncated (either side),
    pg_clipfrac_lower = truncated from below.
    """
    ratio, log_ratio = _ratio(logprobs, old_logprobs)
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high))
    loss = -weight * advantages * logprobs
    r = jax.lax.stop_gradient(ratio)
    metrics = {
        "pg_clipfrac": agg.masked_mean(
            ((r > 1.0 + clip_ratio_high) | (r < 1.0 - clip_ratio_low)).astype(jnp.float32), mask
        ),
        "pg_clipfrac_lower": agg.masked_mean((r < 1.0 - clip_ratio_low).astype(jnp.float32), mask),
        **_ratio_metrics(ratio, log_ratio, mask),
    }
    return jnp.where(mask, loss, 0.0), metrics


def reinforce_loss(logprobs, old_logprobs, advantages, mask) -> tuple[Array, Metrics]:
    """Vanilla policy gradient -A_t log pi_t (Williams 1992; GPG arXiv:2504.02546, Eq. 7).

    No ratio and no clipping: exact only on-policy (one update per batch).
    """
    ratio, log_ratio = _ratio(logprobs, old_logprobs)
    metrics = {
        "pg_clipfrac": jnp.float32(0.0),
        "pg_clipfrac_lower": jnp.float32(0.0),
        **_ratio_metrics(ratio, log_ratio, mask),
    }
    return jnp.where(mask, -advantages * logprobs, 0.0), metrics


def kl_cov_loss(
    logprobs, old_logprobs, advantages, mask, *, kl_cov_ratio, kl_cov_coef
) -> tuple[Array, Metrics]:
    """KL-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs",
    arXiv:2505.22617, Eq. 12).

    Unclipped -A r everywhere, plus kl_cov_coef * |log pi - log pi_old| on the
    k = max(1, floor(kl_cov_ratio * N)) valid tokens with the largest centered covariance
    Cov_t = (A_t - mean A)(log pi_t - mean log pi) (means over the valid tokens of this call).
    pg_clipfrac = share of penalized tokens.
    """
    ratio, log_ratio = _ratio(logprobs, old_logprobs)
    sg_lp = jax.lax.stop_gradient(logprobs)
    cov = (advantages - agg.masked_mean(advantages, mask)) * (sg_lp - agg.masked_mean(sg_lp, mask))
    n_valid = agg.masked_count(mask)
    k = jnp.maximum(jnp.floor(kl_cov_ratio * n_valid), 1.0)
    flat = jnp.where(mask, cov, -jnp.inf).reshape(-1)
    order = jnp.argsort(-flat, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    selected = (rank.reshape(mask.shape) < k) & mask
    # |x| written as x * sign(x): its gradient at x = 0 (on-policy) is the subgradient 0, as
    # in the PyTorch reference; jnp.abs would give 1 there.
    diff = logprobs - old_logprobs
    loss = -advantages * ratio + jnp.where(selected, kl_cov_coef * diff * jnp.sign(diff), 0.0)
    metrics = {
        "pg_clipfrac": agg.masked_mean(selected.astype(jnp.float32), mask),
        "pg_clipfrac_lower": jnp.float32(0.0),
        **_ratio_metrics(ratio, log_ratio, mask),
    }
    return jnp.where(mask, loss, 0.0), metrics


def _clip_kwargs(algo) -> dict:
    return {"clip_ratio_low": algo.clip_ratio_low, "clip_ratio_high": algo.clip_ratio_high}


# name -> fn(algo, logprobs, old_logprobs, advantages, mask) -> (loss_mat [B,T], metrics)
POLICY_LOSSES: dict[str, Callable[..., tuple[Array, Metrics]]] = {
    "ppo": lambda algo, *a: ppo_loss(*a, **_clip_kwargs(algo), clip_ratio_c=algo.clip_ratio_c),
    "gspo": lambda algo, *a: gspo_loss(*a, **_clip_kwargs(algo)),
    "gspo_token": lambda algo, *a: gspo_token_loss(*a, **_clip_kwargs(algo)),
    "cispo": lambda algo, *a: cispo_loss(*a, **_clip_kwargs(algo)),
    "reinforce": lambda algo, *a: reinforce_loss(*a),
    "kl_cov": lambda algo, *a: kl_cov_loss(
        *a, kl_cov_ratio=algo.kl_cov_ratio, kl_cov_coef=algo.kl_cov_coef
    ),
}
# GPG's policy loss (arXiv:2504.02546, Eq. 7) is REINFORCE: one function under both names.
POLICY_LOSSES["gpg"] = POLICY_LOSSES["reinforce"]


# --------------------------------------------------------------------------------------
# Regularizers and corrections
# --------------------------------------------------------------------------------------


def entropy_from_logits(logits: Array) -> Array:
    """Per-position entropy H = -sum_v p_v log p_v, `[..., V] -> [...]`, in float32.

    Computed from log_softmax (no log(0), no overflow for large logits).
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def top_entropy_mask(entropy: Array, mask: Array, frac: float) -> Array:
    """Valid tokens in the top `frac` of entropy, `[B, T]` bool (Wang et al. 2025,
    "Beyond the 80/20 Rule", arXiv:2506.01939, Sec. 5: train on high-entropy forking tokens).

    The threshold is the k-th largest valid entropy with k = ceil(frac * N_valid), over the
    tokens of this call; ties at the threshold are all kept. The entropy is not
    differentiated through.
    """
    mask = mask.astype(bool)
    if frac >= 1.0:
        return mask
    entropy = jax.lax.stop_gradient(entropy)
    k = jnp.maximum(jnp.ceil(frac * agg.masked_count(mask)), 1.0).astype(jnp.int32)
    desc = -jnp.sort(-jnp.where(mask, entropy, -jnp.inf).reshape(-1))
    threshold = desc[k - 1]
    return mask & (entropy >= threshold)


def tis_weights(
    old_logprobs: Array, sampler_logprobs: Array, mask: Array, mode: str, cap: float
) -> tuple[Array, Metrics]:
    """Truncated importance sampling weights for sampler/trainer mismatch, `[B, T]`.

    Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training" (fengyao.notion.site/off-policy-rl): the rollout engine's probabilities differ
    numerically from the trainer's, so the loss is reweighted by
    min(pi_trainer_old / pi_sampler, cap), per token ('token') or with the sequence product
    ('sequence', the ratio of sequence probabilities). Weights are constants (no gradient).
    """
    if mode not in TIS_MODES:
        raise ValueError(f"unknown tis_mode {mode!r}; valid: {list(TIS_MODES)}")
    log_w = jnp.where(mask, old_logprobs - sampler_logprobs, 0.0)
    if mode == "sequence":
        log_w = jnp.broadcast_to(jnp.sum(log_w, axis=-1, keepdims=True), mask.shape)
    raw = jnp.exp(jnp.clip(log_w, -_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    w = jax.lax.stop_gradient(jnp.where(mask, jnp.minimum(raw, cap), 0.0))
    metrics = {
        "tis_weight_mean": agg.masked_mean(w, mask),
        "tis_clipfrac": agg.masked_mean((raw > cap).astype(jnp.float32), mask),
    }
    return w, metrics


def value_loss(
    values: Array, old_values: Array, returns: Array, mask: Array, vf_clip: float | None
) -> tuple[Array, Array]:
    """Clipped value loss per token (PPO2 style; e.g. Ouyang et al. 2022 / verl), `[B, T]`.

    0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2); vf_clip=None = unclipped.
    Returns (loss_mat, clipfrac scalar: share of tokens where the clipped term was larger).
    """
    loss1 = jnp.square(values - returns)
    if vf_clip is None:
        return jnp.where(mask, 0.5 * loss1, 0.0), jnp.float32(0.0)
    clipped = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
    loss2 = jnp.square(clipped - returns)
    clipfrac = agg.masked_mean((loss2 > loss1).astype(jnp.float32), mask)
    return jnp.where(mask, 0.5 * jnp.maximum(loss1, loss2), 0.0), clipfrac


def explained_variance(values: Array, returns: Array, mask: Array) -> Array:
    """1 - Var(R - V) / Var(R) over valid tokens (0 when Var(R) = 0)."""
    var_r = agg.masked_var(returns, mask)
    var_diff = agg.masked_var(returns - values, mask)
    return jnp.where(var_r > 0, 1.0 - agg.safe_divide(var_diff, var_r), 0.0)


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _check_same_shape(ref_name: str, ref: Array, **arrays: Array | None) -> None:
    if len(ref.shape) != 2:
        raise ValueError(f"{ref_name} must be [B, T], got shape {tuple(ref.shape)}")
    for name, x in arrays.items():
        if x is not None and tuple(x.shape) != tuple(ref.shape):
            raise ValueError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}"
            )


def _norm_len(algo, response_mask: Array, max_response_len: int | None = None) -> int:
    """Constant of seq-mean-token-sum-norm: algo.max_response_len_norm, else the given
    maximum response length, else the padded response width T."""
    if algo.max_response_len_norm is not None:
        return int(algo.max_response_len_norm)
    return int(max_response_len if max_response_len is not None else response_mask.shape[-1])


def loss_denominator(
    algo: ml_collections.ConfigDict, response_mask: Array, max_response_len: int | None = None
) -> Array:
    """Global loss denominator of a minibatch `[B, T]` mask, for gradient accumulation.

    Pass it as `loss_denominator` to `actor_loss` on each microbatch: the microbatch losses
    (and gradients) then sum exactly to the minibatch's. `max_response_len` is the
    seq-mean-token-sum-norm constant when algo.max_response_len_norm is None (default: T).
    """
    return agg.denominator(
        response_mask.astype(bool),
        algo.loss_agg_mode,
        _norm_len(algo, response_mask, max_response_len),
    )


def actor_loss(
    algo: ml_collections.ConfigDict,
    *,
    logprobs: Array,
    old_logprobs: Array,
    advantages: Array,
    response_mask: Array,
    ref_logprobs: Array | None = None,
    entropy: Array | None = None,
    sampler_logprobs: Array | None = None,
    loss_denominator: Array | float | None = None,
    kl_coef: Array | float | None = None,
) -> tuple[Array, Metrics]:
    """Policy loss + regularizers for one (micro)batch; differentiable w.r.t. `logprobs`.

    loss = agg(policy_loss * tis_weight * top_entropy_sel) - entropy_coef * agg(entropy)
           + kl_coef * agg(KL(pi || pi_ref))    [the KL term only if kl_mode == 'loss']

    Args:
      algo: algorithm ConfigDict (`lrmjax.rl.algorithms.get`).
      logprobs: `[B, T]` log pi_theta of the sampled tokens (current params).
      old_logprobs: `[B, T]` log pi_old (trainer forward at rollout params).
      advantages: `[B, T]` from `compute_advantages`.
      response_mask: `[B, T]`, 1 = response token.
      ref_logprobs: `[B, T]` reference-policy logprobs (needed iff kl_mode == 'loss').
      entropy: `[B, T]` per-token entropy of pi_theta (needed iff entropy_coef != 0 or
        top_entropy_frac < 1; reported as the `entropy` metric when given).
      sampler_logprobs: `[B, T]` logprobs reported by the sampler (needed iff tis_mode).
      loss_denominator: global denominator from `loss_denominator(...)` over the whole
        minibatch; None = this call's own denominator.
      kl_coef: overrides algo.kl_coef (e.g. from an adaptive controller).
    Returns:
      (scalar loss, metrics): pg_loss, pg_clipfrac, pg_clipfrac_lower, ppo_kl, ratio_mean,
      ratio_max, plus entropy / kl_loss / tis_* / top_entropy_selected when those are on.
    Notes:
      The top-entropy selection zeroes the loss of unselected tokens but keeps the
      aggregation denominator of the full response mask, so gradient accumulation stays
      exact given the selection (the selection threshold itself is per call).
    """
    _check_same_shape(
        "logprobs",
        logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        response_mask=response_mask,
        ref_logprobs=ref_logprobs,
        entropy=entropy,
        sampler_logprobs=sampler_logprobs,
    )
    if algo.policy_loss not in POLICY_LOSSES:
        raise ValueError(
            f"unknown policy_loss {algo.policy_loss!r}; valid: {sorted(POLICY_LOSSES)}"
        )
    if algo.kl_mode == "loss" and ref_logprobs is None:
        raise ValueError("kl_mode='loss' needs ref_logprobs")
    if algo.tis_mode != "none" and sampler_logprobs is None:
        raise ValueError(f"tis_mode={algo.tis_mode!r} needs sampler_logprobs")
    if entropy is None and (_nonzero(algo.entropy_coef) or algo.top_entropy_frac < 1.0):
        raise ValueError("entropy_coef != 0 or top_entropy_frac < 1 needs entropy [B, T]")

    m = response_mask.astype(bool)

    def clean(x):
        return None if x is None else jnp.where(m, x, 0.0)

    logprobs, old_logprobs, advantages = clean(logprobs), clean(old_logprobs), clean(advantages)
    old_logprobs = jax.lax.stop_gradient(old_logprobs)
    advantages = jax.lax.stop_gradient(advantages)
    mode = algo.loss_agg_mode
    norm_len = _norm_len(algo, response_mask)

    loss_mat, metrics = POLICY_LOSSES[algo.policy_loss](algo, logprobs, old_logprobs, advantages, m)
    if algo.tis_mode != "none":
        w, tis_metrics = tis_weights(
            old_logprobs, clean(sampler_logprobs), m, algo.tis_mode, algo.tis_cap
        )
        loss_mat = loss_mat * w
        metrics.update(tis_metrics)
    if entropy is not None:
        entropy = clean(entropy)
        metrics["entropy"] = agg.masked_mean(jax.lax.stop_gradient(entropy), m)
    if algo.top_entropy_frac < 1.0:
        selected = top_entropy_mask(entropy, m, algo.top_entropy_frac)
        loss_mat = jnp.where(selected, loss_mat, 0.0)
        metrics["top_entropy_selected"] = agg.masked_mean(selected.astype(jnp.float32), m)

    num, den = agg.aggregate(loss_mat, m, mode, norm_len)
    if loss_denominator is not None:
        den = jnp.asarray(loss_denominator, jnp.float32)
    pg_loss = agg.safe_divide(num, den)
    metrics["pg_loss"] = pg_loss
    total = pg_loss

    if _nonzero(algo.entropy_coef):
        ent_agg = agg.safe_divide(agg.aggregate(entropy, m, mode, norm_len)[0], den)
        total = total - algo.entropy_coef * ent_agg
    if algo.kl_mode == "loss":
        coef = algo.kl_coef if kl_coef is None else kl_coef
        kl = kl_divergence(logprobs, clean(ref_logprobs), m, algo.kl_estimator)
        kl_loss = agg.safe_divide(agg.aggregate(kl, m, mode, norm_len)[0], den)
        metrics["kl_loss"] = kl_loss
        metrics["kl_coef"] = jnp.asarray(coef, jnp.float32)
        total = total + coef * kl_loss
    return total, metrics


def critic_loss(
    algo: ml_collections.ConfigDict,
    *,
    values: Array,
    old_values: Array,
    returns: Array,
    response_mask: Array,
    loss_denominator: Array | float | None = None,
) -> tuple[Array, Metrics]:
    """Critic loss vf_coef * token-mean(clipped value loss) for one (micro)batch.

    Args: values (current critic), old_values (at rollout), returns (targets from
    `compute_advantages`), response_mask, all `[B, T]`; loss_denominator: global number of
    valid tokens of the minibatch for gradient accumulation (None = local count).
    Returns: (loss, {vf_loss, vf_clipfrac, vf_explained_var, vpred_mean}).
    """
    _check_same_shape(
        "values", values, old_values=old_values, returns=returns, response_mask=response_mask
    )
    m = response_mask.astype(bool)
    values = jnp.where(m, values, 0.0)
    old_values = jax.lax.stop_gradient(jnp.where(m, old_values, 0.0))
    returns = jax.lax.stop_gradient(jnp.where(m, returns, 0.0))
    loss_mat, clipfrac = value_loss(values, old_values, returns, m, algo.vf_clip)
    num, den = agg.aggregate(loss_mat, m, "token-mean")
    if loss_denominator is not None:
        den = jnp.asarray(loss_denominator, jnp.float32)
    vf_loss = agg.safe_divide(num, den)
    metrics = {
        "vf_loss": vf_loss,
        "vf_clipfrac": clipfrac,
        "vf_explained_var": explained_variance(jax.lax.stop_gradient(values), returns, m),
        "vpred_mean": agg.masked_mean(jax.lax.stop_gradient(values), m),
    }
    return algo.vf_coef * vf_loss, metrics
