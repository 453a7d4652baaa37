"""The policy's params in the trainer: the whole params tree (full fine-tuning), or under LoRA
(config 'model.lora', `lrmjax.models.lora`) a frozen base plus trained adapters.

Under LoRA:
- `TrainState.params` are the adapters (gradients and optimizer state exist for them alone)
  and `TrainState.frozen` the base, optionally stored in bf16 (`model.lora.base_dtype`);
  `TrainState.policy` joins them for every forward of the policy.
- The reference policy is the base with adapters off: `state.frozen` itself, no copy.
- Checkpoints hold the adapters, and their extras a record of where the base came from (the
  HF checkpoint, or the preset's seeded init, then the warm start in `workdir/sft`) and of
  the adapters' rank, alpha and targets. A resume reloads the base from that place the way
  the first run did and refuses to go on if the record differs (`check_resume`).
- The export writes the merged weights (`hf_export/`, an HF checkpoint for transformers and
  vLLM) and a PEFT adapter directory (`hf_adapter/`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lrmjax import parallel
from lrmjax.models import hf, lora, sharding
from lrmjax.train import checkpoint as ckpt_lib
from lrmjax.train.state import TrainState

# Folded into the run's seed for the adapters' init (distinct from the params' and critic's).
ADAPTER_SEED_OFFSET = 11


def lora_on(cfg: ml_collections.ConfigDict) -> bool:
    return cfg.model.lora.rank > 0


def lora_record(cfg: ml_collections.ConfigDict, sft_step: int | None) -> dict[str, Any] | None:
    """What a LoRA checkpoint's adapters belong to: their rank, alpha and targets, and the
    base's source (`model.hf_path`, or the preset, its overrides and the init seed; then the
    warm start's last step in `workdir/sft`). None without LoRA. JSON-ready."""
    if not lora_on(cfg):
        return None
    m = cfg.model
    base: dict[str, Any] = ({"hf_path": m.hf_path} if m.hf_path else
                            {"preset": m.preset, "overrides": m.overrides.to_dict(),
                             "init_seed": cfg.seed})
    if cfg.sft.steps:
        base.update(sft_checkpoint="sft", sft_step=sft_step)
    record = {"rank": m.lora.rank, "alpha": float(m.lora.alpha),
              "targets": list(m.lora.targets), "base": base}
    return json.loads(json.dumps(record))  # as it reads back from the checkpoint's JSON


def check_resume(saved: dict[str, Any], cfg: ml_collections.ConfigDict, sft_step: int | None,
                 workdir: str) -> None:
    """Raises ValueError if the checkpoint's extras `saved` were written by a run whose policy
    differs from this config's: full fine-tuning vs LoRA, another rank/alpha/targets, or
    another base (`lora_record`)."""
    was, now = saved.get("lora"), lora_record(cfg, sft_step)
    if was == now:
        return
    if was is None or now is None:
        kind = lambda r: "full fine-tuning" if r is None else f"LoRA rank {r['rank']}"  # noqa: E731
        raise ValueError(f"the checkpoint in {workdir} is from {kind(was)}, this config asks "
                         f"for {kind(now)} (config 'model.lora.rank'): resume with the run's "
                         "own config, or start a new workdir")
    raise ValueError(f"the LoRA adapters in {workdir} belong to {was}, this config gives "
                     f"{now} (config 'model.lora', 'model.hf_path' / 'model.preset', 'seed', "
                     "'sft.steps'): resume with the run's own config, or start a new workdir")


def lora_state(inp: Any, base: Any, tx: optax.GradientTransformation, **create: Any
               ) -> TrainState:
    """A fresh LoRA state on `base` (the policy's params at RL start, which it keeps in
    `model.lora.base_dtype`): adapters with B = 0, so the policy starts as the base."""
    return TrainState.create(fresh_adapters(inp), tx, frozen=lora_base(inp, base), **create)


def lora_base(inp: Any, base: Any) -> Any:
    """`base` as the LoRA policy keeps it: in `model.lora.base_dtype` when that is set."""
    dtype = inp.cfg.model.lora.base_dtype
    if dtype and jnp.dtype(dtype) != jnp.dtype(inp.model_cfg.param_dtype):
        return jax.tree.map(lambda x: x.astype(dtype), base)
    return base


def fresh_adapters(inp: Any) -> Any:
    """The run's initial adapters (B = 0: the policy starts as the base), in their
    shardings."""
    return sharding.init_sharded_adapters(
        inp.model_cfg, jax.random.key(inp.cfg.seed + ADAPTER_SEED_OFFSET), inp.mesh)


def reference(cfg: ml_collections.ConfigDict, state: TrainState, ref_params: Any) -> Any:
    """The reference policy's params, or None without KL (`rl.kl_mode` 'none'). Under LoRA the
    base in `state.frozen`: read from the current state, since the train step donates its
    input state (base included); else `ref_params`, the policy copied at RL start."""
    if cfg.rl.kl_mode == "none":
        return None
    return state.frozen if state.frozen is not None else ref_params


def export(inp: Any, state: TrainState, workdir: str) -> None:
    """Writes `workdir/hf_export` (`hf.save_pretrained` of the policy; under LoRA of its merged
    weights W + (alpha / r) A @ B, in model.param_dtype) and under LoRA `workdir/hf_adapter`
    (`hf.save_peft_adapter`). Every host calls it (the arrays are gathered); host 0 writes."""
    params = state.params
    if state.frozen is not None:
        params = jax.jit(functools.partial(lora.merge, cfg=inp.model_cfg))(state.frozen,
                                                                           state.params)
    params_np = parallel.global_to_host(params)  # a collective: every host joins
    main = jax.process_index() == 0
    if main:
        inp.export(params_np, os.path.join(workdir, "hf_export"))
    if state.frozen is not None:
        adapters_np = parallel.global_to_host(state.params)
        if main:
            hf.save_peft_adapter(inp.model_cfg, adapters_np, os.path.join(workdir, "hf_adapter"),
                                 base_model=inp.hf_path)


def restore(inp: Any, workdir: str, best: bool = False, warm_start: bool = False) -> Any:
    """The policy of a run's latest (or best) checkpoint, in `inp`'s shardings, for
    evaluation: its params, or under LoRA `lora.LoraParams` of the base (`inp.init_params`,
    or the warm start's params in `workdir/sft`, in `model.lora.base_dtype` as the run kept
    it) and the checkpoint's adapters.

    `warm_start=True`: the policy the RL phase started from instead, the warm start's last
    params (under LoRA with fresh adapters, B = 0, as at RL step 0); ValueError if the config
    has no warm start (`sft.steps` 0)."""
    if warm_start:
        if not inp.cfg.sft.steps:
            raise ValueError("this run has no warm start to evaluate (config 'sft.steps' is 0)")
        params = warm_start_params(inp, workdir)
        if not lora_on(inp.cfg):
            return params
        return lora.LoraParams(lora_base(inp, params), fresh_adapters(inp))
    ckpt = ckpt_lib.Checkpointer(workdir)
    try:
        params = ckpt.restore_params(best=best)
    finally:
        ckpt.close()
    if not lora_on(inp.cfg):
        return parallel.put(params, jax.tree.map(lambda x: x.sharding, inp.init_params))
    base = warm_start_params(inp, workdir) if inp.cfg.sft.steps else inp.init_params
    adapters = parallel.put(params, sharding.adapter_shardings(inp.model_cfg, inp.mesh))
    return lora.LoraParams(lora_base(inp, base), adapters)


def warm_start_params(inp: Any, workdir: str) -> Any:
    """The warm start's last params (`workdir/sft`) in `inp.init_params`' shardings."""
    sft = ckpt_lib.Checkpointer(workdir, keep=1, best_metric=None, name="sft")
    try:
        return parallel.put(sft.restore_params(),
                            jax.tree.map(lambda x: x.sharding, inp.init_params))
    finally:
        sft.close()
