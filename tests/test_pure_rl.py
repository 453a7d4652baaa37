"""The device-reward path (lrmjax.train.pure): a whole RL run as one jitted program, and a vmap
of runs over seeds that equals the runs done one by one."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax.data.tasks import arithmetic, arithmetic_device
from lrmjax.models import presets, transformer
from lrmjax.rl import algorithms
from lrmjax.sampling import SamplingParams
from lrmjax.tokenizers import CharTokenizer
from lrmjax.train import pure
from lrmjax.train.state import TrainState, adamw, lr_schedule

TOK = CharTokenizer()
SEVEN = TOK.token_id("7")
CFG = presets.get("tiny", vocab_size=TOK.vocab_size, num_layers=1, hidden_size=64, num_heads=2,
                  num_kv_heads=1, head_dim=32, mlp_dim=128, max_seq_len=32)


def starts_with_7(response_tokens, response_mask, answer_tokens, answer_mask):
    """A trivially learnable device reward: 1 when the first response token is '7'."""
    return ((response_tokens[:, 0] == SEVEN) & response_mask[:, 0]).astype(jnp.float32)


def _setup(reward_fn, lr=3e-3):
    task = arithmetic.ArithmeticTask(digits=2, reverse_answer=True)
    examples = task.sample(np.random.default_rng(0), 64)
    data = pure.DeviceData.from_examples(TOK, examples, 8, arithmetic_device.encode_answers)
    kwargs = dict(data=data, model_cfg=CFG, algo=algorithms.get("grpo", kl_mode="none",
                                                                kl_coef=0.0),
                  sampling=SamplingParams(temperature=1.0, max_new_tokens=4, n=4),
                  batch_prompts=8, reward_fn=reward_fn, stop_ids=(TOK.eos_id,),
                  pad_id=TOK.pad_id)
    tx = adamw(lr_schedule(lr, 0, 100), grad_clip=1.0)

    def init(seed):
        return TrainState.create(transformer.init_params(CFG, jax.random.key(seed)), tx)

    return kwargs, init


def test_a_jitted_run_learns_the_trivial_reward():
    kwargs, init = _setup(starts_with_7)
    run = jax.jit(functools.partial(pure.train, num_steps=60, **kwargs))
    _, metrics, _ = run(init(0), jax.random.key(1))
    rewards = np.asarray(metrics["reward/mean"])
    assert rewards.shape == (60,)
    assert rewards[:3].mean() < 0.5
    assert rewards[-5:].mean() > 0.9, rewards


def test_vmap_over_seeds_equals_the_runs_one_by_one():
    kwargs, init = _setup(arithmetic_device.arithmetic_device_reward)
    run = functools.partial(pure.train, num_steps=3, **kwargs)
    seeds = [0, 1, 2]
    keys = jnp.stack([jax.random.key(10 + s) for s in seeds])
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(s) for s in seeds])
    _, together, _ = jax.jit(jax.vmap(run))(states, keys)
    for i, s in enumerate(seeds):
        _, alone, _ = jax.jit(run)(init(s), jax.random.key(10 + s))
        for name in ("reward/mean", "actor/pg_loss", "actor/grad_norm", "actor/entropy"):
            np.testing.assert_allclose(np.asarray(together[name][i]), np.asarray(alone[name]),
                                       rtol=1e-4, atol=1e-5, err_msg=name)
    # The seeds are different runs (the comparison above is not trivially true).
    assert not np.allclose(np.asarray(together["actor/entropy"][0]),
                           np.asarray(together["actor/entropy"][1]))


def test_device_reward_agrees_with_the_host_verifier():
    """The rewards rl_step trains on are the ones the task's text verifier gives."""
    task = arithmetic.ArithmeticTask(digits=2, reverse_answer=True)
    examples = task.sample(np.random.default_rng(3), 6)
    variants = [lambda a: a, lambda a: a + "1", lambda a: " " + a + " ", lambda a: "",
                lambda a: "12", lambda a: a[::-1]]
    completions = [f(ex.answer) for f, ex in zip(variants, examples, strict=True)]
    ids = [TOK.encode(c) + [TOK.eos_id] for c in completions]
    tokens, mask = np.zeros((6, 6), np.int32), np.zeros((6, 6), bool)
    for i, seq in enumerate(ids):
        tokens[i, :len(seq)], mask[i, :len(seq)] = seq, True
    answers, answer_mask = arithmetic_device.encode_answers([ex.answer for ex in examples])
    device = arithmetic_device.arithmetic_device_reward(tokens, mask, answers, answer_mask)
    host = [task.verify(ex, c) for ex, c in zip(examples, completions, strict=True)]
    np.testing.assert_array_equal(np.asarray(device), host)


def test_a_kl_mode_without_reference_params_and_host_only_knobs_are_refused():
    kwargs, init = _setup(starts_with_7)
    kwargs["algo"] = algorithms.get("grpo", kl_mode="loss", kl_coef=0.01)
    with pytest.raises(ValueError, match="reference params"):
        pure.rl_step(init(0), jax.random.key(0), **kwargs)
    kwargs["algo"] = algorithms.get("dapo")
    with pytest.raises(ValueError, match="dynamic_sampling"):
        pure.rl_step(init(0), jax.random.key(0), **kwargs)


def test_random_rewards_ignore_the_responses_and_log_the_verifier():
    """reward.random_p: Bernoulli(p) rewards whatever the responses say; the verifier's mean
    is still logged (reward/verified_mean)."""
    kwargs, init = _setup(starts_with_7)
    run = jax.jit(functools.partial(pure.train, num_steps=30, random_reward=0.25, **kwargs))
    _, metrics, _ = run(init(0), jax.random.key(1))
    rewards = np.asarray(metrics["reward/mean"])
    # 30 steps x 32 responses of Bernoulli(0.25): sd of the mean 0.014.
    assert abs(rewards.mean() - 0.25) < 0.05
    verified = np.asarray(metrics["reward/verified_mean"])
    assert verified.shape == (30,) and not np.allclose(verified, rewards)
    _, plain, _ = jax.jit(functools.partial(pure.train, num_steps=2, **kwargs))(
        init(0), jax.random.key(1))
    assert "reward/verified_mean" not in plain


def test_random_p_is_validated_and_refused_by_the_host_trainer(tmp_path):
    from lrmjax import config as config_lib
    from lrmjax.train import rl

    cfg = config_lib.base_config("grpo")
    cfg.reward.random_p = 1.5
    with pytest.raises(ValueError, match="reward.random_p"):
        config_lib.validate(cfg)
    cfg.reward.random_p = 0.5
    with pytest.raises(ValueError, match="reward.random_p"):
        rl.train(cfg, str(tmp_path))
