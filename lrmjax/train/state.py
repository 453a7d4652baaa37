"""The training state pytree and the optimizers that update it."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lrmjax import parallel
from lrmjax.models import lora


@flax.struct.dataclass
class TrainState:
    """Everything an RL (or SFT) update changes, as one pytree.

    Attributes:
      step: optimizer steps taken (int32 scalar).
      params: the policy's trainable params: the whole params tree, or under LoRA the
        adapters alone (gradients and optimizer state exist for these only).
      opt_state: the policy optimizer's state.
      critic_params / critic_opt_state: the value model (PPO, VAPO), or None.
      kl_coef: the current KL coefficient (a fixed value or the adaptive controller's).
      nonfinite: updates skipped because the loss or gradient was not finite (cumulative).
      frozen: under LoRA the frozen base params (never optimized, not checkpointed: the run
        reloads them from where they came from), else None. `policy` joins the two.
      tx / critic_tx: the optax transformations (static, not part of the pytree).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    critic_params: Any
    critic_opt_state: Any
    kl_coef: jax.Array
    nonfinite: jax.Array
    frozen: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
    critic_tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False)

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, *, critic_params: Any = None,
               critic_tx: optax.GradientTransformation | None = None,
               kl_coef: float = 0.0, frozen: Any = None) -> TrainState:
        """A fresh state; under LoRA `params` are the adapters and `frozen` the base."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   critic_params=critic_params,
                   critic_opt_state=None if critic_tx is None else critic_tx.init(critic_params),
                   kl_coef=jnp.asarray(kl_coef, jnp.float32),
                   nonfinite=jnp.zeros((), jnp.int32), frozen=frozen, tx=tx,
                   critic_tx=critic_tx)

    @property
    def policy(self) -> Any:
        """The params every forward of the policy takes (sampler, log-prob passes,
        evaluation): `policy_params(frozen, params)`."""
        return policy_params(self.frozen, self.params)


def policy_params(frozen: Any, trainable: Any) -> Any:
    """The policy from its frozen and trainable parts: `lora.LoraParams(frozen, trainable)`
    under LoRA (frozen not None), else the trainable tree itself. A loss differentiated with
    respect to `trainable` alone never computes the base weights' gradients."""
    return trainable if frozen is None else lora.LoraParams(frozen, trainable)


def lr_schedule(lr: float, warmup_steps: int, total_steps: int, kind: str = "constant",
                min_lr_ratio: float = 0.1) -> optax.Schedule:
    """Linear warmup from 0, then constant or cosine decay to `min_lr_ratio * lr`."""
    warmup = optax.linear_schedule(0.0, lr, max(warmup_steps, 1))
    if kind == "constant":
        after = optax.constant_schedule(lr)
    elif kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1),
                                            alpha=min_lr_ratio)
    else:
        raise ValueError(f"Unknown lr schedule {kind!r}; valid: 'constant', 'cosine'")
    if warmup_steps <= 0:
        return after
    return optax.join_schedules([warmup, after], [warmup_steps])


def adamw(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, grad_clip: float = 0.0) -> optax.GradientTransformation:
    """AdamW with optional global-norm gradient clipping (applied first)."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts)


def guarded_update(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any,
                   ok: jax.Array) -> tuple[Any, Any]:
    """Applies one optimizer update where `ok` (scalar bool), else leaves params and state as
    they were: a non-finite loss or gradient never reaches the params."""
    def update(grads, opt_state, params):
        updates, new_opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state

    # A conditional, not a select of both outcomes: on the usual path no extra pass over
    # params and moments.
    return jax.lax.cond(ok, update, lambda g, s, p: (p, s), grads, opt_state, params)


def place_state(state: TrainState, mesh: Any) -> tuple[TrainState, TrainState]:
    """Puts every leaf of `state` in a NamedSharding on `mesh`; returns (state, shardings).

    Params keep the sharding they were created with (the logical-axis rules); optimizer
    moments inherit it from the params; scalars are replicated.
    """
    rep = parallel.replicated(mesh)
    shardings = jax.tree.map(
        lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else rep,
        state)
    return parallel.put(state, shardings), shardings


def state_shardings(state: TrainState, params: Any, mesh: Any) -> TrainState:
    """The shardings `place_state` gives `state`, from shapes alone: `state` may hold
    ShapeDtypeStructs (from `jax.eval_shape`) and `params` is the policy's params as arrays or
    ShapeDtypeStructs that carry their shardings.

    A leaf takes the sharding of the param whose path ends its own path and whose shape is
    its shape (the param itself, an optimizer moment of it, a critic trunk's copy of it);
    every other leaf (counters, scalars, a value head) is replicated.
    """
    by_path = {tuple(map(str, path)): x for path, x in jax.tree_util.tree_leaves_with_path(params)}
    rep = parallel.replicated(mesh)

    def one(path: Any, x: Any) -> Any:
        keys = tuple(map(str, path))
        for start in range(len(keys)):
            p = by_path.get(keys[start:])
            if p is not None and p.shape == x.shape:
                return p.sharding
        return rep

    return jax.tree_util.tree_map_with_path(one, state)
