"""The RL trainer: configs in, a better reasoner out.

`train(cfg, workdir)` reads top to bottom in sections: mesh, tokenizer + model, data, rewards,
sampler, state + compiled steps, checkpoint restore, supervised warm start, the RL loop
(sample -> rewards -> dynamic sampling -> old/ref logprobs, values -> advantages -> ppo_epochs
x minibatches of `train_step`), evaluation, export. The device math lives in
`lrmjax.train.steps`; everything that reads text runs here on the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax import config as config_lib
from lrmjax import host, parallel
from lrmjax.data.tasks import Example
from lrmjax.models import heads
from lrmjax.rewards import shaping
from lrmjax.rl import advantages as adv_lib
from lrmjax.rl import kl as kl_lib
from lrmjax.sampling import Rollout, SamplingParams
from lrmjax.train import compilation, steps
from lrmjax.train import evaluate as eval_lib
from lrmjax.train import metrics as metrics_lib
from lrmjax.train import sft as sft_lib
from lrmjax.train.checkpoint import Checkpointer
from lrmjax.train.inputs import Inputs, build_inputs
from lrmjax.train.state import TrainState, adamw, lr_schedule

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive updates with a non-finite loss or gradient."""


@dataclasses.dataclass
class RLBatch:
    """One step's scored responses, host side. N = groups * n rows, group-major."""

    examples: list[Example]          # one per group
    rollout: Rollout                 # numpy arrays, [N, ...]
    completions: list[str]           # [N]
    rewards: np.ndarray              # [N] float32 (after shaping)
    components: dict[str, np.ndarray]
    reward_metrics: dict[str, float]
    # What `on_rollout` dispatched to the devices before the responses were decoded and
    # scored (see `collect`), or None.
    early: Any = None


def _np_rollout(roll: Rollout) -> Rollout:
    return jax.tree.map(np.asarray, roll)


def _take_groups(roll: Rollout, groups: np.ndarray, n: int) -> Rollout:
    rows = (groups[:, None] * n + np.arange(n)[None]).reshape(-1)
    out = jax.tree.map(lambda x: x[rows], roll)
    return out.replace(group_ids=np.repeat(np.arange(len(groups)), n).astype(np.int32))


def _concat_rollouts(rolls: list[Rollout]) -> Rollout:
    width = max(r.prompt_tokens.shape[1] for r in rolls)

    def pad_prompt(r):  # prompts of different rounds may be bucketed to different widths
        extra = width - r.prompt_tokens.shape[1]
        return r.replace(prompt_tokens=np.pad(r.prompt_tokens, ((0, 0), (extra, 0))),
                         prompt_mask=np.pad(r.prompt_mask, ((0, 0), (extra, 0))))

    return jax.tree.map(lambda *xs: np.concatenate(xs), *[pad_prompt(r) for r in rolls])


def sample_and_score(inp: Inputs, params: Any, examples: list[Example], key: jax.Array,
                     sampling: SamplingParams, on_rollout: Any = None) -> RLBatch:
    """Samples n responses per example and scores them (host reward pool or device reward).
    `on_rollout(rollout)`, if given, runs first: device work dispatched there overlaps the
    host's decoding and scoring; its result is the batch's `early`."""
    tokens, mask = inp.encode(examples)
    roll = _np_rollout(inp.sampler.generate(params, tokens, mask, sampling, key))
    early = on_rollout(roll) if on_rollout is not None else None
    completions = inp.decode(roll)
    rep = [ex for ex in examples for _ in range(sampling.n)]
    rewards, components, rmetrics = inp.score(rep, completions, roll, params)
    algo = inp.cfg.rl
    if algo.overlong_buffer_len > 0:
        penalty = shaping.overlong_penalty(roll.lengths, max_len=sampling.max_new_tokens,
                                           cache_len=algo.overlong_buffer_len,
                                           factor=algo.overlong_penalty_factor)
        components["overlong_penalty"] = np.asarray(penalty, np.float32)
        rewards = rewards + components["overlong_penalty"]
    return RLBatch(examples, roll, completions, rewards.astype(np.float32), components, rmetrics,
                   early)


def collect(inp: Inputs, params: Any, data_iter: Any, key: jax.Array, step_metrics: dict,
            on_rollout: Any = None) -> RLBatch:
    """Samples one step's batch; with dynamic sampling (DAPO) drops groups whose rewards are
    all equal (zero advantage, no gradient) and samples more prompts, at most
    `train.max_refill_rounds` extra rounds. If the batch is still short, the dropped groups
    fill it (they add no gradient) and `filter_groups/unfilled` counts them.

    `on_rollout` (see `sample_and_score`) is called only without dynamic sampling, where the
    first rollout is the batch."""
    cfg = inp.cfg
    n, want = cfg.sampling.n, cfg.train.batch_prompts // jax.process_count()  # per host
    batch = sample_and_score(inp, params, next(data_iter), key, inp.train_sampling,
                             None if cfg.rl.dynamic_sampling else on_rollout)
    if not cfg.rl.dynamic_sampling:
        return batch
    kept, dropped, rounds = [], [], 0
    while True:
        r = batch.rewards.reshape(-1, n)
        varied = r.std(axis=1) > 0
        kept.append((batch, np.flatnonzero(varied)))
        dropped.append((batch, np.flatnonzero(~varied)))
        have = sum(len(g) for _, g in kept)
        # Sampling is one program over all hosts: they stop refilling together.
        fewest = int(parallel.global_to_host(np.array([have])).min())
        if fewest >= want or rounds >= cfg.train.max_refill_rounds:
            break
        rounds += 1
        key = jax.random.fold_in(key, rounds)
        batch = sample_and_score(inp, params, next(data_iter), key, inp.train_sampling)
    counts = parallel.global_to_host(np.array([sum(len(g) for _, g in dropped),
                                             max(0, want - sum(len(g) for _, g in kept))]))
    step_metrics["filter_groups/dropped"] = float(counts[0::2].sum())
    step_metrics["filter_groups/unfilled"] = float(counts[1::2].sum())
    step_metrics["filter_groups/rounds"] = float(rounds)
    picks = kept + dropped
    parts, total = [], 0
    for b, groups in picks:
        groups = groups[: want - total]
        if len(groups):
            parts.append((b, groups))
            total += len(groups)
    rows = lambda g: (g[:, None] * n + np.arange(n)[None]).reshape(-1)
    return RLBatch(
        examples=[b.examples[i] for b, g in parts for i in g],
        rollout=_concat_rollouts([_take_groups(b.rollout, g, n) for b, g in parts]),
        completions=[b.completions[i] for b, g in parts for i in rows(g)],
        rewards=np.concatenate([b.rewards[rows(g)] for b, g in parts]),
        components={k: np.concatenate([b.components[k][rows(g)] for b, g in parts])
                    for k in parts[0][0].components},
        reward_metrics=parts[0][0].reward_metrics)


def rollout_metrics(batch: RLBatch, max_new_tokens: int) -> dict[str, float]:
    """Reward and length statistics of the whole step's batch (every host's rows)."""
    local = {"rewards": batch.rewards, "lengths": np.asarray(batch.rollout.lengths),
             "finish": np.asarray(batch.rollout.finish_reason),
             "groups": np.array([len(batch.examples)]),
             "pool": np.array([[batch.reward_metrics.get(k, 0.0) for k in _POOL_COUNTS]]),
             "components": {k: np.asarray(v, np.float64) for k, v in batch.components.items()}}
    g = parallel.global_to_host(local)
    r, lengths = g["rewards"], g["lengths"]
    out = dict(batch.reward_metrics)  # timing; the counts and means below are global
    out |= dict(zip(_POOL_COUNTS, (float(x) for x in g["pool"].sum(axis=0)), strict=True))
    out |= {"batch/groups": float(g["groups"].sum()), "reward/mean": float(r.mean()),
            "reward/std": float(r.std()), "reward/max": float(r.max()),
            "reward/min": float(r.min()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": float((g["finish"] == 1).mean())}
    for k, v in g["components"].items():
        out[f"reward/{k}"] = float(np.mean(v))
    return out


# Reward-pool counters, summed over hosts.
_POOL_COUNTS = ("reward/errors", "reward/timeouts", "reward/nonfinite")


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) the experiment `cfg` in `workdir`. Returns the final eval metrics."""
    with compilation.CompileCounter() as compiles:
        return _train(cfg, workdir, compiles)


def _train(cfg: ml_collections.ConfigDict, workdir: str,
           compiles: compilation.CompileCounter) -> dict[str, float]:
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
    inp = build_inputs(cfg, workdir)
    algo, model_cfg, mesh = cfg.rl, inp.model_cfg, inp.mesh
    writer = metrics_lib.MetricsWriter(
        workdir, enabled=is_main, progress_total=cfg.train.steps, progress=cfg.train.progress,
        keys={"reward/mean": "reward", "response_length/mean": "len",
              "actor/pg_clipfrac": "clipfrac", "timing_s/step": "s/step"})
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))

    # ---------------------------------------------------------------- state and optimizers
    total_updates = cfg.train.steps * cfg.train.ppo_epochs * cfg.train.minibatches
    tx = adamw(lr_schedule(cfg.optim.lr, cfg.optim.warmup_steps, total_updates,
                           cfg.optim.schedule, cfg.optim.min_lr_ratio),
               b1=cfg.optim.b1, b2=cfg.optim.b2, eps=cfg.optim.eps,
               weight_decay=cfg.optim.weight_decay, grad_clip=cfg.optim.grad_clip)
    critic_tx = critic_params = None
    if algo.use_critic:
        critic_tx = adamw(lr_schedule(cfg.optim.critic_lr, cfg.optim.critic_warmup_steps,
                                      total_updates, "constant"),
                          grad_clip=cfg.optim.grad_clip)
    params = inp.init_params
    state = TrainState.create(params, tx, kl_coef=algo.kl_coef)
    extras: dict[str, Any] = {"phase": "sft" if cfg.sft.steps > 0 else "rl", "rl_step": 0}

    ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints)
    latest = ckpt.latest_step()
    ref_params = None

    # ---------------------------------------------------------------- supervised warm start
    if latest is None and cfg.sft.steps > 0:
        state, sft_metrics = sft_lib.warm_start(inp, state, writer)
        extras["sft"] = sft_metrics
    if algo.use_critic:
        critic_params = heads.init_from_policy(model_cfg, state.params,
                                               jax.random.key(cfg.seed + 7))
    # The RL phase starts from fresh optimizer state (the SFT moments belong to another loss).
    state = TrainState.create(state.params, tx, critic_params=critic_params,
                              critic_tx=critic_tx, kl_coef=algo.kl_coef)
    if algo.kl_mode != "none":
        ref_params = jax.tree.map(jnp.copy, state.params)  # the policy at RL start
    if latest is not None:
        state, extras = ckpt.restore(latest, state)
        if ref_params is not None:
            ref_params = ckpt_ref_restore(workdir, ref_params)
        inp.data_iter.set_state(extras["data"])
        writer.log(f"resumed from {workdir} at RL step {extras['rl_step']}")
    elif ref_params is not None:
        ckpt_ref_save(workdir, ref_params)

    # ---------------------------------------------------------------- compiled steps
    state, state_sh = place_state(state, mesh)
    on_policy = cfg.train.ppo_epochs == 1 and cfg.train.minibatches == 1
    logprob_group, update_group = shared_prompt_groups(cfg, mesh)
    # Explicit in/out shardings keep the state in one layout across steps (so neither the
    # step nor the sampler, which reads the same params, ever recompiles for a new layout).
    train_step = jax.jit(
        functools.partial(steps.rl_train_step, model_cfg=model_cfg, algo=algo,
                          prompt_len=inp.prompt_len, temperature=inp.loss_temperature,
                          microbatches=cfg.train.microbatches, on_policy=on_policy,
                          group_size=update_group),
        in_shardings=(state_sh, parallel.batch_sharding(mesh)),
        out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=(0,))
    logprob_fn = jax.jit(functools.partial(steps.response_logprobs, model_cfg=model_cfg,
                                           prompt_len=inp.prompt_len,
                                           temperature=inp.loss_temperature,
                                           group_size=logprob_group))
    value_fn = jax.jit(functools.partial(steps.response_values, model_cfg=model_cfg,
                                         prompt_len=inp.prompt_len))
    advantage_fn = jax.jit(functools.partial(adv_lib.compute_advantages, algo,
                                             group_size=cfg.sampling.n))

    # ---------------------------------------------------------------- evaluation
    def run_eval(step: int) -> dict[str, float]:
        if not inp.eval_examples:
            return {}
        t0 = time.perf_counter()
        out = eval_lib.evaluate(
            inp.sampler, state.params, inp.eval_examples, inp.encode, inp.decode,
            inp.score_texts, jax.random.key(cfg.seed + 99), k=cfg.eval.k,
            max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.eval.temperature,
            batch_size=cfg.eval.batch_size)
        out["timing_s/eval"] = time.perf_counter() - t0
        writer.write(step, out, phase="eval")
        writer.log(f"eval @ RL step {step}: " + ", ".join(
            f"{k[len('eval/'):]}={v:.3f}" for k, v in out.items() if k.startswith("eval/")))
        return out

    first = extras["rl_step"]
    # Compile the update before the loop: its memory is known (and an out-of-memory shows)
    # before any sampling, and the loop's calls hit this executable (jit's cache).
    if first < cfg.train.steps:
        t0 = time.perf_counter()
        compiled = train_step.lower(state, train_batch_spec(
            cfg, inp, mesh, state, ref_params, on_policy, logprob_fn, value_fn)).compile()
        seconds = time.perf_counter() - t0
        memory = compilation.memory_mib(compiled)
        writer.log(compilation.describe_memory("train step", memory, seconds))
        writer.write(first, {"perf/train_step_compile_s": seconds,
                             **{f"perf/train_step_{k}_mib": v for k, v in memory.items()}},
                     phase="compile")
    eval_metrics = extras.get("eval_before") or run_eval(first)
    if first == 0:
        extras["eval_before"] = eval_metrics
    rollouts_path = os.path.join(workdir, "rollouts.jsonl")
    base_key = jax.random.key(cfg.seed)
    consecutive_bad = 0

    dev = lambda x: parallel.host_to_global(x, mesh)  # noqa: E731  host rows -> global batch

    def dispatch_tokens(roll: Rollout) -> dict[str, Any]:
        """The rollout's token and mask arrays on the mesh [N, P+R], and the reference
        policy's log-probs of it dispatched at once: on the devices they overlap the host's
        decoding and scoring of the responses (`collect`'s on_rollout)."""
        if logprob_group > 1:
            check_groups_share_prompts(roll, logprob_group)
        out = {"tokens": dev(np.concatenate([roll.prompt_tokens, roll.response_tokens],
                                            axis=1).astype(np.int32)),
               "mask": dev(np.concatenate([roll.prompt_mask, roll.response_mask], axis=1))}
        if ref_params is not None:
            out["ref_logprobs"] = logprob_fn(ref_params, out["tokens"], out["mask"])
        return out

    # ---------------------------------------------------------------- the RL loop
    for rl_step in range(first, cfg.train.steps):
        compiles_before = compiles.count  # since the previous step's row (its eval and save)
        t_step = time.perf_counter()
        key = jax.random.fold_in(base_key, rl_step)
        m: dict[str, float] = {}

        t0 = time.perf_counter()
        batch = collect(inp, state.params, inp.data_iter, key, m, on_rollout=dispatch_tokens)
        m["timing_s/sample_and_reward"] = time.perf_counter() - t0
        m.update(rollout_metrics(batch, cfg.sampling.max_new_tokens))
        if cfg.reward.shuffle_control:
            shuffle = np.random.default_rng([cfg.seed, rl_step, 7]).permutation(len(batch.rewards))
            batch = dataclasses.replace(batch, rewards=batch.rewards[shuffle])
        inp.observe(batch.examples, batch.rewards)

        t0 = time.perf_counter()
        roll = batch.rollout
        early = batch.early or dispatch_tokens(roll)
        tokens_d, mask_d = early["tokens"], early["mask"]
        response_mask = roll.response_mask.astype(np.float32)
        loss_mask = response_mask.copy()
        if algo.overlong_filter:
            loss_mask[roll.finish_reason == 1] = 0.0
            m["response_length/filtered"] = m["response_length/clip_ratio"]  # all hosts
        data = {"tokens": tokens_d, "mask": mask_d, "loss_mask": dev(loss_mask),
                "sampler_logprobs": dev(roll.logprobs.astype(np.float32))}
        data["old_logprobs"] = (data["sampler_logprobs"] if on_policy
                                else logprob_fn(state.params, tokens_d, mask_d))
        token_rewards = values = baseline = None
        if cfg.reward.process_fns:  # step-level rewards -> per-token rewards [N, R]
            process, pm = inp.process_rewards(
                [ex for ex in batch.examples for _ in range(cfg.sampling.n)],
                batch.completions, roll)
            names = sorted(pm)  # counts summed over hosts, the mean over every row
            g = parallel.global_to_host({"sums": process.sum(axis=1),
                                         "counts": np.array([[pm[k] for k in names]])})
            m["reward/process_mean"] = float(g["sums"].mean())
            m.update(zip(names, (float(x) for x in g["counts"].sum(axis=0)), strict=True))
            token_rewards = dev(process)
        if ref_params is not None:
            data["ref_logprobs"] = early["ref_logprobs"]
            if algo.kl_mode == "reward":
                old = (logprob_fn(state.params, tokens_d, mask_d) if on_policy
                       else data["old_logprobs"])
                kl_rewards = kl_lib.kl_penalty_rewards(old, data["ref_logprobs"],
                                                       data["loss_mask"], state.kl_coef,
                                                       algo.kl_estimator)
                token_rewards = (kl_rewards if token_rewards is None
                                 else token_rewards + kl_rewards)
        if algo.use_critic:
            values = value_fn(state.critic_params, tokens_d, mask_d)
            data["old_values"] = values
        if algo.needs_greedy_baseline:
            greedy = sample_and_score(inp, state.params, batch.examples,
                                      jax.random.fold_in(key, 10_000),
                                      dataclasses.replace(inp.train_sampling, temperature=0.0,
                                                          n=1))
            baseline = dev(np.repeat(greedy.rewards, cfg.sampling.n))
        adv, returns = advantage_fn(rewards=dev(batch.rewards),
                                    response_mask=data["loss_mask"],
                                    token_rewards=token_rewards, values=values,
                                    baseline_rewards=baseline)
        data["advantages"], data["returns"] = adv, returns
        m["timing_s/prepare"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, rl_step])
        num = data["tokens"].shape[0]  # global rows
        size = num // cfg.train.minibatches
        update_metrics = []
        for _ in range(cfg.train.ppo_epochs):
            order = rng.permutation(num) if cfg.train.minibatches > 1 else np.arange(num)
            for i in range(cfg.train.minibatches):
                idx = np.sort(order[i * size:(i + 1) * size])
                mb = data if cfg.train.minibatches == 1 else {
                    k: parallel.put(v[idx], parallel.batch_sharding(mesh, v.ndim))
                    for k, v in data.items()}
                state, um = train_step(state, mb)
                update_metrics.append(um)
        update_metrics = jax.device_get(update_metrics)  # one host transfer per RL step
        m.update(jax.tree.map(lambda *xs: float(np.mean(xs)), *update_metrics))
        skipped = int(sum(u["actor/skipped"] > 0 for u in update_metrics))
        consecutive_bad = consecutive_bad + skipped if skipped else 0
        m["timing_s/update"] = time.perf_counter() - t0
        if algo.kl_mode != "none" and algo.kl_target is not None and "actor/kl_loss" in m:
            ctrl = kl_lib.update_kl_controller(kl_lib.KLControllerState(coef=state.kl_coef),
                                               m["actor/kl_loss"], num, algo.kl_target,
                                               algo.kl_horizon)
            state = state.replace(kl_coef=parallel.put(ctrl.coef, state_sh.kl_coef))
        m["actor/kl_coef"] = float(state.kl_coef)

        m["timing_s/step"] = time.perf_counter() - t_step
        new_tokens = m["response_length/mean"] * num
        m["perf/tokens_per_s"] = new_tokens / m["timing_s/step"]
        flops = inp.step_flops(num, tokens_d.shape[1], cfg.train.ppo_epochs,
                               ref_params is not None, algo.use_critic)
        m["perf/mfu"] = flops / m["timing_s/step"] / (
            cfg.train.peak_tflops * 1e12 * jax.device_count())
        new_programs = compiles.new_since(compiles_before)
        m["perf/compiles"] = float(sum(new_programs.values()))
        if new_programs and rl_step > first:
            # After the first step every shape is known: a compile here is a new shape, dtype
            # or sharding reaching a jitted function.
            writer.log(f"RL step {rl_step + 1}: {sum(new_programs.values())} XLA program(s) "
                       "compiled after the first step: " + ", ".join(
                           f"{name} x{k}" for name, k in sorted(new_programs.items())))
        done = rl_step + 1
        writer.write(done, m)
        writer.progress(done, m)
        if done % cfg.train.rollout_log_every == 0 and is_main:
            metrics_lib.write_rollouts(rollouts_path, done,
                                       [ex.prompt for ex in batch.examples
                                        for _ in range(cfg.sampling.n)],
                                       batch.completions, batch.rewards.tolist())
        if consecutive_bad >= cfg.train.max_nonfinite:
            ckpt.close()
            raise NonFiniteError(
                f"{consecutive_bad} consecutive updates had a non-finite loss or gradient at RL "
                f"step {done}; params were left unchanged by each. Lower optim.lr or check the "
                "rewards (config 'train.max_nonfinite' sets the limit).")
        if cfg.eval.every and done % cfg.eval.every == 0 and done != cfg.train.steps:
            eval_metrics = run_eval(done)
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            extras.update(rl_step=done, phase="rl", data=inp.data_iter.get_state())
            ckpt.save(done, state, extras, eval_metrics)

    # ---------------------------------------------------------------- final eval and export
    final = run_eval(cfg.train.steps) if first < cfg.train.steps else eval_metrics
    ckpt.close()
    if is_main:
        summary = {"before": extras.get("eval_before", {}), "after": final,
                   "sft": extras.get("sft", {})}
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        metrics_lib.plot_curves(os.path.join(workdir, "metrics.jsonl"),
                                os.path.join(workdir, "curves.png"))
    if cfg.train.export_hf and inp.hf_exportable:
        params_np = parallel.global_to_host(state.params)  # a collective: every host joins
        if is_main:
            inp.export(params_np, os.path.join(workdir, "hf_export"))
    writer.close()
    if jax.process_count() > 1:
        # No host leaves (and, on host 0, takes the coordination service down) while another
        # is still in a collective.
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("lrmjax.train: done")
    return final


def shared_prompt_groups(cfg: ml_collections.ConfigDict, mesh: Any) -> tuple[int, int]:
    """Group sizes for the shared-prompt forward (`steps.grouped_hidden`) of the logprob
    passes and of the update: sampling.n when `train.shared_prompt_forward` is on, else 1.

    The reference/old logprob passes see the whole step's batch, group-major as sampled. The
    update shares prompts only with one minibatch (several shuffle the rows apart), and each
    pass only when its prompts split evenly over the batch shards (each device then holds
    whole groups: no communication)."""
    n = cfg.sampling.n
    if not cfg.train.shared_prompt_forward or n == 1:
        return 1, 1
    shards = parallel.batch_divisor(mesh)
    prompts = cfg.train.batch_prompts  # global
    logprob = n if prompts % shards == 0 else 1
    per_micro, rest = divmod(prompts, cfg.train.microbatches)
    update = (n if cfg.train.minibatches == 1 and rest == 0 and per_micro % shards == 0
              else 1)
    return logprob, update


def check_groups_share_prompts(roll: Rollout, n: int) -> None:
    """Raises if the rows are not groups of n consecutive rows with one prompt (the layout
    the shared-prompt forward relies on; a bug if it fails)."""
    for name in ("prompt_tokens", "prompt_mask"):
        x = np.asarray(getattr(roll, name))
        groups = x.reshape(-1, n, x.shape[-1])
        if (groups != groups[:, :1]).any():
            raise RuntimeError(f"rollout {name} are not groups of {n} rows sharing a prompt; "
                               "set train.shared_prompt_forward=False to bypass")


def place_state(state: TrainState, mesh: Any) -> tuple[TrainState, TrainState]:
    """Puts every leaf of `state` in a NamedSharding on `mesh` and returns (state, shardings).

    Params keep the sharding they were created with (the logical-axis rules); optimizer
    moments inherit it from the params; scalars are replicated.
    """
    rep = parallel.replicated(mesh)
    shardings = jax.tree.map(
        lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else rep,
        state)
    return parallel.put(state, shardings), shardings


def ckpt_ref_save(workdir: str, ref_params: Any) -> None:
    """The reference policy is fixed for the whole run: saved once, beside the checkpoints.
    Every host calls this (Orbax writes each host's shards of multi-host arrays)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.path.join(workdir, "reference"))
    # Host 0 decides: a host that looked after another had started writing would skip the
    # save and leave the others waiting in it.
    if not parallel.same_on_all_hosts(os.path.exists(path)):
        tree = jax.device_get(ref_params) if jax.process_count() == 1 else ref_params
        with ocp.StandardCheckpointer() as c:
            c.save(path, tree)


def ckpt_ref_restore(workdir: str, like: Any) -> Any:
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.path.join(workdir, "reference"))
    with ocp.StandardCheckpointer() as c:
        return c.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))


def train_batch_spec(cfg: ml_collections.ConfigDict, inp: Inputs, mesh: Any,
                     state: TrainState, ref_params: Any, on_policy: bool, logprob_fn: Any,
                     value_fn: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shape, dtype and sharding of every entry of one `train_step` minibatch, as the RL loop
    builds it: batch_prompts x n / minibatches rows of prompt_len + max_new_tokens slots
    (the batch is always full: dynamic sampling refills it), sharded over the batch axes.
    Advantages and returns are [rows, R] float32 (compute_advantages' contract); the logprob
    and value programs are shape-evaluated.
    """
    rows = cfg.train.batch_prompts * cfg.sampling.n // cfg.train.minibatches
    R = cfg.sampling.max_new_tokens

    def spec(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(shape, dtype,
                                    sharding=parallel.batch_sharding(mesh, len(shape)))

    tokens = spec((rows, inp.prompt_len + R), jnp.int32)
    mask = spec((rows, inp.prompt_len + R), jnp.bool_)
    per_token = spec((rows, R), jnp.float32)
    like = lambda x: spec(x.shape, x.dtype)  # noqa: E731  (an eval_shape result, sharded)
    batch = {"tokens": tokens, "mask": mask, "loss_mask": per_token,
             "sampler_logprobs": per_token, "advantages": per_token, "returns": per_token}
    batch["old_logprobs"] = (per_token if on_policy else
                             like(jax.eval_shape(logprob_fn, state.params, tokens, mask)))
    if ref_params is not None:
        batch["ref_logprobs"] = like(jax.eval_shape(logprob_fn, ref_params, tokens, mask))
    if cfg.rl.use_critic:
        batch["old_values"] = like(jax.eval_shape(value_fn, state.critic_params, tokens, mask))
    return batch
