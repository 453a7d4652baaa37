"""The device-reward path: whole runs as pure functions, for procedural tasks whose reward is a
jittable function of token ids (e.g. `arithmetic_device_reward`).

    data = DeviceData.from_examples(tokenizer, examples, prompt_len, encode_answers)
    step = functools.partial(rl_step, data=data, model_cfg=cfg, algo=algo, sampling=sp,
                             batch_prompts=32, reward_fn=arithmetic_device_reward,
                             stop_ids=(eos,), pad_id=pad)
    state, metrics = jax.jit(step)(state, key)                   # one step
    states, metrics = jax.jit(jax.vmap(step))(states, keys)      # S runs in one program

One RL step: draw prompts from device-resident data -> sample n responses each -> score them
on device -> the update batch (old / reference log-probs, critic values, advantages: what
`update_batch.build` makes on the host path) -> `ppo_epochs` x `minibatches` of
`steps.rl_train_step`. `train` scans steps and evaluates on a device-resident held-out set
every k steps (`evaluate`: greedy and sampled pass@1, pass@k); `warm_start` is the supervised
warm start, stopping at a target accuracy. Nothing touches the host, so an experiment can jit
a whole run (warm start, RL, evaluations) and `vmap` it over seeds and scalar hyperparameters
(`Knobs`; the PureJaxRL trick): `lrmjax.train.sweep` builds such programs from a config.

What the host trainer (`lrmjax.train.rl`) has and this path does not: text rewards, dynamic
sampling, the greedy baseline (ReMax), DAPO's overlong penalty, process rewards, episodes,
curricula, checkpoints and multi-host runs (`unsupported` lists the knobs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax import tokenizers as tok_lib
from lrmjax.models.presets import ModelConfig
from lrmjax.rl import advantages as adv_lib
from lrmjax.rl import kl as kl_lib
from lrmjax.sampling import FINISH_LENGTH, Rollout, SamplingParams, generate
from lrmjax.train import steps
from lrmjax.train.state import TrainState

Array = jax.Array
# (response_tokens [N, R], response_mask [N, R], answer_tokens [N, A], answer_mask [N, A]) -> [N]
DeviceReward = Callable[[Array, Array, Array, Array], Array]


@flax.struct.dataclass
class DeviceData:
    """A prompt set on device: E examples, prompts left padded to P slots.

    prompt_tokens [E, P] int32, prompt_mask [E, P] bool, answer_tokens [E, A] int32,
    answer_mask [E, A] bool (the device reward's reference answers). A row whose prompt_mask
    is all False is padding (`padded`): it is sampled as a finished empty response and left out
    of evaluations.
    """

    prompt_tokens: Array
    prompt_mask: Array
    answer_tokens: Array
    answer_mask: Array

    @classmethod
    def from_examples(cls, tokenizer: Any, examples: Sequence[Any], prompt_len: int,
                      encode_answers: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
                      add_bos: bool = True,
                      prompt_ids: Callable[[Any], list[int]] | None = None) -> DeviceData:
        """Tokenizes `examples` (their prompt and `answer`) on the host, once. `prompt_ids`
        (example -> ids) defaults to the raw prompt's tokens (with BOS when `add_bos`)."""
        if prompt_ids is None:
            def prompt_ids(ex):
                return tokenizer.encode(ex.prompt, add_bos=add_bos)
        ids = [prompt_ids(ex) for ex in examples]
        longest = max(len(x) for x in ids)
        if longest > prompt_len:
            raise ValueError(f"a prompt has {longest} tokens, more than prompt_len={prompt_len}")
        tokens, mask = tok_lib.left_pad(ids, tokenizer.pad_id, prompt_len)
        answers, answer_mask = encode_answers([ex.answer for ex in examples])
        return cls(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool),
                   jnp.asarray(answers, jnp.int32), jnp.asarray(answer_mask, bool))

    @property
    def size(self) -> int:
        return self.prompt_tokens.shape[0]

    def padded(self, multiple: int) -> DeviceData:
        """The set with padding rows appended up to a multiple of `multiple` rows."""
        extra = -self.size % multiple
        if not extra:
            return self

        def pad(x):
            return jnp.concatenate([x, jnp.zeros((extra, *x.shape[1:]), x.dtype)])

        return jax.tree.map(pad, self)


@flax.struct.dataclass
class DeviceDemos:
    """Supervised demonstrations on device (`inputs.demonstration_arrays`): tokens [E, L]
    int32 (prompt and demonstration, left padded), mask [E, L] bool, target_mask [E, L]
    float32 (1 on demonstration tokens)."""

    tokens: Array
    mask: Array
    target_mask: Array


# ------------------------------------------------------------------ traced hyperparameters

# Algorithm knobs a run may carry as traced scalars (so that `vmap` sweeps them): each enters
# the losses / advantages as arithmetic, never as a Python branch. (The KL coefficient lives in
# `TrainState.kl_coef`, the learning rates in the optimizer state: `sweep.optimizer`.)
TRACEABLE_KNOBS = ("clip_ratio_low", "clip_ratio_high", "entropy_coef", "vf_coef", "gamma",
                   "lam", "lam_critic", "kl_cov_coef")


class Knobs:
    """An algorithm config (`algorithms.get`) with some knobs replaced by traced scalars:
    reads like the ConfigDict (`knobs.clip_ratio_high`), so the losses and estimators take
    it in place of one."""

    def __init__(self, algo: ml_collections.ConfigDict, values: Mapping[str, Array]):
        bad = sorted(set(values) - set(TRACEABLE_KNOBS))
        if bad:
            raise ValueError(f"knobs {bad} cannot be traced; traceable: {TRACEABLE_KNOBS}")
        self._algo, self._values = algo, dict(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._values[name] if name in self._values else getattr(self._algo, name)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)


def with_knobs(algo: ml_collections.ConfigDict, knobs: Mapping[str, Array] | None) -> Any:
    return algo if not knobs else Knobs(algo, knobs)


def unsupported(algo: ml_collections.ConfigDict) -> list[str]:
    """The knobs of `algo` this path does not implement (empty when it runs as on the host)."""
    out = []
    if algo.dynamic_sampling:
        out.append("dynamic_sampling=True (refills batches: host trainer only)")
    if algo.needs_greedy_baseline:
        out.append(f"adv_estimator={algo.adv_estimator!r} (a greedy baseline decode)")
    if algo.overlong_buffer_len > 0:
        out.append("overlong_buffer_len > 0 (DAPO's overlong penalty is host-side shaping)")
    return out


# ------------------------------------------------------------------ one RL step


def draw_rows(key: Array, population: int, k: int) -> Array:
    """k distinct row indices in [0, population), every k-subset equally likely: [k] int32.

    Floyd's algorithm (Bentley & Floyd 1987, "A sample of brilliance"): for j = E-k .. E-1,
    draw t uniform in [0, j] and take t, or j if t was taken. k draws and k x k comparisons,
    where `jax.random.choice(replace=False)` shuffles the whole population (a sort of E keys,
    which dominated a step of the demo shapes with E = 100,000).
    """
    if not 0 < k <= population:
        raise ValueError(f"cannot draw {k} distinct rows of {population}")
    keys = jax.random.split(key, k)

    def body(i, rows):
        j = population - k + i
        t = jax.random.randint(keys[i], (), 0, j + 1)
        return rows.at[i].set(jnp.where(jnp.any(rows == t), j, t))

    return jax.lax.fori_loop(0, k, body, jnp.full((k,), -1, jnp.int32))


def sample_and_score(params: Any, key: Array, *, data: DeviceData, batch_prompts: int,
                     model_cfg: ModelConfig, sampling: SamplingParams, reward_fn: DeviceReward,
                     stop_ids: tuple[int, ...], pad_id: int) -> tuple[Rollout, Array]:
    """`batch_prompts` prompts drawn without replacement from `data`, `sampling.n` responses
    each (a Rollout of N = batch_prompts * n rows, group-major) and their rewards [N]."""
    data_key, sample_key = jax.random.split(key)
    rows = draw_rows(data_key, data.size, batch_prompts)
    roll = generate(params, data.prompt_tokens[rows], data.prompt_mask[rows], sample_key,
                    cfg=model_cfg, sampling=sampling, stop_ids=stop_ids, pad_id=pad_id)
    n = sampling.n
    rewards = reward_fn(roll.response_tokens, roll.response_mask,
                        jnp.repeat(data.answer_tokens[rows], n, axis=0),
                        jnp.repeat(data.answer_mask[rows], n, axis=0))
    return roll, rewards


def update_on_rollout(state: TrainState, key: Array, roll: Rollout, rewards: Array, *,
                      model_cfg: ModelConfig, algo: ml_collections.ConfigDict,
                      sampling: SamplingParams, ref_params: Any = None,
                      knobs: Mapping[str, Array] | None = None, ppo_epochs: int = 1,
                      minibatches: int = 1, microbatches: int = 1, shared_prompt: bool = True,
                      logits_chunk_mb: float = steps.LOGITS_CHUNK_MB
                      ) -> tuple[TrainState, dict[str, Array]]:
    """The update of one RL step on a scored rollout, as the host trainer makes it
    (`update_batch.build`, then `rl.update`): old log-probs (the sampler's when on-policy, i.e.
    one epoch of one minibatch), reference log-probs with `ref_params` (KL as a loss term, or
    as token rewards `-kl_coef * KL` for kl_mode='reward'), critic values, advantages, then
    `ppo_epochs` passes over `minibatches` minibatches of shuffled rows (sorted within each,
    as the host does; each minibatch's gradient accumulated over `microbatches` slices), and the
    adaptive KL controller.

    roll: N = B * n rows, group-major; rewards [N]. `key` shuffles the minibatches.
    `shared_prompt`: each group's prompt runs once in the log-prob passes and (with one
    minibatch) the update (`steps.grouped_hidden`; config 'train.shared_prompt_forward').
    Returns the new state and the update's scalar metrics (means over minibatches).
    """
    if (algo.kl_mode != "none") != (ref_params is not None):
        raise ValueError(f"kl_mode={algo.kl_mode!r} needs reference params exactly when it "
                         "is not 'none'")
    if algo.use_critic != (state.critic_tx is not None):
        raise ValueError(f"use_critic={algo.use_critic} but the state "
                         f"{'has no' if algo.use_critic else 'has a'} critic")
    bad = unsupported(algo)
    if bad:
        raise ValueError("the device-reward path does not implement " + "; ".join(bad))
    knobbed = with_knobs(algo, knobs)
    n, P = sampling.n, roll.prompt_tokens.shape[1]
    group = n if shared_prompt and n > 1 else 1
    tokens, mask = roll.tokens()
    loss_mask = roll.response_mask.astype(jnp.float32)
    if algo.overlong_filter:
        loss_mask = jnp.where((roll.finish_reason == FINISH_LENGTH)[:, None], 0.0, loss_mask)
    temperature = sampling.score_temperature

    def logprobs(params):
        return steps.response_logprobs(params, tokens, mask, model_cfg=model_cfg, prompt_len=P,
                                       temperature=temperature, group_size=group,
                                       logits_chunk_mb=logits_chunk_mb)

    on_policy = ppo_epochs == 1 and minibatches == 1
    batch = {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
             "sampler_logprobs": roll.logprobs,
             "old_logprobs": roll.logprobs if on_policy else logprobs(state.policy)}
    token_rewards = values = None
    if ref_params is not None:
        batch["ref_logprobs"] = logprobs(ref_params)
        if algo.kl_mode == "reward":
            # As on the host: both sides of the KL from the trainer's forward, so it is exactly
            # 0 while the policy equals the reference.
            old = logprobs(state.policy) if on_policy else batch["old_logprobs"]
            token_rewards = kl_lib.kl_penalty_rewards(old, batch["ref_logprobs"], loss_mask,
                                                      state.kl_coef, algo.kl_estimator)
    if state.critic_tx is not None:
        values = batch["old_values"] = steps.response_values(
            state.critic_params, tokens, mask, model_cfg=model_cfg, prompt_len=P)
    batch["advantages"], batch["returns"] = adv_lib.compute_advantages(
        knobbed, rewards=rewards, response_mask=loss_mask, token_rewards=token_rewards,
        values=values, group_size=n)

    # The update shares prompts only when its (micro)batches hold whole groups.
    whole = minibatches == 1 and (tokens.shape[0] // n) % microbatches == 0
    train_step = functools.partial(
        steps.rl_train_step, model_cfg=model_cfg, algo=knobbed, prompt_len=P,
        temperature=temperature, microbatches=microbatches, on_policy=on_policy,
        group_size=group if whole else 1, logits_chunk_mb=logits_chunk_mb)
    if on_policy:
        state, metrics = train_step(state, batch)
    else:
        num = tokens.shape[0]
        size = num // minibatches

        def epoch(state, epoch_key):
            order = (jax.random.permutation(epoch_key, num) if minibatches > 1
                     else jnp.arange(num))
            rows = jnp.sort(order.reshape(minibatches, size), axis=1)

            def minibatch(state, idx):
                return train_step(state, jax.tree.map(lambda x: x[idx], batch))

            return jax.lax.scan(minibatch, state, rows)

        state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, ppo_epochs))
        metrics = jax.tree.map(jnp.mean, metrics)
    metrics = dict(metrics)
    if algo.kl_target is not None and "actor/kl_loss" in metrics:
        ctrl = kl_lib.update_kl_controller(kl_lib.KLControllerState(coef=state.kl_coef),
                                           metrics["actor/kl_loss"], tokens.shape[0],
                                           algo.kl_target, algo.kl_horizon)
        state = state.replace(kl_coef=ctrl.coef)
    metrics["actor/kl_coef"] = state.kl_coef
    return state, metrics


def rl_step(state: TrainState, key: Array, *, data: DeviceData, model_cfg: ModelConfig,
            algo: ml_collections.ConfigDict, sampling: SamplingParams, batch_prompts: int,
            reward_fn: DeviceReward, stop_ids: tuple[int, ...], pad_id: int,
            ref_params: Any = None, knobs: Mapping[str, Array] | None = None,
            ppo_epochs: int = 1, minibatches: int = 1, microbatches: int = 1,
            shared_prompt: bool = True, logits_chunk_mb: float = steps.LOGITS_CHUNK_MB,
            random_reward: float = 0.0) -> tuple[TrainState, dict[str, Array]]:
    """One RL step, pure: `sample_and_score`, then `update_on_rollout`.

    With `random_reward` p > 0 (config 'reward.random_p') the update sees Bernoulli(p) rewards
    drawn independently of the responses instead of the verifier's (a spurious-reward control,
    arXiv:2506.10947); reward/verified_mean then logs the verifier's mean.

    Returns the new state and scalar metrics: the update's (verl names, as in
    `steps.rl_train_step`) plus reward/mean, reward/std and response_length/mean.
    """
    roll, rewards = sample_and_score(
        state.policy, key, data=data, batch_prompts=batch_prompts, model_cfg=model_cfg,
        sampling=sampling, reward_fn=reward_fn, stop_ids=stop_ids, pad_id=pad_id)
    verified = rewards
    if random_reward > 0:
        rewards = jax.random.bernoulli(jax.random.fold_in(key, 3), random_reward,
                                       rewards.shape).astype(jnp.float32)
    state, metrics = update_on_rollout(
        state, jax.random.fold_in(key, 2), roll, rewards, model_cfg=model_cfg, algo=algo,
        sampling=sampling, ref_params=ref_params, knobs=knobs, ppo_epochs=ppo_epochs,
        minibatches=minibatches, microbatches=microbatches, shared_prompt=shared_prompt,
        logits_chunk_mb=logits_chunk_mb)
    metrics.update({"reward/mean": jnp.mean(rewards), "reward/std": jnp.std(rewards),
                    "response_length/mean": jnp.mean(roll.lengths.astype(jnp.float32))})
    if random_reward > 0:
        metrics["reward/verified_mean"] = jnp.mean(verified)
    return state, metrics


# ------------------------------------------------------------------ evaluation


def evaluate(params: Any, key: Array, *, data: DeviceData, model_cfg: ModelConfig,
             max_new_tokens: int, k: int, temperature: float, batch_size: int,
             reward_fn: DeviceReward, stop_ids: tuple[int, ...], pad_id: int,
             prefix: str = "eval/") -> dict[str, Array]:
    """Held-out evaluation on device, as `evaluate.evaluate` does it on the host: each chunk
    of `batch_size` prompts is decoded greedily (pass@1) and, with k > 0, sampled k times at
    `temperature` (the chunk's key is the host evaluator's: `key, sub = split(key)` per chunk,
    so with the same params the same tokens are drawn).

    data: E rows, E a multiple of `batch_size` (`DeviceData.padded`; padding rows are left out
    of every mean). Returns scalars: greedy_pass@1, mean_response_length (greedy) and, with
    k > 0, pass@1 (sampled), pass@k (unbiased from k samples: any of the k correct), each a
    mean over the real examples.
    """
    if data.size % batch_size:
        raise ValueError(f"{data.size} evaluation rows are not chunks of {batch_size}: pad "
                         "them (DeviceData.padded)")
    chunks = jax.tree.map(lambda x: x.reshape(data.size // batch_size, batch_size,
                                              *x.shape[1:]), data)

    def play(chunk, key, sampling):
        roll = generate(params, chunk.prompt_tokens, chunk.prompt_mask, key, cfg=model_cfg,
                        sampling=sampling, stop_ids=stop_ids, pad_id=pad_id)
        rep = functools.partial(jnp.repeat, repeats=sampling.n, axis=0)
        scores = reward_fn(roll.response_tokens, roll.response_mask, rep(chunk.answer_tokens),
                           rep(chunk.answer_mask))
        return roll, scores.reshape(batch_size, sampling.n)

    def body(key, chunk):
        roll, greedy = play(chunk, key, SamplingParams(temperature=0.0,
                                                       max_new_tokens=max_new_tokens))
        out = {"greedy": greedy[:, 0], "length": roll.lengths.astype(jnp.float32)}
        if k > 0:
            key, sub = jax.random.split(key)
            _, out["sampled"] = play(chunk, sub, SamplingParams(
                temperature=temperature, n=k, max_new_tokens=max_new_tokens))
        return key, out

    _, out = jax.lax.scan(body, key, chunks)
    out = jax.tree.map(lambda x: x.reshape(data.size, *x.shape[2:]), out)
    valid = data.prompt_mask.any(axis=-1).astype(jnp.float32)

    def mean(x):
        return jnp.sum(x * valid) / jnp.maximum(jnp.sum(valid), 1.0)

    metrics = {f"{prefix}greedy_pass@1": mean(out["greedy"]),
               f"{prefix}mean_response_length": mean(out["length"])}
    if k > 0:
        correct = out["sampled"] > 0.5
        metrics[f"{prefix}pass@1"] = mean(jnp.mean(out["sampled"], axis=1))
        metrics[f"{prefix}pass@{k}"] = mean(jnp.any(correct, axis=1).astype(jnp.float32))
    return metrics


# ------------------------------------------------------------------ supervised warm start


def sft_step(state: TrainState, key: Array, *, demos: DeviceDemos, batch_size: int,
             model_cfg: ModelConfig) -> tuple[TrainState, dict[str, Array]]:
    """One `steps.sft_train_step` on `batch_size` demonstrations drawn without replacement."""
    rows = draw_rows(key, demos.tokens.shape[0], batch_size)
    batch = {"tokens": demos.tokens[rows], "mask": demos.mask[rows],
             "target_mask": demos.target_mask[rows]}
    return steps.sft_train_step(state, batch, model_cfg=model_cfg)


def warm_start(state: TrainState, key: Array, *, demos: DeviceDemos, batch_size: int,
               model_cfg: ModelConfig, max_steps: int, check_every: int,
               target_accuracy: float, accuracy_fn: Callable[[Any], Array]
               ) -> tuple[TrainState, dict[str, Array]]:
    """The supervised warm start (`sft.warm_start` on the host): SFT steps until
    `accuracy_fn(params)` (held-out greedy accuracy, checked every `check_every` steps)
    reaches `target_accuracy`, or `max_steps` (rounded up to whole checks) were taken.

    A `lax.while_loop` over checks: under `vmap` each run stops at its own check (the loop runs
    until the last run stops; finished runs are left as they were). Returns the state and
    sft/steps, sft/eval_greedy_pass@1 (the last check) and sft/loss (the last step's).
    """
    checks = -(-max_steps // check_every)
    step = functools.partial(sft_step, demos=demos, batch_size=batch_size, model_cfg=model_cfg)

    def cond(carry):
        _, i, accuracy, _ = carry
        return (i < checks) & (accuracy < target_accuracy)

    def body(carry):
        state, i, _, _ = carry
        state, m = jax.lax.scan(step, state,
                                jax.random.split(jax.random.fold_in(key, i), check_every))
        return state, i + 1, accuracy_fn(state.policy), m["sft/loss"][-1]

    nan = jnp.full((), jnp.nan, jnp.float32)
    state, i, accuracy, loss = jax.lax.while_loop(
        cond, body, (state, jnp.zeros((), jnp.int32), jnp.full((), -1.0, jnp.float32), nan))
    return state, {"sft/steps": i * check_every, "sft/eval_greedy_pass@1": accuracy,
                   "sft/loss": loss}


# ------------------------------------------------------------------ a run


def train(state: TrainState, key: Array, num_steps: int, *, eval_every: int = 0,
          eval_fn: Callable[[Any], dict[str, Array]] | None = None, **step_kwargs: Any
          ) -> tuple[TrainState, dict[str, Array], dict[str, Array]]:
    """`num_steps` of `rl_step` (`step_kwargs` are its keywords) in a `lax.scan`, with
    `eval_fn(params)` (e.g. `evaluate` with its settings bound) before the first step, every
    `eval_every` steps and after the last.

    Returns the final state, each step metric stacked over steps ([num_steps]) and each
    evaluation metric stacked over evaluations ([num_evals], with eval/step: the RL steps they
    were taken after); the evaluations are {} without `eval_fn`. Pure: jit it, or vmap it.
    """
    def body(state, step_key):
        return rl_step(state, step_key, **step_kwargs)

    keys = jax.random.split(key, num_steps)
    if eval_fn is None:
        state, metrics = jax.lax.scan(body, state, keys)
        return state, metrics, {}

    # Blocks of `every` steps, each after an evaluation, then a last evaluation: written as one
    # scan of blocks + 1 iterations so the evaluation and the step are each compiled once. A
    # step past `num_steps` (the last block's tail, and the extra iteration) is skipped by a
    # `lax.cond` on the step index, which vmap leaves a branch (the index is not batched).
    every = eval_every if 0 < eval_every < num_steps else num_steps
    blocks = -(-num_steps // every)
    padded = jnp.concatenate([keys, jnp.broadcast_to(keys[:1], ((blocks + 1) * every
                                                                 - num_steps, *keys.shape[1:]))])
    _, metric_shapes = jax.eval_shape(body, state, keys[0])

    def maybe_step(state, xs):
        step_key, index = xs

        def skip(state, _):
            return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

        return jax.lax.cond(index < num_steps, body, skip, state, step_key)

    def block(state, xs):
        block_keys, indices = xs
        ev = {**eval_fn(state.policy),
              "eval/step": jnp.minimum(indices[0], num_steps).astype(jnp.int32)}
        state, metrics = jax.lax.scan(maybe_step, state, (block_keys, indices))
        return state, (metrics, ev)

    indices = jnp.arange((blocks + 1) * every).reshape(blocks + 1, every)
    state, (metrics, evals) = jax.lax.scan(
        block, state, (padded.reshape(blocks + 1, every, *keys.shape[1:]), indices))
    metrics = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num_steps], metrics)
    return state, metrics, evals
