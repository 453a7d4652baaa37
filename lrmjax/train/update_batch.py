"""The update batch: what `steps.rl_train_step` trains on, built in one place.

`build` turns one step's rollout rows into the batch, and the same function, evaluated for
shapes only (`spec`), gives the shapes, dtypes and shardings the train step is compiled for
before the loop. The batch's contract is therefore written once, here.

Rows (`device_rows`; N responses, P prompt slots, R response slots; global arrays sharded
over the batch axes):
  tokens [N, P+R] int32       prompt (left padded) followed by the response (right padded)
  mask [N, P+R] bool          True on real tokens
  loss_mask [N, R] float32    response tokens that enter the loss: the model's own (not
                              an environment's observation tokens), 0 on whole rows that
                              overlong filtering drops
  sampler_logprobs [N, R]     the sampler's log-probs of its tokens (`Rollout.logprobs`)
  rewards [N] float32         outcome rewards (after shaping)
  token_rewards [N, R]        optional: process rewards at the tokens that end each step,
                              environment step rewards at the tokens that end each turn
  baseline_rewards [N]        optional: the greedy response's reward (ReMax)
  ref_logprobs [N, R]         optional: the reference policy's log-probs, when they were
                              dispatched early (see `rl.train`); else `build` computes them
  pack                        with `train.pack_tokens`: the packing plan of the passes
                              (`packing.plan`, one block), from `early_rows`

Batch (`build`): tokens, mask, loss_mask, sampler_logprobs, and
  old_logprobs [N, R]         the sampling policy's log-probs (on-policy: sampler_logprobs)
  ref_logprobs [N, R]         with a reference policy (any KL mode)
  old_values [N, R]           with a critic
  advantages, returns [N, R]  `rl.advantages.compute_advantages`, float32, 0 off the mask

The batch stays padded: with packing, `rl.update` adds each minibatch's own plan (its blocks
are the microbatches) as `pack`, and only the forwards run on packed rows
(`lrmjax.train.packing`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax import parallel
from lrmjax.models.presets import ModelConfig
from lrmjax.rl import advantages as adv_lib
from lrmjax.rl import kl as kl_lib
from lrmjax.train import packing, rollouts, steps
from lrmjax.train.state import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Passes:
    """The jitted device passes that feed the update.

    Attributes:
      logprobs: (params, tokens [N, L], mask, pack=None) -> [N, R] float32
        (`steps.response_logprobs`).
      values: (critic_params, tokens, mask, pack=None) -> [N, R] float32, or None without a
        critic.
      advantages: `compute_advantages(algo, group_size=n)` with keyword inputs.
      kl_rewards: (logprobs, ref_logprobs, mask, kl_coef) -> [N, R] token rewards
        `-kl_coef * KL` (`kl.kl_penalty_rewards`) when `rl.kl_mode` is 'reward', else None.
      algo: the algorithm's knobs (config 'rl').
      on_policy: one epoch and one minibatch: the old policy is the sampling policy.
      logprob_group: the shared-prompt group size of the log-prob passes (1 = off;
        `steps.shared_prompt_groups`).
      pack_tokens: the packed row budget of the passes (`train.pack_tokens`; 0 = padded).
    """

    logprobs: Callable[..., Array]
    values: Callable[..., Array] | None
    advantages: Callable[..., tuple[Array, Array]]
    kl_rewards: Callable[..., Array] | None
    algo: ml_collections.ConfigDict
    on_policy: bool
    logprob_group: int
    pack_tokens: int = 0


def make_passes(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, prompt_len: int,
                temperature: float, logprob_group: int, mesh: Any = None) -> Passes:
    """The passes of config `cfg`; `logprob_group` is the shared-prompt group size of the
    log-prob passes (`steps.shared_prompt_groups`); the model passes are traced on `mesh`
    (`parallel.in_mesh`: the activations stay split over the batch)."""
    chunks = cfg.train.logprob_microbatches
    logprobs = jax.jit(parallel.in_mesh(functools.partial(
        steps.response_logprobs, model_cfg=model_cfg, prompt_len=prompt_len,
        temperature=temperature, group_size=logprob_group,
        logits_chunk_mb=cfg.train.logits_chunk_mb, row_chunks=chunks), mesh))
    values = None
    if cfg.rl.use_critic:
        values = jax.jit(parallel.in_mesh(functools.partial(
            steps.response_values, model_cfg=model_cfg, prompt_len=prompt_len,
            row_chunks=chunks), mesh))
    advantages = jax.jit(functools.partial(adv_lib.compute_advantages, cfg.rl,
                                           group_size=cfg.sampling.n))
    kl_rewards = None
    if cfg.rl.kl_mode == "reward":
        kl_rewards = jax.jit(functools.partial(kl_lib.kl_penalty_rewards,
                                               estimator=cfg.rl.kl_estimator))
    on_policy = cfg.train.ppo_epochs == 1 and cfg.train.minibatches == 1
    return Passes(logprobs, values, advantages, kl_rewards, cfg.rl, on_policy, logprob_group,
                  cfg.train.pack_tokens)


def device_rows(rollout: Any, rewards: np.ndarray, early: dict[str, Array], mesh: Any, *,
                overlong_filter: bool, **optional: np.ndarray | None) -> dict[str, Array]:
    """This host's rows of one step (a `sampling.Rollout` of numpy arrays and its [N]
    rewards) as global arrays on `mesh`: the rows of the module docstring.

    `early` holds the rows already on the devices (`early_rows`); `optional` rows
    (token_rewards, baseline_rewards) that are None are left out. With `overlong_filter`
    (DAPO) responses cut at the length limit leave the loss.
    """
    loss_mask = np.asarray(rollout.response_mask, np.float32)
    if rollout.observation_mask is not None:  # observations are read, not trained on
        loss_mask = np.where(rollout.observation_mask, 0.0, loss_mask)
    if overlong_filter:
        loss_mask = np.where(np.asarray(rollout.finish_reason)[:, None] == 1, 0.0, loss_mask)
    rows = dict(early)
    put = functools.partial(parallel.host_to_global, mesh=mesh)
    rows |= {"loss_mask": put(loss_mask.astype(np.float32)),
             "sampler_logprobs": put(np.asarray(rollout.logprobs, np.float32)),
             "rewards": put(np.asarray(rewards, np.float32))}
    rows |= {k: put(np.asarray(v, np.float32)) for k, v in optional.items() if v is not None}
    return rows


def token_arrays(rollout: Any, mesh: Any) -> dict[str, Array]:
    """The rollout's full sequences on `mesh`: tokens [N, P+R] int32 and mask [N, P+R]."""
    tokens = np.concatenate([rollout.prompt_tokens, rollout.response_tokens], axis=1)
    mask = np.concatenate([rollout.prompt_mask, rollout.response_mask], axis=1)
    return {"tokens": parallel.host_to_global(tokens.astype(np.int32), mesh),
            "mask": parallel.host_to_global(mask.astype(bool), mesh)}


def pass_plan(mask: Array, prompt_len: int, budget: int, mesh: Any) -> dict[str, Array]:
    """The packing plan of the log-prob and value passes over a step's [N, P+R] `mask` (a
    global array; every host plans the whole batch), on `mesh`."""
    host_mask = parallel.global_to_host(mask)
    return packing.put(packing.plan(host_mask, prompt_len, budget, 0,
                                    parallel.batch_divisor(mesh)), mesh)


def early_rows(passes: Passes, ref_params: Any, mesh: Any, rollout: Any
               ) -> dict[str, Array]:
    """`rollouts.collect`'s on_rollout: the rollout's tokens and mask on the mesh (and their
    packing plan with `train.pack_tokens`), and the reference policy's log-probs of them
    dispatched at once, so they run on the devices while the host decodes and scores the
    responses."""
    if passes.logprob_group > 1:
        rollouts.check_groups_share_prompts(rollout, passes.logprob_group)
    out = token_arrays(rollout, mesh)
    if passes.pack_tokens:
        out["pack"] = pass_plan(out["mask"], rollout.prompt_tokens.shape[1],
                                passes.pack_tokens, mesh)
    if ref_params is not None:
        out["ref_logprobs"] = passes.logprobs(ref_params, out["tokens"], out["mask"],
                                              out.get("pack"))
    return out


@jax.jit
def take_rows(data: dict[str, Array], rows: Array) -> dict[str, Array]:
    """The minibatch `rows` [M] of every [N, ...] array in `data` (one gather program)."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), data)


def build(passes: Passes, state: TrainState, ref_params: Any, rows: dict[str, Array]
          ) -> dict[str, Array]:
    """The update batch of the module docstring from `rows` (device work only: jitted passes
    and elementwise ops, no host transfer)."""
    tokens, mask, loss_mask = rows["tokens"], rows["mask"], rows["loss_mask"]
    pack = rows.get("pack")
    batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
             "sampler_logprobs": rows["sampler_logprobs"]}
    batch["old_logprobs"] = (rows["sampler_logprobs"] if passes.on_policy
                             else passes.logprobs(state.policy, tokens, mask, pack))
    token_rewards, values = rows.get("token_rewards"), None
    if ref_params is not None:
        batch["ref_logprobs"] = rows.get("ref_logprobs")
        if batch["ref_logprobs"] is None:
            batch["ref_logprobs"] = passes.logprobs(ref_params, tokens, mask, pack)
        if passes.kl_rewards is not None:
            # The trainer's own log-probs, not the sampler's: both sides of the KL come from
            # one program, so it is exactly 0 while the policy equals the reference.
            old = (passes.logprobs(state.policy, tokens, mask, pack) if passes.on_policy
                   else batch["old_logprobs"])
            kl_rewards = passes.kl_rewards(old, batch["ref_logprobs"], loss_mask,
                                           state.kl_coef)
            token_rewards = kl_rewards if token_rewards is None else token_rewards + kl_rewards
    if passes.values is not None:
        values = batch["old_values"] = passes.values(state.critic_params, tokens, mask, pack)
    batch["advantages"], batch["returns"] = passes.advantages(
        rewards=rows["rewards"], response_mask=loss_mask, token_rewards=token_rewards,
        values=values, baseline_rewards=rows.get("baseline_rewards"))
    return batch


def row_spec(cfg: ml_collections.ConfigDict, prompt_len: int, mesh: Any, rows: int
             ) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of `device_rows`' output for `rows` global rows of config `cfg`."""
    R = cfg.sampling.max_new_tokens

    def like(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=parallel.batch_sharding(mesh, len(shape)))

    out = {"tokens": like((rows, prompt_len + R), jnp.int32),
           "mask": like((rows, prompt_len + R), jnp.bool_),
           "loss_mask": like((rows, R), jnp.float32),
           "sampler_logprobs": like((rows, R), jnp.float32),
           "rewards": like((rows,), jnp.float32)}
    if cfg.reward.process_fns or (cfg.env.name != "none" and cfg.rl.adv_estimator
                                  in adv_lib.TOKEN_REWARD_ESTIMATORS):
        out["token_rewards"] = like((rows, R), jnp.float32)
    if cfg.rl.needs_greedy_baseline:
        out["baseline_rewards"] = like((rows,), jnp.float32)
    if cfg.train.pack_tokens:
        out["pack"] = packing.spec(rows, cfg.train.pack_tokens, mesh)
    return out


def spec(cfg: ml_collections.ConfigDict, passes: Passes, state: TrainState, ref_params: Any,
         prompt_len: int, mesh: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape, dtype and sharding of one `train_step` minibatch of config `cfg`: `build`,
    evaluated for shapes on a full step's rows (`row_spec`: dynamic sampling refills the
    batch, so it is always full), split into `train.minibatches`; with packing, the largest
    plan of a minibatch (`packing.spec`)."""
    rows = row_spec(cfg, prompt_len, mesh, cfg.train.batch_prompts * cfg.sampling.n)
    out = jax.eval_shape(functools.partial(build, passes), state, ref_params, rows)

    def minibatch(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
        shape = (x.shape[0] // cfg.train.minibatches, *x.shape[1:])
        return jax.ShapeDtypeStruct(shape, x.dtype,
                                    sharding=parallel.batch_sharding(mesh, len(shape)))

    out = jax.tree.map(minibatch, out)
    if cfg.train.pack_tokens:
        size, width = out["tokens"].shape
        rows = packing.micro_rows(size, width, cfg.train.pack_tokens, cfg.train.microbatches,
                                  parallel.batch_divisor(mesh))
        out["pack"] = packing.spec(size, cfg.train.pack_tokens, mesh, rows)
    return out
