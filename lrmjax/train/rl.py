"""The RL trainer: a config in, a better reasoner out.

`train(cfg, workdir)` reads top to bottom: mesh and inputs, state and optimizers, the
supervised warm start or the checkpoint to resume, the compiled programs, then the RL loop,
whose body is a list of named stages:

  collect  sample n responses per prompt and score them      (`rollouts.collect`)
  prepare  old/ref log-probs, values, advantages: the batch  (`update_batch.build`)
  update   ppo_epochs x minibatches of the jitted train step (`steps.rl_train_step`)
  log      metrics, progress, sampled rollouts
  eval     held-out accuracy every `eval.every` steps and at the last (`evaluate.evaluate`)
  save     a checkpoint every `train.checkpoint_every` steps, at the last and on a stop
           signal; `best/` at evaluated steps                 (`checkpoint.Checkpointer`)

The whole call holds the workdir (`lifecycle.Run`): one run at a time, a stop at a step
boundary on SIGINT / SIGTERM, and the saves in flight finished on every way out. The last
checkpoint holds the final evaluation, so a rerun of a finished run reports it as it was.

The loop runs under `jax.transfer_guard("disallow")`: every host <-> device copy in it is an
explicit `jax.device_put` / `jax.device_get`, so an accidental round trip through the host
fails loudly instead of silently costing a sync per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax import config as config_lib
from lrmjax import host, parallel
from lrmjax.models import heads
from lrmjax.rl import kl as kl_lib
from lrmjax.train import checkpoint as ckpt_lib
from lrmjax.train import compilation, lifecycle, packing, rollouts, steps, update_batch
from lrmjax.train import evaluate as eval_lib
from lrmjax.train import metrics as metrics_lib
from lrmjax.train import policy as policy_lib
from lrmjax.train import sft as sft_lib
from lrmjax.train.compilation import Programs
from lrmjax.train.inputs import Inputs, build_inputs
from lrmjax.train.rollouts import ScoredBatch
from lrmjax.train.state import TrainState, adamw, lr_schedule, place_state


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss or gradient."""


def optimizers(cfg: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """The policy's optimizer and the critic's (None without a critic) of config `cfg`: AdamW
    on the configured schedule over every update of the run."""
    total_updates = cfg.train.steps * cfg.train.ppo_epochs * cfg.train.minibatches
    tx = adamw(lr_schedule(cfg.optim.lr, cfg.optim.warmup_steps, total_updates,
                           cfg.optim.schedule, cfg.optim.min_lr_ratio),
               b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps,
               weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip)
    critic_tx = None
    if cfg.rl.use_critic:
        critic_tx = adamw(lr_schedule(cfg.optim.critic_lr, cfg.optim.critic_warmup_steps,
                                      total_updates, "constant"),
                          grad_clip=cfg.optim.grad_clip)
    return tx, critic_tx


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the experiment `cfg` in `workdir`. Returns the final eval metrics.

    Raises `lifecycle.WorkdirBusy` if another run holds `workdir`, and `lifecycle.Stopped`
    after a SIGINT / SIGTERM stopped the run at a saved step."""
    with compilation.CompileCounter() as compiles, lifecycle.Run(workdir) as run:
        return _train(cfg, workdir, compiles, run)


def _train(cfg: ml_collections.ConfigDict, workdir: str, compiles: compilation.CompileCounter,
           run: lifecycle.Run) -> dict[str, float]:
    if cfg.reward.random_p > 0:
        raise ValueError("reward.random_p > 0 (random rewards) runs on the device-reward path "
                         "only: experiments/sweep.py or lrmjax.train.sweep.Program")
    # ---------------------------------------------------------------- mesh and inputs
    host.tune_malloc(cfg)  # before the backend starts, if it has not yet (lrmjax/host.py)
    if cfg.mesh.distributed and not jax.distributed.is_initialized():
        m = cfg.mesh
        jax.distributed.initialize(m.coordinator_address or None,
                                   m.num_processes if m.num_processes > 0 else None,
                                   m.process_id if m.process_id >= 0 else None)
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    run.lock(is_main)  # before anything in the workdir is read or written
    inp = run.own(build_inputs(cfg, workdir))
    algo = cfg.rl
    writer = run.own(metrics_lib.MetricsWriter(
        workdir, enabled=is_main, progress_total=cfg.train.steps, progress=cfg.train.progress,
        keys={"reward/mean": "reward", "response_length/mean": "len",
              "actor/pg_clipfrac": "clipfrac", "timing_s/step": "s/step"}))
    run.log = writer.log
    ckpt = run.own(ckpt_lib.Checkpointer(workdir, keep=cfg.train.keep_checkpoints, owner=True))
    latest = ckpt.latest_step()
    lora_on = policy_lib.lora_on(cfg)
    # A LoRA resume reloads its base, the warm start's last params, from workdir/sft.
    sft_ckpt = (run.own(sft_lib.checkpointer(workdir))
                if (latest is None or lora_on) and cfg.sft.steps else None)
    if latest is not None and sft_ckpt is not None and sft_ckpt.latest_step() is None:
        raise FileNotFoundError(f"the LoRA base of {workdir} is its warm start, whose "
                                f"checkpoint {sft_ckpt.manager.directory} is gone")
    # The logs go on from the step the run goes on from (rows after it are written again).
    writer.resume(latest or 0,
                  None if sft_ckpt is None or latest is not None else sft_ckpt.latest_step() or 0)
    if latest is None:  # what loading the data kept and dropped (bad rows, long prompts)
        writer.write(0, inp.data_stats, phase="data")
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- state: warm start or resume
    tx, critic_tx = optimizers(cfg)
    critic_params = ref_params = None
    state = TrainState.create(inp.init_params, tx, kl_coef=algo.kl_coef)
    extras: dict[str, Any] = {"phase": "sft" if cfg.sft.steps > 0 else "rl", "rl_step": 0}
    if sft_ckpt is not None:
        state, extras["sft"] = sft_lib.warm_start(inp, state, writer, sft_ckpt, run)
    if algo.use_critic:
        critic_params = heads.init_from_policy(inp.model_cfg, state.params,
                                               jax.random.key(cfg.seed + 7))
    # The RL phase starts from fresh optimizer state (the SFT moments belong to another loss).
    # Under LoRA the params so far become the frozen base and fresh adapters are trained.
    create = dict(critic_params=critic_params, critic_tx=critic_tx, kl_coef=algo.kl_coef)
    state = (policy_lib.lora_state(inp, state.params, tx, **create) if lora_on
             else TrainState.create(state.params, tx, **create))
    inp.init_params = None  # the state holds the policy now (a bf16 base frees the fp32 one)
    extras["lora"] = policy_lib.lora_record(cfg, extras.get("sft", {}).get("steps"))
    if algo.kl_mode != "none" and not lora_on:  # under LoRA the reference is the base
        ref_params = jax.tree.map(jnp.copy, state.params)  # the policy at RL start
    if latest is not None:
        policy_lib.check_resume(ckpt.restore_extras(latest), cfg,
                                extras.get("sft", {}).get("steps"), workdir)
        state, extras = ckpt.restore(latest, state)
        ckpt.forget_best_after(latest)
        if ref_params is not None:
            ref_params = ckpt_lib.restore_reference(workdir, ref_params)
        ckpt_lib.restore_data_position(inp.data_iter, extras["data"])
        writer.log(f"resumed from {workdir} at RL step {extras['rl_step']}")
    elif ref_params is not None:
        ckpt_lib.save_reference(workdir, ref_params)
    state, state_sh = place_state(state, inp.mesh)

    # ---------------------------------------------------------------- compiled programs
    first = extras["rl_step"]
    progs = compilation.compile_programs(cfg, inp, state, state_sh,
                                         policy_lib.reference(cfg, state, ref_params), writer,
                                         ahead_of_time=first < cfg.train.steps,
                                         first_step=first)
    eval_key = jax.random.key(cfg.seed + 99)  # the same draws at every evaluation
    if first == 0:
        extras["eval_before"] = run_eval(inp, progs.sampling_policy(state), eval_key, writer, 0)

    # ---------------------------------------------------------------- the RL loop
    base_key = jax.random.key(cfg.seed)
    consecutive_bad = 0
    with jax.transfer_guard("disallow"):
        for rl_step in range(first, cfg.train.steps):
            m: dict[str, float] = {}
            t_step, compiles_before = time.perf_counter(), compiles.count
            key = rollouts.fold_in(base_key, rl_step)
            ref = policy_lib.reference(cfg, state, ref_params)  # this step's state's
            with _timed(m, "sample_and_reward"):
                batch = rollouts.collect(
                    inp, progs.sampling_policy(state), inp.data_iter, key, m,
                    on_rollout=functools.partial(update_batch.early_rows, progs.passes,
                                                 ref, inp.mesh))
            batch = observe(inp, batch, m, rl_step)
            with _timed(m, "prepare"):
                data = prepare(inp, progs, state, ref, batch, key, m)
            with _timed(m, "update"):
                state, skipped = update(inp, progs, state, data, rl_step, m)
            consecutive_bad = consecutive_bad + skipped if skipped else 0
            m["timing_s/step"] = time.perf_counter() - t_step
            done = rl_step + 1
            log_step(inp, writer, batch, data, m, done, ref is not None,
                     compiles.new_since(compiles_before), first_step=rl_step == first)
            if consecutive_bad >= cfg.train.max_nonfinite:
                raise NonFiniteError(
                    f"{consecutive_bad} consecutive updates had a non-finite loss or gradient "
                    f"at RL step {done}; params were left unchanged by each. Lower optim.lr "
                    "or check the rewards (config 'train.max_nonfinite' sets the limit).")
            evaluated = None
            if (cfg.eval.every and done % cfg.eval.every == 0) or done == cfg.train.steps:
                evaluated = run_eval(inp, progs.sampling_policy(state), eval_key, writer, done)
            save(inp, ckpt, run, state, extras, done, evaluated)

    # ---------------------------------------------------------------- final eval and export
    last_eval = extras.get("eval", {})  # taken at the last step, or else taken again
    final = (last_eval["metrics"] if last_eval.get("step") == cfg.train.steps
             else run_eval(inp, progs.sampling_policy(state), eval_key, writer, cfg.train.steps))
    ckpt.close()
    if is_main:
        summary = {"before": extras.get("eval_before", {}), "after": final,
                   "sft": extras.get("sft", {})}
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        metrics_lib.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                                os.path.join(workdir, "curves.png"))
    if cfg.train.export_hf and inp.hf_exportable:
        policy_lib.export(inp, state, workdir)  # a collective: every host joins
    writer.close()
    if jax.process_count() > 1:
        # No host leaves (and, on host 0, takes the coordination service down) while another
        # is still in a collective.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lrmjax.train: done")
    return final


# -------------------------------------------------------------------- the loop's stages


@contextlib.contextmanager
def _timed(metrics: dict[str, float], name: str) -> Iterator[None]:
    """Adds the block's wall time to `metrics` as timing_s/<name>."""
    t0 = time.perf_counter()
    yield
    metrics[f"timing_s/{name}"] = time.perf_counter() - t0


def observe(inp: Inputs, batch: ScoredBatch, metrics: dict[str, float], rl_step: int
            ) -> ScoredBatch:
    """The step's reward statistics into `metrics`, the rewards into the curriculum; with
    `reward.shuffle_control`, the rewards permuted across the batch (a control run that
    should not learn)."""
    cfg = inp.cfg
    metrics.update(rollouts.rollout_metrics(batch))
    if cfg.reward.shuffle_control:
        shuffle = np.random.default_rng([cfg.seed, rl_step, 7]).permutation(len(batch.rewards))
        batch = dataclasses.replace(batch, rewards=batch.rewards[shuffle])
    inp.observe(batch.examples, batch.rewards)
    return batch


def prepare(inp: Inputs, progs: Programs, state: TrainState, ref_params: Any,
            batch: ScoredBatch, key: jax.Array, metrics: dict[str, float]
            ) -> dict[str, jax.Array]:
    """The update batch of one step (`update_batch`): the host-side extras some algorithms
    need (process rewards, the greedy baseline), then the device passes."""
    algo = inp.cfg.rl
    token_rewards, baseline = batch.env_token_rewards, None
    if inp.cfg.reward.process_fns:
        process = rollouts.process_token_rewards(inp, batch, metrics)
        token_rewards = process if token_rewards is None else token_rewards + process
    if algo.needs_greedy_baseline:
        baseline = rollouts.greedy_baseline(inp, progs.sampling_policy(state), batch,
                                            rollouts.fold_in(key, 10_000))
    if algo.overlong_filter:
        metrics["response_length/filtered"] = metrics["response_length/clip_ratio"]
    early = batch.early or update_batch.early_rows(progs.passes, ref_params, inp.mesh,
                                                   batch.rollout)  # a refilled batch
    rows = update_batch.device_rows(batch.rollout, batch.rewards, early, inp.mesh,
                                    overlong_filter=algo.overlong_filter,
                                    token_rewards=token_rewards, baseline_rewards=baseline)
    return update_batch.build(progs.passes, state, ref_params, rows)


def update(inp: Inputs, progs: Programs, state: TrainState, data: dict[str, jax.Array],
           rl_step: int, metrics: dict[str, float]) -> tuple[TrainState, int]:
    """`train.ppo_epochs` passes over `data` in `train.minibatches` shuffled minibatches,
    each with its packing plan under `train.pack_tokens` (`packing.plan`: token-budget
    microbatches of `packing.micro_rows` rows); the update metrics (means over minibatches)
    into `metrics` with perf/padding_fraction (the share of the forwards' token slots that
    hold no token), and the adaptive KL controller's step. Returns the state and how many
    updates were skipped (non-finite)."""
    cfg, mesh = inp.cfg, inp.mesh
    rng = np.random.default_rng([cfg.seed, rl_step])
    num = data["tokens"].shape[0]  # global rows
    size = num // cfg.train.minibatches
    prompt_len = data["tokens"].shape[1] - data["loss_mask"].shape[1]
    group = steps.shared_prompt_groups(cfg, mesh)[1]
    if cfg.train.pack_tokens:
        # The mask on the host (an input, ready: no wait on the passes) plans the packing.
        host_mask = parallel.global_to_host(data["mask"])
        pack_rows = packing.micro_rows(size, host_mask.shape[1], cfg.train.pack_tokens,
                                       cfg.train.microbatches, parallel.batch_divisor(mesh))
    results, real, slots = [], [], 0
    for _ in range(cfg.train.ppo_epochs):
        order = rng.permutation(num) if cfg.train.minibatches > 1 else np.arange(num)
        for i in range(cfg.train.minibatches):
            rows = np.sort(order[i * size:(i + 1) * size])
            idx = parallel.put(rows, parallel.replicated(mesh))
            mb = data if cfg.train.minibatches == 1 else {
                k: parallel.put(v, parallel.batch_sharding(mesh, v.ndim))
                for k, v in update_batch.take_rows(data, idx).items()}
            if cfg.train.pack_tokens:
                plan = packing.plan(host_mask[rows], prompt_len, cfg.train.pack_tokens,
                                    pack_rows, parallel.batch_divisor(mesh))
                mb = {**mb, "pack": packing.put(plan, mesh)}
                real, slots = real + [plan.tokens], slots + plan.slots
            else:  # counted on the devices, fetched with the metrics
                used, total = packing.padded_slots(mb["mask"], prompt_len, group)
                real, slots = real + [used], slots + total
            state, um = progs.train_step(state, mb)
            results.append(um)
    results, real = jax.device_get((results, real))  # one host transfer per RL step
    metrics.update(jax.tree.map(lambda *xs: float(np.mean(xs)), *results))
    metrics["perf/padding_fraction"] = 1.0 - float(np.sum(real)) / max(slots, 1)
    algo = cfg.rl
    if algo.kl_mode != "none" and algo.kl_target is not None and "actor/kl_loss" in metrics:
        ctrl = kl_lib.update_kl_controller(
            kl_lib.KLControllerState(coef=jax.device_get(state.kl_coef)),
            metrics["actor/kl_loss"], num, algo.kl_target, algo.kl_horizon)
        state = state.replace(kl_coef=parallel.put(np.float32(ctrl.coef),
                                                   progs.state_sharding.kl_coef))
    metrics["actor/kl_coef"] = float(jax.device_get(state.kl_coef))
    return state, int(sum(u["actor/skipped"] > 0 for u in results))


def log_step(inp: Inputs, writer: Any, batch: ScoredBatch, data: dict[str, jax.Array],
             metrics: dict[str, float], done: int, with_ref: bool,
             new_programs: Any, first_step: bool) -> None:
    """Throughput and MFU, a warning for programs compiled after the first step, the metric
    row and progress line, and every `train.rollout_log_every` steps the sampled rollouts."""
    cfg = inp.cfg
    num, length = data["tokens"].shape
    metrics["perf/tokens_per_s"] = (metrics["response_length/mean"] * num
                                    / metrics["timing_s/step"])
    flops = inp.step_flops(num, length, cfg.train.ppo_epochs, with_ref, cfg.rl.use_critic)
    metrics["perf/mfu"] = flops / metrics["timing_s/step"] / (
        cfg.train.peak_tflops * 1e12 * jax.device_count())
    metrics["perf/compiles"] = float(sum(new_programs.values()))
    if new_programs and not first_step:
        # After the first step every shape is known: a compile here is a new shape, dtype
        # or sharding reaching a jitted function.
        writer.log(f"RL step {done}: {sum(new_programs.values())} XLA program(s) compiled "
                   "after the first step: " + ", ".join(
                       f"{name} x{k}" for name, k in sorted(new_programs.items())))
    writer.write(done, metrics)
    writer.progress(done, metrics)
    if done % cfg.train.rollout_log_every == 0 and jax.process_index() == 0:
        metrics_lib.write_rollouts(os.path.join(writer.workdir, "rollouts.jsonl"), done,
                                   [ex.prompt for ex in batch.repeated_examples()],
                                   batch.transcripts or batch.completions,
                                   batch.rewards.tolist())


def save(inp: Inputs, ckpt: ckpt_lib.Checkpointer, run: lifecycle.Run, state: TrainState,
         extras: dict[str, Any], done: int, evaluated: dict[str, float] | None) -> None:
    """The save stage after RL step `done`: a checkpoint every `train.checkpoint_every` steps,
    at the last step and when a stop signal came (then `run.stop` raises once it is written);
    `best/` when the step was `evaluated`. Extras carry the data position and the last
    evaluation with the step it was taken at."""
    cfg = inp.cfg
    if evaluated is not None:
        extras["eval"] = {"step": done, "metrics": evaluated}
    stop, last = run.stop_requested(), done == cfg.train.steps
    regular = done % cfg.train.checkpoint_every == 0 or last or stop
    if regular or evaluated:
        extras.update(rl_step=done, phase="rl", data=ckpt_lib.data_positions(inp.data_iter))
    if regular:
        ckpt.save(done, state, extras)
    else:
        ckpt.check()  # a background save that failed stops the run here
    if evaluated:
        ckpt.save_best(done, state, extras, evaluated)
    if stop and not last:
        ckpt.wait()
        run.stop(f"RL step {done}")


def run_eval(inp: Inputs, params: Any, key: jax.Array, writer: Any, step: int
             ) -> dict[str, float]:
    """Held-out evaluation (`eval.*`) of `params`, written as an eval row at `step`."""
    out = eval_lib.evaluate_run(inp, params, key)
    if out:
        writer.write(step, out, phase="eval")
        writer.log(f"eval @ RL step {step}: " + ", ".join(
            f"{k[len('eval/'):]}={v:.3f}" for k, v in out.items() if k.startswith("eval/")))
    return out
