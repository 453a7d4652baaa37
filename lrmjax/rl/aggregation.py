"""Masked reductions and loss aggregation modes.

Every token-level quantity in `lrmjax.rl` is a padded array `[B, T]` paired with a response
mask `[B, T]` (1 = real response token). The helpers here are the only places that reduce
such arrays, so that padded positions can never leak into a result: they select with
`jnp.where` (not `x * mask`, which turns a NaN or inf at a padded position into NaN).

Loss aggregation is split into a numerator and a denominator so that gradient
accumulation is exact: for a minibatch split into microbatches (by rows),

    full_batch_loss == sum_mb(numerator_mb) / denominator(full minibatch mask)

for every mode (see `aggregate` and `denominator`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def masked_sum(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Sum of `x` over positions where `mask` is true; masked positions contribute exactly 0."""
    return jnp.sum(jnp.where(mask.astype(bool), x, 0.0), axis=axis)


def masked_count(mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Number of true positions of `mask` (as float32)."""
    return jnp.sum(mask.astype(bool), axis=axis, dtype=jnp.float32)


def safe_divide(num: Array, den: Array) -> Array:
    """`num / den`, and 0 where `den == 0` (an empty mask gives 0, never NaN)."""
    den = jnp.asarray(den, jnp.float32)
    return jnp.where(den != 0, num / jnp.where(den != 0, den, 1.0), 0.0)


def masked_mean(x: Array, mask: Array, axis: int | tuple[int, ...] | None = None) -> Array:
    """Mean of `x` over valid positions (0 if there are none)."""
    return safe_divide(masked_sum(x, mask, axis), masked_count(mask, axis))


def masked_var(x: Array, mask: Array) -> Array:
    """Population variance of `x` over all valid positions (scalar; 0 if empty)."""
    mean = masked_mean(x, mask)
    return masked_mean(jnp.square(x - mean), mask)


def masked_max(x: Array, mask: Array) -> Array:
    """Max of `x` over valid positions (0 if there are none)."""
    m = mask.astype(bool)
    return jnp.where(jnp.any(m), jnp.max(jnp.where(m, x, -jnp.inf)), 0.0)


def masked_whiten(x: Array, mask: Array, epsilon: float = 1e-8) -> Array:
    """Batch whitening over valid tokens: `(x - mean) / sqrt(var + epsilon)`, 0 at padding.

    Mean and (population) variance are taken over every valid position of the whole
    array, as in REINFORCE++ (Hu 2025, arXiv:2501.03262, "global advantage normalization").
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    return jnp.where(mask.astype(bool), (x - mean) * jax.lax.rsqrt(var + epsilon), 0.0)


# --------------------------------------------------------------------------------------
# Loss aggregation. Each mode maps (loss_mat [B,T], mask [B,T]) to a numerator that is a
# sum over rows (hence additive over microbatches) and a denominator that depends only on
# the mask. Only the seq-mean-token-mean numerator needs whole rows, which microbatches
# (row splits) always have.
# --------------------------------------------------------------------------------------


def _token_sums(loss_mat: Array, mask: Array) -> Array:
    return masked_sum(loss_mat, mask)


def _seq_token_means(loss_mat: Array, mask: Array) -> Array:
    per_seq = safe_divide(masked_sum(loss_mat, mask, axis=-1), masked_count(mask, axis=-1))
    return jnp.sum(per_seq)


def _num_sequences(mask: Array) -> Array:
    # Rows without a single valid token (padding rows, filtered responses) are not counted.
    return jnp.sum(jnp.any(mask.astype(bool), axis=-1), dtype=jnp.float32)


# mode -> (numerator fn, denominator fn(mask, norm_len)). The registry the presets are
# validated against.
AGGREGATIONS: dict[str, tuple[Callable[..., Array], Callable[..., Array]]] = {
    # sum_{i,t} l_it / sum_{i,t} m_it  (DAPO, arXiv:2503.14476, Eq. 8: token-level loss)
    "token-mean": (_token_sums, lambda mask, norm_len: masked_count(mask)),
    # sum_{i,t} l_it
    "token-sum": (_token_sums, lambda mask, norm_len: jnp.float32(1.0)),
    # 1/G sum_i (1/|o_i| sum_t l_it)  (GRPO, arXiv:2402.03300, Eq. 3)
    "seq-mean-token-mean": (_seq_token_means, lambda mask, norm_len: _num_sequences(mask)),
    # 1/G sum_i sum_t l_it
    "seq-mean-token-sum": (_token_sums, lambda mask, norm_len: _num_sequences(mask)),
    # 1/G sum_i sum_t l_it / MAX_LEN  (Dr. GRPO, arXiv:2503.20783, Sec. 3.1: the 1/|o_i|
    # length normalizer replaced by a constant)
    "seq-mean-token-sum-norm": (
        _token_sums,
        lambda mask, norm_len: _num_sequences(mask) * jnp.float32(norm_len),
    ),
}


def _check_mode(mode: str, norm_len: int | None) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; valid: {sorted(AGGREGATIONS)}")
    if mode == "seq-mean-token-sum-norm" and (norm_len is None or norm_len <= 0):
        raise ValueError(
            "loss_agg_mode 'seq-mean-token-sum-norm' needs a positive constant normalizer "
            f"norm_len (the maximum response length), got {norm_len!r}"
        )


def denominator(mask: Array, mode: str, norm_len: int | None = None) -> Array:
    """Denominator of `mode` for a (mini)batch mask `[B, T]`; a float32 scalar.

    token-mean: number of valid tokens; token-sum: 1; seq-mean-*: number of rows with at
    least one valid token (times `norm_len` for seq-mean-token-sum-norm). Every mode but
    token-sum is additive over row-splits of the batch.
    """
    _check_mode(mode, norm_len)
    return AGGREGATIONS[mode][1](mask, norm_len)


def aggregate(
    loss_mat: Array, mask: Array, mode: str, norm_len: int | None = None
) -> tuple[Array, Array]:
    """Reduce a token-level loss `[B, T]` to `(numerator, denominator)` scalars.

    The aggregated loss is `numerator / denominator`. The numerator is a sum over rows, so
    for microbatches `mb` of one minibatch `sum(numerator_mb) / denominator(minibatch mask)`
    equals the minibatch value exactly (gradient accumulation). Positions where `mask` is 0
    contribute nothing; `norm_len` is the constant of seq-mean-token-sum-norm.
    """
    _check_mode(mode, norm_len)
    num_fn, den_fn = AGGREGATIONS[mode]
    return num_fn(loss_mat, mask), den_fn(mask, norm_len)


def aggregate_mean(loss_mat: Array, mask: Array, mode: str, norm_len: int | None = None) -> Array:
    """`numerator / denominator` of `aggregate` (0 for an empty mask)."""
    num, den = aggregate(loss_mat, mask, mode, norm_len)
    return safe_divide(num, den)
