"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): the
policy's params as a frozen base plus low-rank adapters, and their merge into the base.

The adapters are the "lora" variable collection of `transformer.Transformer` (see
`transformer.Projection`): for each targeted projection, lora_a [*in_dims, r] and lora_b
[r, *out_dims] at the kernel's path ({'layers_0': {'attn': {'q_proj': {'lora_a', 'lora_b'}}}},
or stacked on a leading [L] axis under 'layers' with `scan_layers`). A projection computes
x @ W + ((x @ A) * alpha / r) @ B, so its kernel is effectively W + (alpha / r) A @ B.

`LoraParams(base, adapters)` is the policy everywhere a params tree goes (sampler, log-prob
passes, evaluation): one pytree, whose `variables` are {'params': base, 'lora': adapters}. A
plain params tree stays a plain tree: {'params': params}, the model without adapters. The
reference policy under LoRA is `LoraParams.base` itself, the same arrays, no copy.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from lrmjax.models import transformer
from lrmjax.models.presets import ModelConfig

Array = jax.Array


@flax.struct.dataclass
class LoraParams:
    """The policy's params under LoRA: the frozen `base` (a transformer params tree, possibly
    stored in bf16) and the trained `adapters` (the "lora" collection)."""

    base: Any
    adapters: Any


def variables(params: Any) -> dict[str, Any]:
    """The variables of `Transformer.apply` for `params`: a plain params tree or LoraParams."""
    if isinstance(params, LoraParams):
        return {"params": params.base, "lora": params.adapters}
    return {"params": params}


def base_params(params: Any) -> Any:
    """The transformer params tree under `params` (the base of a LoraParams)."""
    return params.base if isinstance(params, LoraParams) else params


def delta(cfg: ModelConfig, a: Array, b: Array, lead: int = 0) -> Array:
    """(alpha / r) A @ B in float32: a [*lead, *in, r], b [*lead, r, *out] -> [*lead, *in, *out]
    (the `lead` axes, e.g. scan_layers' [L], are batch axes)."""
    def one(a, b):
        return jnp.tensordot(a.astype(jnp.float32), b.astype(jnp.float32), axes=1)

    for _ in range(lead):
        one = jax.vmap(one)
    return one(a, b) * (cfg.lora_alpha / cfg.lora_rank)


def merge(base: Any, adapters: Any, cfg: ModelConfig, dtype: Any = None) -> Any:
    """The base params with every adapted kernel replaced by W + (alpha / r) A @ B, summed in
    float32; every leaf is stored in `dtype` (default `cfg.param_dtype`: a bf16-stored base
    would round away most of a small update). Jittable: the merged tree has the base's
    structure (and, under jit, its shardings)."""
    dtype = cfg.param_dtype if dtype is None else dtype

    def walk(base_node: Any, lora_node: Any) -> Any:
        if "lora_a" in lora_node:
            kernel = base_node["kernel"]
            a, b = lora_node["lora_a"], lora_node["lora_b"]
            lead = a.ndim + b.ndim - 2 - kernel.ndim
            merged = kernel.astype(jnp.float32) + delta(cfg, a, b, lead)
            return {**base_node, "kernel": merged}
        return {**base_node, **{k: walk(base_node[k], v) for k, v in lora_node.items()}}

    return jax.tree.map(lambda x: x.astype(dtype), walk(base, adapters))


def _dummy_inputs() -> tuple[Array, Array, Array]:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1), bool)


def _init_boxed(cfg: ModelConfig, key: Array) -> Any:
    if not cfg.lora_rank:
        raise ValueError("LoRA adapters need ModelConfig.lora_rank > 0")
    # The "lora" stream makes the adapters (see `transformer.Projection`); the params that
    # this init also makes are dead code under jit.
    return transformer.Transformer(cfg).init({"params": key, "lora": key},
                                             *_dummy_inputs())["lora"]


def init_adapters(cfg: ModelConfig, key: Array) -> Any:
    """Fresh adapters of `cfg` (B = 0, so base + adapters is the base model)."""
    return nn.meta.unbox(_init_boxed(cfg, key))


def adapter_logical_axes(cfg: ModelConfig) -> Any:
    """The adapters' logical axis names (their kernel's, and 'lora_rank', replicated): a tree of
    PartitionSpec, without allocating."""
    return nn.get_partition_spec(jax.eval_shape(lambda k: _init_boxed(cfg, k),
                                                jax.random.key(0)))


def adapter_shapes(cfg: ModelConfig) -> Any:
    """The adapters' shapes and dtypes (ShapeDtypeStruct tree), without allocating."""
    return jax.eval_shape(lambda k: init_adapters(cfg, k), jax.random.key(0))
