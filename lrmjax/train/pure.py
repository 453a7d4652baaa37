"""The device-reward path: one RL step as a pure function of (state, key), for procedural tasks
whose reward is a jittable function of token ids (e.g. `arithmetic_device_reward`).

    data = DeviceData.from_examples(tokenizer, examples, prompt_len, encode_answers)
    step = functools.partial(rl_step, data=data, model_cfg=cfg, algo=algo, sampling=sp,
                             reward_fn=arithmetic_device_reward, stop_ids=(eos,), pad_id=pad)
    state, metrics = jax.jit(step)(state, key)                   # one run
    states, metrics = jax.jit(jax.vmap(step))(states, keys)      # S runs in one program

Sample a batch of prompts from device-resident data -> sample n responses per prompt -> score
them on device -> group advantages -> one `steps.rl_train_step` (on-policy: the sampler's
log-probs are the old policy's). Nothing touches the host, so an experiment can `jit` the step,
`lax.scan` it over steps and `vmap` whole runs over seeds or hyperparameters (the PureJaxRL
trick). The host trainer (`lrmjax.train.rl`) is the general path: text rewards, dynamic
sampling, evaluation, checkpoints, multi-host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrmjax import tokenizers as tok_lib
from lrmjax.models.presets import ModelConfig
from lrmjax.rl import advantages as adv_lib
from lrmjax.sampling import SamplingParams, generate
from lrmjax.train import steps
from lrmjax.train.state import TrainState

Array = jax.Array
# (response_tokens [N, R], response_mask [N, R], answer_tokens [N, A], answer_mask [N, A]) -> [N]
DeviceReward = Callable[[Array, Array, Array, Array], Array]


@flax.struct.dataclass
class DeviceData:
    """A prompt set on device: E examples, prompts left padded to P slots.

    prompt_tokens [E, P] int32, prompt_mask [E, P] bool, answer_tokens [E, A] int32,
    answer_mask [E, A] bool (the device reward's reference answers).
    """

    prompt_tokens: Array
    prompt_mask: Array
    answer_tokens: Array
    answer_mask: Array

    @classmethod
    def from_examples(cls, tokenizer: Any, examples: Sequence[Any], prompt_len: int,
                      encode_answers: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
                      add_bos: bool = True) -> DeviceData:
        """Tokenizes `examples` (their `prompt` and `answer`) on the host, once."""
        ids = [tokenizer.encode(ex.prompt, add_bos=add_bos) for ex in examples]
        longest = max(len(x) for x in ids)
        if longest > prompt_len:
            raise ValueError(f"a prompt has {longest} tokens, more than prompt_len={prompt_len}")
        tokens, mask = tok_lib.left_pad(ids, tokenizer.pad_id, prompt_len)
        answers, answer_mask = encode_answers([ex.answer for ex in examples])
        return cls(jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, bool),
                   jnp.asarray(answers, jnp.int32), jnp.asarray(answer_mask, bool))


def rl_step(state: TrainState, key: Array, *, data: DeviceData, model_cfg: ModelConfig,
            algo: ml_collections.ConfigDict, sampling: SamplingParams, batch_prompts: int,
            reward_fn: DeviceReward, stop_ids: tuple[int, ...], pad_id: int
            ) -> tuple[TrainState, dict[str, Array]]:
    """One on-policy RL step, pure: `batch_prompts` prompts drawn without replacement from
    `data`, `sampling.n` responses each, rewards from `reward_fn`, advantages per
    `algo.adv_estimator`, one optimizer step.

    Supports the critic-free estimators with `kl_mode='none'` (no reference model inside the
    step). Returns the new state and scalar metrics: the update's (verl names, as in
    `steps.rl_train_step`) plus reward/mean, reward/std and response_length/mean.
    """
    if algo.use_critic or algo.kl_mode != "none":
        raise ValueError("rl_step (the device-reward path) supports critic-free algorithms with "
                         f"kl_mode='none'; got use_critic={algo.use_critic}, "
                         f"kl_mode={algo.kl_mode!r}: use lrmjax.train.rl for these")
    n = sampling.n
    data_key, sample_key = jax.random.split(key)
    rows = jax.random.choice(data_key, data.prompt_tokens.shape[0], (batch_prompts,),
                             replace=False)
    prompts, prompt_mask = data.prompt_tokens[rows], data.prompt_mask[rows]
    roll = generate(state.policy, prompts, prompt_mask, sample_key, cfg=model_cfg,
                    sampling=sampling, stop_ids=stop_ids, pad_id=pad_id)
    answers = jnp.repeat(data.answer_tokens[rows], n, axis=0)
    answer_mask = jnp.repeat(data.answer_mask[rows], n, axis=0)
    rewards = reward_fn(roll.response_tokens, roll.response_mask, answers, answer_mask)
    response_mask = roll.response_mask.astype(jnp.float32)
    adv, returns = adv_lib.compute_advantages(algo, rewards=rewards,
                                              response_mask=response_mask, group_size=n)
    tokens, mask = roll.tokens()
    batch = {"tokens": tokens, "mask": mask, "loss_mask": response_mask, "advantages": adv,
             "returns": returns, "sampler_logprobs": roll.logprobs,
             "old_logprobs": roll.logprobs}
    state, metrics = steps.rl_train_step(state, batch, model_cfg=model_cfg, algo=algo,
                                         prompt_len=prompts.shape[1],
                                         temperature=sampling.score_temperature,
                                         on_policy=True)
    metrics = dict(metrics)
    metrics.update({"reward/mean": jnp.mean(rewards), "reward/std": jnp.std(rewards),
                    "response_length/mean": jnp.mean(roll.lengths.astype(jnp.float32))})
    return state, metrics


def train(state: TrainState, key: Array, num_steps: int, **step_kwargs: Any
          ) -> tuple[TrainState, dict[str, Array]]:
    """`num_steps` of `rl_step` in one `lax.scan`: returns the final state and each metric
    stacked over steps ([num_steps]). Pure: jit it, or vmap it over (state, key) pairs."""

    def body(state, step_key):
        return rl_step(state, step_key, **step_kwargs)

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))
