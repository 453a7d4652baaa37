"""Whole sweeps as one program (lrmjax.train.sweep, experiments/sweep.py) and the pure path's
pieces they use (lrmjax.train.pure): the KL / critic update against the host trainer's, the
device evaluation against the host evaluator, the warm start's stopping rule, confidence
intervals, and a vmapped sweep against the same runs one by one."""

from __future__ import annotations

import functools
import importlib
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax import config as config_lib
from lrmjax import tokenizers as tok_lib
from lrmjax.data.tasks import arithmetic
from lrmjax.models import heads, presets, transformer
from lrmjax.rl import algorithms
from lrmjax.sampling import Sampler, SamplingParams, generate
from lrmjax.tokenizers import CharTokenizer
from lrmjax.train import evaluate as eval_lib
from lrmjax.train import pure, steps, sweep, update_batch
from lrmjax.train.state import TrainState, adamw, lr_schedule

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOK = CharTokenizer()
DIGITS = jnp.asarray([TOK.token_id(d) for d in "0123456789"])
CFG = presets.get("tiny", vocab_size=TOK.vocab_size, num_layers=1, hidden_size=32, num_heads=2,
                  num_kv_heads=1, head_dim=16, mlp_dim=64, max_seq_len=16)
P = 8


def has_digit(response_tokens, response_mask, answer_tokens, answer_mask):
    """A device reward a random model earns often: 1 when the response holds a digit."""
    digit = jnp.any(response_tokens[..., None] == DIGITS, axis=-1)
    return jnp.any(digit & response_mask, axis=-1).astype(jnp.float32)


def _examples(n, seed=0):
    return arithmetic.ArithmeticTask(digits=2, reverse_answer=True).sample(
        np.random.default_rng(seed), n)


# ---------------------------------------------------------------- confidence intervals


def test_t_interval_against_textbook_and_scipy():
    from scipy import stats

    # n = 5: s = sqrt(2.5), t_{0.975, 4} = 2.776 (printed t tables).
    mean, lo, hi = sweep.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776 * np.sqrt(2.5) / np.sqrt(5)
    assert mean == 3.0
    assert lo == pytest.approx(3.0 - half, abs=1e-3) and hi == pytest.approx(3.0 + half, abs=1e-3)
    # n = 2: t_{0.975, 1} = 12.706, s / sqrt(2) = 0.1.
    _, lo, hi = sweep.t_interval([0.2, 0.4])
    assert hi - 0.3 == pytest.approx(1.2706, abs=1e-3) and 0.3 - lo == pytest.approx(1.2706,
                                                                                       abs=1e-3)
    x = np.random.default_rng(0).normal(size=8)
    want = stats.t.interval(0.9, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    np.testing.assert_allclose(sweep.t_interval(x, 0.9)[1:], want, rtol=1e-10)
    assert np.isnan(sweep.t_interval([0.5])[1])


# ---------------------------------------------------------------- the update vs the host's


def _rollout(params, n=4, prompts=4):
    tokens, mask = tok_lib.left_pad([TOK.encode(ex.prompt, add_bos=True)
                                     for ex in _examples(prompts)], TOK.pad_id, P)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=5, n=n)
    roll = generate(params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(3), cfg=CFG,
                    sampling=sampling, stop_ids=(TOK.eos_id,), pad_id=TOK.pad_id)
    rewards = jnp.asarray(np.random.default_rng(1).integers(0, 2, prompts * n), jnp.float32)
    return roll, rewards, sampling


def _np_logprobs(params, tokens, mask):
    """log p(response token), from one full forward and a float64 log-softmax."""
    logits, _ = transformer.Transformer(CFG).apply(
        {"params": params}, tokens, transformer.positions_from_mask(mask), mask)
    x = np.asarray(logits, np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tok = np.asarray(tokens)
    return np.take_along_axis(logp[:, P - 1:-1], tok[:, P:, None], axis=-1)[..., 0]


@pytest.mark.parametrize("name, overrides, epochs, minibatches", [
    ("grpo", dict(kl_mode="loss", kl_estimator="k3", kl_coef=0.1, kl_target=0.01), 1, 1),
    ("rloo", dict(kl_mode="reward", kl_estimator="k1", kl_coef=0.1), 1, 1),
    ("ppo", dict(kl_coef=0.1), 2, 1),  # critic (GAE), KL in the reward, two epochs
    ("ppo", dict(kl_coef=0.1), 2, 2),  # ... of two minibatches each
])
def test_update_with_reference_and_critic_equals_the_host_trainers(name, overrides, epochs,
                                                                    minibatches):
    algo = algorithms.get(name, **overrides)
    params = transformer.init_params(CFG, jax.random.key(0))
    ref = transformer.init_params(CFG, jax.random.key(1))
    roll, rewards, sampling = _rollout(params)
    tx = adamw(lr_schedule(1e-2, 0, 10), grad_clip=1.0)
    critic = {}
    if algo.use_critic:
        critic = dict(critic_params=heads.init_from_policy(CFG, params, jax.random.key(7)),
                      critic_tx=adamw(lr_schedule(1e-2, 0, 10)))
    state = TrainState.create(params, tx, kl_coef=algo.kl_coef, **critic)

    key = jax.random.key(0)
    got, got_m = jax.jit(functools.partial(
        pure.update_on_rollout, model_cfg=CFG, algo=algo, sampling=sampling, ppo_epochs=epochs,
        minibatches=minibatches))(state, key, roll, rewards, ref_params=ref)

    # The host trainer: update_batch.build's passes, then one train step per epoch.
    cfg = config_lib.base_config(name)
    cfg.rl, cfg.sampling.n, cfg.train.ppo_epochs = algo, sampling.n, epochs
    cfg.train.minibatches = minibatches
    passes = update_batch.make_passes(cfg, CFG, P, 1.0, logprob_group=sampling.n)
    tokens, mask = roll.tokens()
    rows = {"tokens": tokens, "mask": mask, "loss_mask": roll.response_mask.astype(jnp.float32),
            "sampler_logprobs": roll.logprobs, "rewards": rewards}
    batch = update_batch.build(passes, state, ref, rows)
    want = state
    num = tokens.shape[0]
    host_step = jax.jit(functools.partial(
        steps.rl_train_step, model_cfg=CFG, algo=algo, prompt_len=P, temperature=1.0,
        on_policy=passes.on_policy, group_size=sampling.n if minibatches == 1 else 1))
    for epoch_key in jax.random.split(key, epochs):
        # rl.update's minibatches (sorted rows of a shuffle), with the pure path's shuffle.
        order = (np.asarray(jax.random.permutation(epoch_key, num)) if minibatches > 1
                 else np.arange(num))
        for rows in np.sort(order.reshape(minibatches, -1), axis=1):
            mb = batch if minibatches == 1 else update_batch.take_rows(batch, jnp.asarray(rows))
            want, want_m = host_step(want, mb)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    if algo.use_critic:
        for a, b in zip(jax.tree.leaves(got.critic_params), jax.tree.leaves(want.critic_params),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert not np.allclose(np.asarray(got.params["embed"]["embedding"]),
                           np.asarray(params["embed"]["embedding"]))
    if epochs == 1:
        for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm"):
            assert float(got_m[key]) == pytest.approx(float(want_m[key]), rel=1e-4, abs=1e-6)

    if algo.kl_mode == "loss":
        # The KL term against numpy: k3 = e^x - 1 - x, x = log p_ref - log p, per token, then
        # GRPO's seq-mean-token-mean.
        m = np.asarray(roll.response_mask, bool)
        x = _np_logprobs(ref, tokens, mask) - _np_logprobs(params, tokens, mask)
        k3 = np.where(m, np.expm1(x) - x, 0.0)
        want_kl = np.mean(k3.sum(1) / m.sum(1))
        assert float(got_m["actor/kl_loss"]) == pytest.approx(want_kl, rel=1e-4)
        assert want_kl > 1e-3
        # The adaptive coefficient (Ziegler et al. 2019): beta (1 + clip(KL / target - 1,
        # +-0.2) N / horizon), N = 16 rows, as the host's loop applies it after the update.
        error = np.clip(want_kl / algo.kl_target - 1, -0.2, 0.2)
        assert float(got.kl_coef) == pytest.approx(0.1 * (1 + error * 16 / algo.kl_horizon),
                                                   rel=1e-6)
        assert float(got.kl_coef) != 0.1


# ---------------------------------------------------------------- evaluation vs the host's


def test_device_evaluation_equals_the_host_evaluator():
    params = transformer.init_params(CFG, jax.random.key(2))
    examples = _examples(12, seed=5)
    ids = [TOK.encode(ex.prompt, add_bos=True) for ex in examples]
    batch, k, R = 8, 3, 5

    def encode(chunk):
        return tok_lib.left_pad([TOK.encode(ex.prompt, add_bos=True) for ex in chunk],
                                TOK.pad_id, P)

    def decode(roll):
        return [TOK.decode(t[m]) for t, m in zip(np.asarray(roll.response_tokens),
                                                 np.asarray(roll.response_mask), strict=True)]

    def score(chunk, texts):
        return [float(any(c.isdigit() for c in t)) for t in texts]

    sampler = Sampler(CFG, pad_id=TOK.pad_id, stop_ids=(TOK.eos_id,), prompt_buckets=(P,))
    key = jax.random.key(9)
    host = eval_lib.evaluate(eval_lib.sampler_play(sampler, encode, decode), params, examples,
                             score, key, max_new_tokens=R, k=k, temperature=1.0,
                             batch_size=batch)
    data = pure.DeviceData.from_examples(TOK, examples, P, lambda a: (np.zeros((len(a), 1)),
                                                                      np.ones((len(a), 1))))
    assert len(ids) % batch  # the last chunk is padded
    device = jax.jit(functools.partial(
        pure.evaluate, model_cfg=CFG, max_new_tokens=R, k=k, temperature=1.0,
        batch_size=batch, reward_fn=has_digit, stop_ids=(TOK.eos_id,), pad_id=TOK.pad_id)
    )(params, key, data=data.padded(batch))
    assert 0 < host["eval/greedy_pass@1"] < 1 and 0 < host["eval/pass@1"] < 1
    for name in ("greedy_pass@1", "mean_response_length", "pass@1", f"pass@{k}"):
        assert float(device[f"eval/{name}"]) == pytest.approx(host[f"eval/{name}"], abs=1e-6), name


# ---------------------------------------------------------------- the warm start


@pytest.mark.parametrize("target, checks", [(0.4, 1), (0.6, 3)])
def test_warm_start_stops_at_the_first_check_reaching_the_target(target, checks):
    examples = _examples(32)
    cfg = config_lib.from_file(str(ROOT / "configs" / "arith_grpo.py"))
    demos = pure.DeviceDemos(**{k: jnp.asarray(v) for k, v in
                                _demos(cfg, examples).items()})
    state = TrainState.create(transformer.init_params(CFG, jax.random.key(0)),
                              adamw(lr_schedule(1e-2, 0, 10)))
    out, summary = jax.jit(functools.partial(
        pure.warm_start, demos=demos, batch_size=8, model_cfg=CFG, max_steps=5, check_every=2,
        target_accuracy=target, accuracy_fn=lambda p: jnp.float32(0.5)))(state, jax.random.key(0))
    assert int(summary["sft/steps"]) == 2 * checks == int(out.step)
    assert float(summary["sft/eval_greedy_pass@1"]) == 0.5
    assert np.isfinite(float(summary["sft/loss"]))


def _demos(cfg, examples):
    from lrmjax.train import inputs

    cfg.sampling.max_new_tokens = CFG.max_seq_len - P
    return inputs.demonstration_arrays(cfg, TOK, P, examples)


# ---------------------------------------------------------------- sweeps


def _sweep_config():
    c = config_lib.from_file(str(ROOT / "configs" / "arith_grpo.py"), "runlocal")
    c.model.overrides.update(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                             head_dim=16, mlp_dim=64, max_seq_len=16)
    c.data.train_size = 200
    c.data.task_kwargs.digits = 2
    c.data.task_kwargs.min_digits = 2
    c.sampling.max_prompt_len = 8
    c.sampling.max_new_tokens = 4
    c.sampling.n = 2
    c.train.batch_prompts = 4
    c.train.steps = 3
    c.rl.kl_mode = "loss"
    c.rl.kl_coef = 0.05
    c.sft.steps = 4
    c.sft.eval_every = 2
    c.sft.batch_size = 8
    c.sft.eval_size = 6
    c.sft.target_accuracy = 1.0
    c.eval.size = 6
    c.eval.batch_size = 4
    c.eval.k = 2
    c.eval.every = 2
    return c


def test_a_config_without_a_device_reward_is_refused_naming_it():
    cfg = config_lib.from_file(str(ROOT / "configs" / "countdown_grpo.py"))
    with pytest.raises(ValueError, match=r"countdown_grpo.*data.task='countdown' has no device"):
        sweep.Program(cfg, "countdown_grpo")
    cfg = config_lib.from_file(str(ROOT / "configs" / "arith_dapo.py"))
    with pytest.raises(ValueError, match="dynamic_sampling"):
        sweep.check(cfg, "arith_dapo")


def test_vmapped_runs_over_seeds_learning_rates_and_clip_ratios_equal_the_runs_one_by_one():
    """pure.train with the sweep's traced hyperparameters (the lr in the optimizer state, a
    clip ratio as a knob) and evaluations inside the scan: 2 seeds x 2 learning rates."""
    examples = _examples(64)
    data = pure.DeviceData.from_examples(TOK, examples, P, lambda a: (np.zeros((len(a), 1)),
                                                                      np.ones((len(a), 1))))
    sampling = SamplingParams(temperature=1.0, max_new_tokens=4, n=2)
    common = dict(model_cfg=CFG, stop_ids=(TOK.eos_id,), pad_id=TOK.pad_id, reward_fn=has_digit)
    evaluate = functools.partial(pure.evaluate, data=data.padded(8), max_new_tokens=4, k=0,
                                 temperature=1.0, batch_size=8, **common)
    tx = sweep.optimizer(1.0, warmup_steps=0, total_steps=3, grad_clip=1.0)

    def run(seed, lr, clip):
        state = TrainState.create(transformer.init_params(CFG, jax.random.key(seed)), tx)
        state = state.replace(opt_state=sweep.set_learning_rate(state.opt_state, lr))
        _, metrics, evals = pure.train(
            state, jax.random.key(seed + 10), 3, eval_every=2,
            eval_fn=lambda p: evaluate(p, jax.random.key(0)), data=data,
            algo=algorithms.get("grpo", kl_mode="none"), sampling=sampling, batch_prompts=4,
            knobs={"clip_ratio_high": clip}, **common)
        return metrics, evals

    seeds = jnp.asarray([0, 1, 0, 1])
    lrs = jnp.asarray([1e-3, 1e-3, 3e-2, 3e-2])
    clips = jnp.asarray([0.2, 0.2, 0.3, 0.3])
    together = jax.jit(jax.vmap(run))(seeds, lrs, clips)
    one = jax.jit(run)
    for i in range(4):
        alone = one(seeds[i], lrs[i], clips[i])
        for part in range(2):
            for name, value in alone[part].items():
                np.testing.assert_allclose(np.asarray(together[part][name][i]), value,
                                           rtol=1e-4, atol=1e-5, err_msg=f"{name} run {i}")
    train, evals = together
    assert train["reward/mean"].mean() > 0
    for a, b in ((0, 1), (0, 2)):  # seeds differ, and learning rates
        assert not np.allclose(train["actor/grad_norm"][a, 1:], train["actor/grad_norm"][b, 1:],
                               rtol=1e-3, atol=0)
    assert evals["eval/step"][0].tolist() == [0, 2, 3]


@pytest.mark.slow
def test_a_vmapped_sweep_equals_the_same_runs_one_by_one(monkeypatch):
    monkeypatch.setitem(sweep.DEVICE_REWARDS, "arithmetic",
                        sweep.DeviceRewardSpec(has_digit, sweep.DEVICE_REWARDS[
                            "arithmetic"].encode_answers))
    program = sweep.Program(_sweep_config(), "test")
    runs = [(seed, lr) for lr in (1e-3, 1e-2) for seed in (0, 1)]
    seeds, lrs = [s for s, _ in runs], {"optim.lr": [lr for _, lr in runs]}
    together = program.run_many(seeds, lrs)
    alone = program.run_many(seeds, lrs, vmapped=False)  # one compiled run, called 4 times
    for part in ("train", "eval", "sft"):
        assert alone[part], part
        for name, value in alone[part].items():
            assert value.shape[0] == 4, name
            np.testing.assert_allclose(together[part][name], value, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{part} {name}")
    train = together["train"]
    assert train["reward/mean"].mean() > 0 and train["actor/kl_loss"][:, -1].min() > 0
    # The runs differ: seeds (run 0 vs 1) and learning rates (run 0 vs 2, same seed).
    for a, b in ((0, 1), (0, 2)):
        assert not np.allclose(train["actor/grad_norm"][a, 1:], train["actor/grad_norm"][b, 1:],
                               rtol=1e-3, atol=0)
    assert together["eval"]["eval/step"][0].tolist() == [0, 2, 3]
    assert together["sft"]["sft/steps"].tolist() == [4] * 4


def _script():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        return importlib.import_module("sweep")
    finally:
        sys.path.remove(str(ROOT / "experiments"))


def test_the_command_lines_seeds_and_grid():
    script = _script()
    assert script.parse_seeds("0-3") == [0, 1, 2, 3]
    assert script.parse_seeds("1-2,7") == [1, 2, 7]
    assert script.parse_grid(["optim.lr=1e-4,3e-4", "rl.adv_estimator=grpo,rloo"]) == {
        "optim.lr": [1e-4, 3e-4], "rl.adv_estimator": ["grpo", "rloo"]}
    with pytest.raises(ValueError, match="KEY=V1"):
        script.parse_grid(["optim.lr"])


def test_drawn_rows_are_distinct_and_uniform():
    draw = jax.jit(jax.vmap(lambda k: pure.draw_rows(k, 10, 3)))
    rows = np.asarray(draw(jax.random.split(jax.random.key(0), 30_000)))
    assert rows.min() >= 0 and rows.max() < 10
    assert all(len(set(r)) == 3 for r in rows[:2000])
    # Each row is in a uniform 3-subset of 10 with probability 3/10 (binomial sd ~0.0026).
    np.testing.assert_allclose(np.bincount(rows.ravel(), minlength=10) / len(rows), 0.3,
                               atol=0.012)
    # And pairs: every pair of rows appears together with probability C(8,1)/C(10,3) = 1/15.
    together = np.mean([(0 in r) and (9 in r) for r in rows])
    assert together == pytest.approx(1 / 15, abs=0.006)
    with pytest.raises(ValueError, match="4 distinct rows of 3"):
        pure.draw_rows(jax.random.key(0), 3, 4)


@pytest.mark.slow
def test_the_command_writes_a_table_curves_and_runs(tmp_path):
    import json
    import subprocess

    shrink = ["model.overrides.num_layers=1", "model.overrides.hidden_size=32",
              "model.overrides.mlp_dim=64", "data.train_size=200", "eval.size=8",
              "eval.batch_size=8", "train.steps=3", "sft.steps=2", "sft.eval_every=2"]
    cmd = [sys.executable, str(ROOT / "experiments" / "sweep.py"), "--config",
           str(ROOT / "configs" / "arith_grpo.py") + ":runlocal", "--seeds", "0-1",
           "--grid", "optim.lr=1e-4,1e-3",
           "--grid", "rl.loss_agg_mode=token-mean,seq-mean-token-mean",
           "--out", str(tmp_path)] + [a for kv in shrink for a in ("--set", kv)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    table = (tmp_path / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| 0.00")]
    assert len(rows) == 4, table  # 2 programs (aggregations) x 2 learning rates
    assert "Student's t" in table
    assert (tmp_path / "curves.png").stat().st_size > 1000
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert [len(p["runs"]) for p in runs] == [2] * 4
    assert len(runs[0]["curves"]["train"]["reward/mean"][0]) == 3
