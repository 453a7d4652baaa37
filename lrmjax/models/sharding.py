"""The transformer's params placed on a mesh: their shardings, and an init straight into them.

`lrmjax.parallel` maps logical axis names to mesh axes and knows nothing of any model; this
module applies it to the tree of logical names that `transformer.param_logical_axes` reads off
the model, so imports go one way (parallel <- models).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from lrmjax import parallel
from lrmjax.models import lora, transformer
from lrmjax.models.presets import ModelConfig


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Mapping[str, Any] | None = None
                    ) -> Any:
    """NamedShardings matching `transformer.init_params(cfg)`.

    Args:
      cfg: the model's config.
      mesh: the device mesh.
      rules: logical-axis rules overriding `parallel.LOGICAL_RULES` (None: the defaults).

    Returns:
      A tree of `NamedSharding` with the structure of the params (nothing is allocated).
    """
    return parallel.tree_shardings(transformer.param_logical_axes(cfg),
                                   transformer.param_shapes(cfg), mesh, rules)


def init_sharded_params(cfg: ModelConfig, key: jax.Array, mesh: Mesh,
                        rules: Mapping[str, Any] | None = None) -> Any:
    """Initializes params directly into their shardings (no full copy on one device).

    Args:
      cfg: the model's config.
      key: PRNG key of the init (the same key gives the same values as
        `transformer.init_params(cfg, key)`, to float rounding).
      mesh, rules: as in `param_shardings`.

    Returns:
      The params tree of `transformer.init_params`, each leaf a global array in its
      `param_shardings` sharding.
    """
    shardings = param_shardings(cfg, mesh, rules)
    return jax.jit(lambda k: transformer.init_params(cfg, k), out_shardings=shardings)(key)


def adapter_shardings(cfg: ModelConfig, mesh: Mesh, rules: Mapping[str, Any] | None = None
                      ) -> Any:
    """NamedShardings matching `lora.init_adapters(cfg)`: each adapter split like its kernel
    on the kernel's axes, the rank axis replicated."""
    return parallel.tree_shardings(lora.adapter_logical_axes(cfg), lora.adapter_shapes(cfg),
                                   mesh, rules)


def init_sharded_adapters(cfg: ModelConfig, key: jax.Array, mesh: Mesh,
                          rules: Mapping[str, Any] | None = None) -> Any:
    """Fresh LoRA adapters (`lora.init_adapters`) initialized directly into their shardings."""
    return jax.jit(lambda k: lora.init_adapters(cfg, k),
                   out_shardings=adapter_shardings(cfg, mesh, rules))(key)
