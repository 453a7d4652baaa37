"""End-to-end trainer tests on a 1-layer model (conftest fakes 8 CPU devices)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import read_metrics, small_config

from lrmjax.rl import algorithms
from lrmjax.train import compilation, inputs, rl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("algorithm", sorted(algorithms.PRESETS))
def test_every_preset_runs_two_steps(algorithm, tmp_path):
    cfg = small_config(algorithm)
    if cfg.rl.overlong_buffer_len:
        cfg.rl.overlong_buffer_len = 2
    if algorithm in ("ppo", "vc_ppo", "vapo"):
        cfg.train.minibatches = 2
    with compilation.CompileCounter() as compiles:
        final = rl.train(cfg, str(tmp_path))
    # Compiled once, before the loop: the batch spec matches what the loop builds for every
    # preset (critic, KL in the reward or the loss, minibatches, greedy baseline).
    assert compiles.names["jit(rl_train_step)"] == 1
    compiled = read_metrics(str(tmp_path), phase="compile", keep_perf=True)
    assert len(compiled) == 1 and compiled[0]["perf/train_step_peak_mib"] > 0
    rows = read_metrics(str(tmp_path), keep_perf=True)
    assert rows[0]["perf/compiles"] > 0 and rows[1]["perf/compiles"] == 0  # steady state
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(r["actor/pg_loss"]), r
        assert r["actor/skipped"] == 0.0
        assert -1.0 <= r["reward/mean"] <= 1.0  # the overlong penalty may go below 0
    assert "eval/greedy_pass@1" in final
    if algorithms.get(algorithm).use_critic:
        assert "critic/vf_loss" in rows[0]
    if algorithms.get(algorithm).kl_mode == "loss":
        assert "actor/kl_loss" in rows[0]


def test_loop_refuses_implicit_transfers(tmp_path, monkeypatch):
    """The RL loop runs under jax.transfer_guard("disallow"): a stage that copies a host
    value to the devices (or back) without saying so fails instead of syncing every step."""
    from lrmjax.train import rollouts

    metrics = rollouts.rollout_metrics
    monkeypatch.setattr(rollouts, "rollout_metrics", lambda batch: {
        **metrics(batch), "implicit": float(jnp.asarray(batch.rewards).sum())})
    with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
        rl.train(small_config("grpo", steps=1), str(tmp_path))


def test_same_seed_same_metrics(tmp_path):
    cfg = small_config("grpo", steps=3)
    cfg.reward.fns = {"test_starts_with_7": 1.0}  # rewards that vary, so updates do something
    rl.train(cfg, str(tmp_path / "a"))
    rl.train(cfg, str(tmp_path / "b"))
    a, b = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
    assert a == b
    cfg.seed = 1
    rl.train(cfg, str(tmp_path / "c"))
    assert read_metrics(str(tmp_path / "c")) != a


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_trivial_reward_is_learned(algorithm, tmp_path):
    """Reward 1 for answers that start with '7' (chance is about 1/16 at first)."""
    cfg = small_config(algorithm, steps=60, kl_mode="none", kl_coef=0.0)
    cfg.reward.fns = {"test_starts_with_7": 1.0}
    cfg.optim.lr = 3e-3
    cfg.train.batch_prompts = 8
    cfg.optim.critic_lr = 3e-3
    cfg.eval.size = 8
    cfg.eval.k = 0
    rl.train(cfg, str(tmp_path))
    rewards = [r["reward/mean"] for r in read_metrics(str(tmp_path))]
    assert np.mean(rewards[:3]) < 0.5
    assert np.mean(rewards[-5:]) > 0.9, rewards


def test_code_reward_gets_the_sandbox_option_and_refuses_to_start_without_isolation(
        monkeypatch):
    from lrmjax.rewards import sandbox

    monkeypatch.setattr(sandbox, "probe_isolation", lambda preferred=None: sandbox.Isolation(
        sandbox.NONE, sys.executable, "not root (simulated)"))
    monkeypatch.setattr(sandbox, "_reported", set())
    cfg = small_config("grpo")
    cfg.reward.fns = {"code": 1.0}
    with pytest.raises(RuntimeError,
                       match=r"not root \(simulated\).*reward\.sandbox\.allow_unisolated=True"):
        inputs.outcome_reward(cfg)
    cfg.reward.sandbox.allow_unisolated = True
    assert inputs.outcome_reward(cfg).keywords == {"allow_unisolated": True}
    cfg.reward.fns = {"code": 1.0, "format": 0.5}
    res = inputs.outcome_reward(cfg)(["p"], ["```python\nx = 1\n```"], [{"tests": ["assert x"]}])
    assert res.components["code"] == [1.0] and res.components["code/sandbox_isolated"] == [0.0]


def test_custom_reward_weighted_and_combined_scores_in_workers():
    """`reward.fns` weighting a reward registered by a module the config imports (here
    train_helpers) and combining it: the workers import that module, so no row errors."""
    from lrmjax.rewards import RewardPool

    cfg = small_config("grpo")
    cfg.reward.fns = {"test_starts_with_7": 2.0, "format": 0.5}
    with RewardPool(inputs.outcome_reward(cfg), num_workers=1, timeout_s=120.0,
                    spares=0) as pool:
        scores, metrics, _ = pool.score(["p", "p"], ["7", "8"], [{}, {}])
    assert metrics["reward/errors"] == 0.0
    np.testing.assert_array_equal(scores, [2.0, 0.0])


def test_inputs_close_stops_every_reward_worker():
    from lrmjax.rewards import RewardPool, process

    pool = RewardPool("format", num_workers=1, timeout_s=30.0)
    step_pool = RewardPool(process.get_process("arithmetic_digits"), num_workers=1, spares=0)
    inp = inputs.Inputs(**{f.name: None for f in dataclasses.fields(inputs.Inputs)}
                        | {"pool": pool, "process_pools": {"arithmetic_digits": (step_pool, 1.0)}})
    pool.score(["p"], ["x"], [{}])  # started and ready
    pids = [w.proc.pid for p in (pool, step_pool) for w in p._workers + p._crew.spares]
    assert len(pids) == 3  # two workers and a spare
    inp.close()
    inp.close()  # idempotent
    assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []  # exited and reaped
    with pytest.raises(RuntimeError, match="closed"):
        pool.score(["p"], ["x"], [{}])


def test_sandbox_isolation_reaches_metrics(tmp_path, monkeypatch):
    """The code reward's `sandbox_isolated` component is logged as reward/sandbox_isolated."""
    from lrmjax.rewards import sandbox

    # No data source carries unit tests yet: give every row a trivial one.
    metadata = inputs.Inputs.reward_metadata
    monkeypatch.setattr(inputs.Inputs, "reward_metadata", lambda self, *a, **k: [
        {**row, "tests": ["assert True"]} for row in metadata(self, *a, **k)])
    cfg = small_config("grpo", steps=1)
    cfg.reward.fns = {"code": 1.0}
    cfg.reward.sandbox.allow_unisolated = True  # so that the test runs where isolation is missing
    cfg.eval.size, cfg.eval.k = 4, 0
    rl.train(cfg, str(tmp_path))
    [row] = read_metrics(str(tmp_path))
    assert row["reward/errors"] == 0.0
    assert row["reward/sandbox_isolated"] == float(sandbox.probe_isolation().isolated)


def test_dynamic_sampling_keeps_batch_full(tmp_path):
    cfg = small_config("dapo", steps=3, overlong_buffer_len=2)
    rl.train(cfg, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    for r in rows:
        assert "filter_groups/dropped" in r
        assert r["filter_groups/dropped"] >= 0
        # Every update saw batch_prompts groups: kept ones first, refilled if short.
        assert r["batch/groups"] == cfg.train.batch_prompts


def test_nonfinite_updates_are_skipped_then_stop(tmp_path):
    cfg = small_config("grpo", steps=20, kl_mode="none", kl_coef=0.0)
    cfg.reward.fns = {"test_starts_with_7": 1.0}
    cfg.optim.lr = 1e30  # the first update blows the params up; later losses are not finite
    cfg.optim.grad_clip = 0.0
    cfg.train.max_nonfinite = 3
    with pytest.raises(rl.NonFiniteError, match="consecutive updates"):
        rl.train(cfg, str(tmp_path))
    rows = read_metrics(str(tmp_path))
    assert rows[-1]["actor/skipped"] == 1.0
    assert len(rows) < 20


def _run_cli(workdir: str, steps: int) -> subprocess.Popen:
    env = dict(os.environ, LRMJAX_TEST_STEPS=str(steps), JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, "-m", "lrmjax.main", f"--config={REPO}/tests/resume_config.py",
         f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)


def test_resume_after_sigkill_is_exact(tmp_path):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    p = _run_cli(straight, 6)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]

    p = _run_cli(killed, 6)
    # Kill -9 once step 4 has been logged: checkpoint 3 is complete, 4-6 are not.
    deadline = time.time() + 600
    while time.time() < deadline:
        if os.path.exists(f"{killed}/metrics.jsonl") and any(
                r["step"] >= 4 for r in read_metrics(killed)):
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # It really died mid-run: step 6 was never logged, and only checkpoint 3 exists.
    assert max(r["step"] for r in read_metrics(killed)) < 6
    assert sorted(os.listdir(f"{killed}/checkpoints")) == ["3"]
    # A save cut off mid-write leaves only a temporary directory: it must be ignored.
    os.makedirs(f"{killed}/checkpoints/5.orbax-checkpoint-tmp-0/state", exist_ok=True)
    p = _run_cli(killed, 6)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]

    want = read_metrics(straight)
    got = read_metrics(killed)
    # The killed run logged some steps twice (before the kill and after the resume): the
    # last row of each step is the one the finished run stands by.
    last = {r["step"]: r for r in got}
    assert sorted(last) == [1, 2, 3, 4, 5, 6]
    for r in want:
        assert last[r["step"]] == r, r["step"]


def test_train_step_skips_nonfinite_update():
    from lrmjax.models import presets, transformer
    from lrmjax.train import state as state_lib
    from lrmjax.train import steps

    cfg = presets.get("tiny", num_layers=1, vocab_size=16, max_seq_len=16)
    params = transformer.init_params(cfg, jax.random.key(0))
    state = state_lib.TrainState.create(params, state_lib.adamw(lambda _: 1e-2))
    n, p_len, r_len = 4, 4, 4
    batch = {"tokens": jnp.ones((n, p_len + r_len), jnp.int32),
             "mask": jnp.ones((n, p_len + r_len), bool),
             "loss_mask": jnp.ones((n, r_len)), "old_logprobs": jnp.zeros((n, r_len)),
             "advantages": jnp.full((n, r_len), jnp.nan)}
    algo = algorithms.get("grpo", kl_mode="none", kl_coef=0.0)
    new, metrics = steps.rl_train_step(state, batch, model_cfg=cfg, algo=algo,
                                       prompt_len=p_len, temperature=1.0)
    assert float(metrics["actor/skipped"]) == 1.0
    assert int(new.nonfinite) == 1 and int(new.step) == 0
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unsupervised_reward_gets_token_statistics(tmp_path):
    """self_certainty needs per-token statistics from the policy: the trainer supplies them."""
    cfg = small_config("grpo", steps=1, kl_mode="none", kl_coef=0.0)
    cfg.reward.fns = {"self_certainty": 1.0}
    rl.train(cfg, str(tmp_path))
    row = read_metrics(str(tmp_path))[0]
    assert row["reward/errors"] == 0.0
    # KL(U || p) >= 0 and differs between responses.
    assert row["reward/min"] >= 0.0 and row["reward/std"] > 0.0


@pytest.mark.parametrize("control", ["zero_lr", "shuffled_rewards"])
def test_controls_do_not_learn(control, tmp_path):
    """The same run as test_trivial_reward_is_learned[grpo], with learning disabled (lr 0) or
    the rewards permuted across the batch: the reward must stay near chance."""
    cfg = small_config("grpo", steps=60, kl_mode="none", kl_coef=0.0)
    cfg.reward.fns = {"test_starts_with_7": 1.0}
    cfg.optim.lr = 0.0 if control == "zero_lr" else 3e-3
    cfg.reward.shuffle_control = control == "shuffled_rewards"
    cfg.train.batch_prompts = 8
    cfg.eval.size = 8
    cfg.eval.k = 0
    rl.train(cfg, str(tmp_path))
    rewards = [r["reward/mean"] for r in read_metrics(str(tmp_path))]
    assert np.mean(rewards[-10:]) < 0.3, rewards


def test_task_mixture_trains_and_evaluates_per_label(tmp_path):
    from lrmjax.train import inputs as inputs_lib

    cfg = small_config("grpo", steps=2)
    cfg.data.source = "task_mixture"
    cfg.data.mixture = {
        "add": {"task": "arithmetic", "weight": 3.0,
                "kwargs": {"digits": 2, "reverse_answer": True}},
        "cd": {"task": "countdown", "kwargs": {"num_numbers": 2, "template": "short"}}}
    cfg.sampling.max_prompt_len = 16
    cfg.data.train_size = 400
    cfg.eval.size = 8
    train, held_out, _ = inputs_lib._mixture_examples(cfg)
    # Weights 3:1 -> 6 + 2 held-out problems and 300 + 100 train problems (minus overlaps).
    assert sorted(ex.metadata["subset"] for ex in held_out) == ["add"] * 6 + ["cd"] * 2
    assert {ex.metadata["task"] for ex in held_out} == {"arithmetic", "countdown"}
    subsets = [ex.metadata["subset"] for ex in train]
    assert 290 <= subsets.count("add") <= 300 and 90 <= subsets.count("cd") <= 100
    assert not {ex.prompt for ex in held_out} & {ex.prompt for ex in train}

    final = rl.train(cfg, str(tmp_path))
    for metric in ("greedy_pass@1", "mean_response_length", "pass@1", "maj@2"):
        add, cd = final[f"eval/add/{metric}"], final[f"eval/cd/{metric}"]
        # Overall = the example-weighted mean of the labels' (6 and 2 problems).
        assert final[f"eval/{metric}"] == pytest.approx((6 * add + 2 * cd) / 8), metric
    assert final["eval/mean_response_length"] > 0
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_eval_sets_report_every_metric_per_set(tmp_path):
    import json

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    gsm8k = [{"question": f"What is {a} plus {b}?", "answer": f"{a}+{b}=#### {a + b}"}
             for a in range(1, 4) for b in range(1, 4)]
    math = [{"problem": f"Compute ${a}*{b}$.", "solution": f"$\\boxed{{{a * b}}}$"}
            for a in range(2, 5) for b in range(2, 4)]
    cfg = small_config("grpo", steps=1)
    cfg.data.source, cfg.data.path = "gsm8k_jsonl", write("train.jsonl", gsm8k)
    cfg.data.eval_sets = {"gsm8k": {"path": write("g.jsonl", gsm8k[:5])},
                          "math": {"source": "math_jsonl", "path": write("m.jsonl", math)}}
    cfg.reward.fns = {"math": 1.0}
    cfg.sampling.max_prompt_len = 24
    cfg.eval.size = 4  # the first 4 rows of each set
    final = rl.train(cfg, str(tmp_path / "run"))
    for metric in ("greedy_pass@1", "mean_response_length", "pass@1", "maj@2"):
        g, m = final[f"eval/gsm8k/{metric}"], final[f"eval/math/{metric}"]
        assert final[f"eval/{metric}"] == pytest.approx((g + m) / 2), metric  # 4 and 4 rows
    assert final["eval/mean_response_length"] > 0
