"""Scalar heads on the transformer trunk: a value head (PPO/VAPO critic) and a reward head.

Both reuse `Transformer(cfg)` with `return_hidden=True` and add one projection D -> 1. Params:
{'trunk': <transformer params>, 'head': {'kernel': [D, 1], 'bias': [1]}}, so a critic can be
initialized from a policy checkpoint with `init_from_policy`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lrmjax.models.presets import ModelConfig
from lrmjax.models.transformer import Transformer, positions_from_mask


class ScalarHeadModel(nn.Module):
    """Trunk + linear head giving one scalar per token: [B, T] float32 (`segment_ids` for
    packed rows, as in `Transformer`)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array, attention_mask: jax.Array,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        hidden, _ = Transformer(self.cfg, name="trunk")(tokens, positions, attention_mask,
                                                         return_hidden=True,
                                                         segment_ids=segment_ids)
        head = nn.Dense(1, dtype=jnp.float32, param_dtype=self.cfg.param_dtype,
                        kernel_init=nn.initializers.zeros, name="head")
        return head(hidden.astype(jnp.float32))[..., 0]


def init_head_params(cfg: ModelConfig, key: jax.Array) -> Any:
    tokens = jnp.zeros((1, 1), jnp.int32)
    params = ScalarHeadModel(cfg).init(key, tokens, tokens, jnp.ones((1, 1), bool))["params"]
    return nn.meta.unbox(params)


def init_from_policy(cfg: ModelConfig, policy_params: Any, key: jax.Array) -> Any:
    """A value/reward model whose trunk starts as a copy of the policy's params.

    The head starts at zero, so initial values are 0 (a neutral baseline for GAE). The policy
    LM head (if untied) is not part of the trunk and is dropped.
    """
    params = init_head_params(cfg, key)
    trunk = {k: v for k, v in policy_params.items() if k != "lm_head"}
    return {"trunk": jax.tree.map(jnp.array, trunk), "head": params["head"]}


def token_values(cfg: ModelConfig, params: Any, tokens: jax.Array, mask: jax.Array
                 ) -> jax.Array:
    """Per-token scalars [B, T] for a left-padded batch (tokens, mask: [B, T])."""
    return ScalarHeadModel(cfg).apply({"params": params}, tokens, positions_from_mask(mask), mask)


def sequence_scores(cfg: ModelConfig, params: Any, tokens: jax.Array, mask: jax.Array
                    ) -> jax.Array:
    """Reward-model score per sequence [B]: the head's output at the last real token.

    The last real token is the last column where `mask` is True (prompt left padded,
    response right padded).
    """
    values = token_values(cfg, params, tokens, mask)
    last = mask.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    return jnp.take_along_axis(values, last[:, None], axis=1)[:, 0]
