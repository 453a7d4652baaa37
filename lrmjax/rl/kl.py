"""KL divergence to a reference policy: per-token estimators and the adaptive coefficient.

The estimators follow J. Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html). Tokens are sampled from the current policy q = pi_theta
and p = pi_ref; with the log-ratio x = log p(y) - log q(y):

    k1 = -x                  unbiased, high variance, can be negative
    k2 = x^2 / 2             biased, low variance, >= 0
    k3 = (e^x - 1) - x       unbiased, low variance, >= 0

Used either as a loss term (kl_mode='loss', GRPO arXiv:2402.03300 Eq. 4 uses k3) or as a
per-token reward penalty r_t - beta * KL_t (kl_mode='reward', Ouyang et al. 2022
arXiv:2203.02155 Eq. 2; Ziegler et al. 2019 arXiv:1909.08593).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array

# Log-ratios are clipped before exp so a far-off-policy token cannot overflow.
_MAX_LOG_RATIO = 20.0
# k3 is clamped from above as in verl's "low_var_kl": a single token with a huge ratio
# would otherwise dominate the loss.
_K3_MAX = 10.0


def kl_k1(logprobs: Array, ref_logprobs: Array) -> Array:
    """k1 = log q - log p per token, `[B, T]` -> `[B, T]`."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Array, ref_logprobs: Array) -> Array:
    """k2 = (log q - log p)^2 / 2 per token."""
    return 0.5 * jnp.square(logprobs - ref_logprobs)


def kl_k3(logprobs: Array, ref_logprobs: Array) -> Array:
    """k3 = exp(x) - 1 - x with x = log p - log q (clipped to +-20), clamped to <= 10."""
    x = jnp.clip(ref_logprobs - logprobs, -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return jnp.minimum(jnp.expm1(x) - x, _K3_MAX)


KL_ESTIMATORS: dict[str, Callable[[Array, Array], Array]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}

# How the KL term enters training ('none' = no reference policy needed).
KL_MODES: tuple[str, ...] = ("none", "loss", "reward")


def kl_divergence(
    logprobs: Array, ref_logprobs: Array, response_mask: Array, estimator: str
) -> Array:
    """Per-token KL estimate `[B, T]`, exactly 0 at padded positions."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; valid: {sorted(KL_ESTIMATORS)}")
    m = response_mask.astype(bool)
    # Sanitize first so a NaN/inf at a padded position cannot reach the gradient either.
    logprobs = jnp.where(m, logprobs, 0.0)
    ref_logprobs = jnp.where(m, ref_logprobs, 0.0)
    return jnp.where(m, KL_ESTIMATORS[estimator](logprobs, ref_logprobs), 0.0)


def kl_penalty_rewards(
    logprobs: Array,
    ref_logprobs: Array,
    response_mask: Array,
    kl_coef: float | Array,
    estimator: str = "k1",
) -> Array:
    """Token rewards `-kl_coef * KL_t` `[B, T]` for kl_mode='reward' (0 at padding).

    Pass the result as `token_rewards` to `compute_advantages` (gae, reinforce_pp*): it is
    added to the outcome reward, which sits on the last response token. `logprobs` are the
    rollout (old) policy's logprobs, so the penalty is a constant of the update.
    """
    kl = kl_divergence(logprobs, ref_logprobs, response_mask, estimator)
    return jax.lax.stop_gradient(-kl_coef * kl)


@flax.struct.dataclass
class KLControllerState:
    """State of the KL coefficient controller: the current coefficient (scalar)."""

    coef: Array


def init_kl_controller(kl_coef: float) -> KLControllerState:
    """Initial controller state with coefficient `kl_coef`."""
    return KLControllerState(coef=jnp.asarray(kl_coef, jnp.float32))


def update_kl_controller(
    state: KLControllerState,
    observed_kl: Array | float,
    n_steps: int | Array,
    kl_target: float | None,
    kl_horizon: float,
) -> KLControllerState:
    """Adaptive KL controller of Ziegler et al. 2019 (arXiv:1909.08593, Sec. 2.2).

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    `observed_kl` is the mean per-sequence KL of the last batch and `n_steps` the number of
    samples in it. With `kl_target=None` the coefficient is fixed and the state is returned
    unchanged. Pure and jittable.
    """
    if kl_target is None:
        return state
    error = jnp.clip(jnp.asarray(observed_kl, jnp.float32) / kl_target - 1.0, -0.2, 0.2)
    return KLControllerState(coef=state.coef * (1.0 + error * n_steps / kl_horizon))
