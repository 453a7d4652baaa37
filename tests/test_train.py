"""End-to-end trainer tests on a 1-layer model (conftest fakes 8 CPU devices)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import read_metrics, small_config

from lrmjax.rl import algorithms
from lrmjax.train import compilation, inputs, lifecycle, rl
from lrmjax.train import metrics as metrics_lib
from lrmjax.train import sft as sft_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("algorithm", sorted(algorithms.PRESETS))
def test_every_preset_runs_two_steps(algorithm, tmp_path):
    cfg = small_config(algorithm)
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
    res = inputs.outcome_reward(cfg)(["p"], ["```python\ndef f():\n    return 1\n```"],
                                     [{"tests": ["assert f() == 1"]}])
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
        {**row, "tests": ["assert len('') == 0"]} for row in metadata(self, *a, **k)])
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


def test_a_reward_failing_every_row_stops_the_run_or_is_counted_in_every_round(tmp_path):
    """A reward that raises on every row stops the run after reward.max_failing_calls scoring
    calls, with its error; with the stop off (0) the run goes on and its errors are counted
    over every dynamic-sampling round, not only the first."""
    cfg = small_config("dapo", steps=1, overlong_buffer_len=2)
    cfg.reward.fns = {"test_always_raises": 1.0}
    cfg.train.max_refill_rounds = 2
    with pytest.raises(RuntimeError, match="broken on purpose"):
        rl.train(cfg, str(tmp_path / "stopped"))
    cfg.reward.max_failing_calls = 0
    rl.train(cfg, str(tmp_path / "counted"))
    [row] = read_metrics(str(tmp_path / "counted"))
    # Every group scores 0 everywhere: no variance, so 1 + 2 refill rounds are sampled.
    rows_per_round = cfg.train.batch_prompts * cfg.sampling.n
    assert row["filter_groups/rounds"] == 2
    assert row["reward/errors"] == 3 * rows_per_round


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


def _run_cli(workdir: str, steps: int, variant: str = "single_turn") -> subprocess.Popen:
    env = dict(os.environ, LRMJAX_TEST_STEPS=str(steps), JAX_PLATFORMS="cpu",
               LRMJAX_TEST_EPISODES="1" if variant == "episodes" else "",
               LRMJAX_TEST_LORA="1" if variant == "lora" else "")
    return subprocess.Popen(
        [sys.executable, "-m", "lrmjax.main", f"--config={REPO}/tests/resume_config.py",
         f"--workdir={workdir}"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)


@pytest.mark.parametrize("variant", ["single_turn", "episodes",
                                     pytest.param("lora", marks=pytest.mark.slow)])
def test_resume_after_sigkill_is_exact(tmp_path, variant):
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    p = _run_cli(straight, 6, variant)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]

    p = _run_cli(killed, 6, variant)
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
    assert os.path.exists(f"{killed}/.lock")  # its lock file stays; the lock went with it
    # A save cut off mid-write leaves only a temporary directory: it must be ignored.
    os.makedirs(f"{killed}/checkpoints/5.orbax-checkpoint-tmp-0/state", exist_ok=True)
    p = _run_cli(killed, 6, variant)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]

    # The killed run's logs read as one run's: the rows it wrote after checkpoint 3 were
    # dropped on resume and written again, once.
    assert read_metrics(killed) == read_metrics(straight)
    assert read_metrics(killed, phase="eval") == read_metrics(straight, phase="eval")
    assert [r["step"] for r in metrics_lib.read_jsonl(f"{killed}/rollouts.jsonl")] == [
        r["step"] for r in metrics_lib.read_jsonl(f"{straight}/rollouts.jsonl")]
    if variant == "episodes":  # several turns really were played
        assert max(r["env/turns_max"] for r in read_metrics(straight)) >= 2
    if variant == "lora":  # the policy really moved off the base (the reference)
        assert max(r["actor/kl_loss"] for r in read_metrics(straight)) > 0


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


# -------------------------------------------------------------------- a run you can trust


def _no_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("timing_s/")}


def _summary(workdir: str) -> dict:
    with open(f"{workdir}/summary.json") as f:
        return json.load(f)


def test_rerun_reports_the_final_eval_never_the_one_before_rl(tmp_path, monkeypatch):
    cfg = small_config("grpo", steps=2)
    cfg.train.checkpoint_every = 1
    cfg.reward.fns = {"test_starts_with_7": 1.0}
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    final = rl.train(cfg, a)
    summary = _summary(a)
    assert summary["after"] == final
    # A rerun of the finished run reports its final evaluation as it was, not recomputed (even
    # its wall time is the same), and logs nothing again.
    assert rl.train(cfg, a) == final
    assert _summary(a) == summary
    assert [r["step"] for r in read_metrics(a, phase="eval")] == [0, 2]

    # Killed during its final evaluation (here: it raises), a run evaluates again on rerun.
    run_eval = rl.run_eval

    def killed_in_the_final_eval(inp, params, key, writer, step):
        if step == cfg.train.steps:
            raise RuntimeError("killed")
        return run_eval(inp, params, key, writer, step)

    monkeypatch.setattr(rl, "run_eval", killed_in_the_final_eval)
    with pytest.raises(RuntimeError, match="killed"):
        rl.train(cfg, b)
    monkeypatch.setattr(rl, "run_eval", run_eval)
    again = rl.train(cfg, b)
    assert _no_timing(again) == _no_timing(final) and _summary(b)["after"] == again
    assert read_metrics(b) == read_metrics(a)  # once per step, as if it had not been killed
    assert read_metrics(b, phase="eval") == read_metrics(a, phase="eval")


def test_best_checkpoint_is_saved_at_evaluated_steps_with_their_numbers(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    saves = []
    save = ocp.CheckpointManager.save

    def recorded(self, step, *args, **kwargs):
        saves.append((os.path.basename(str(self.directory)), step, kwargs.get("metrics")))
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", recorded)
    cfg = small_config("grpo", steps=3)
    cfg.train.checkpoint_every = 1
    cfg.eval.every = 2
    rl.train(cfg, str(tmp_path))
    evals = {r["step"]: r for r in read_metrics(str(tmp_path), phase="eval")}
    assert sorted(evals) == [0, 2, 3]
    assert [step for d, step, _ in saves if d == "checkpoints"] == [1, 2, 3]
    best = [(step, metrics) for d, step, metrics in saves if d == "best"]
    assert best and best[0][0] == 2
    for step, metrics in best:  # only evaluated steps, each with its own numbers
        assert metrics == {"eval/greedy_pass@1": evals[step]["eval/greedy_pass@1"]}, step


def test_sigint_stops_after_a_saved_step_and_the_rerun_goes_on(tmp_path, monkeypatch, capsys):
    cfg = small_config("grpo", steps=2)  # checkpoint_every=1000: only the stop saves step 1
    log_step = rl.log_step

    def ctrl_c_in_step_1(*args, **kwargs):
        log_step(*args, **kwargs)
        if args[5] == 1:  # done
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(rl, "log_step", ctrl_c_in_step_1)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(lifecycle.Stopped) as stopped:
        rl.train(cfg, str(tmp_path))
    assert stopped.value.signum == signal.SIGINT and stopped.value.where == "RL step 1"
    assert "rerun with the same --workdir to resume" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    monkeypatch.setattr(rl, "log_step", log_step)
    rl.train(cfg, str(tmp_path))
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_an_error_waits_for_the_save_in_flight_and_closes_the_inputs(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    json_save = ocp.handlers.JsonCheckpointHandler._save_fn

    async def slow_save(self, x, directory):  # a save still on its way when the error comes
        time.sleep(1.0)
        return await json_save(self, x, directory)

    observe = rl.observe

    def fails_in_step_2(inp, batch, metrics, rl_step):
        if rl_step == 1:
            raise RuntimeError("step 2 failed")
        return observe(inp, batch, metrics, rl_step)

    closed = []
    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "_save_fn", slow_save)
    monkeypatch.setattr(rl, "observe", fails_in_step_2)
    monkeypatch.setattr(inputs.Inputs, "close", lambda self: closed.append(1), raising=False)
    cfg = small_config("grpo", steps=3)
    cfg.train.checkpoint_every = 1
    with pytest.raises(RuntimeError, match="step 2 failed"):
        rl.train(cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]  # complete when it raised
    assert closed == [1]


def test_a_second_run_on_the_workdir_is_refused_and_a_killed_runs_lock_is_not(tmp_path):
    workdir = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lrmjax.train import lifecycle\n"
         "with lifecycle.Run(sys.argv[1]) as run:\n    run.lock(True)\n"
         "    print('locked', flush=True)\n    time.sleep(600)\n", workdir],
        cwd=REPO, stdout=subprocess.PIPE, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    try:
        assert holder.stdout.readline().strip() == b"locked"
        t0 = time.time()
        with pytest.raises(lifecycle.WorkdirBusy,
                           match=rf"host {re.escape(socket.gethostname())}, pid {holder.pid}\b"):
            rl.train(small_config("grpo", steps=1), workdir)
        assert time.time() - t0 < 10
        assert sorted(os.listdir(workdir)) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    rl.train(small_config("grpo", steps=1), workdir)  # a killed holder's lock is gone
    assert [r["step"] for r in read_metrics(workdir)] == [1]


def test_rl_from_another_runs_warm_start(tmp_path, monkeypatch):
    """`sft.from_workdir`: RL starts from run a's finished warm start, trains none, keeps it as
    its own (a rerun reads b alone), and refuses a workdir without one, an unfinished one and
    another model."""
    cfg = small_config("grpo", steps=1)
    cfg.sft.steps, cfg.sft.eval_every, cfg.sft.warmup_steps = 10, 4, 2
    cfg.sft.batch_size, cfg.sft.eval_size = 8, 4
    a, b, c = (str(tmp_path / name) for name in "abc")
    rl.train(cfg, a)
    demonstrations = sft_lib.demonstrations

    def killed_at_step_6(inp, examples, calls=[]):  # noqa: B006 (counts across calls)
        calls.append(1)
        if len(calls) == 6:
            raise RuntimeError("killed")
        return demonstrations(inp, examples)

    monkeypatch.setattr(sft_lib, "demonstrations", killed_at_step_6)
    with pytest.raises(RuntimeError, match="killed"):  # c's warm start stops unfinished
        rl.train(cfg, c)
    monkeypatch.setattr(sft_lib, "demonstrations",
                        lambda *_: pytest.fail("trained a warm start"))
    other = small_config("grpo", steps=1)
    other.sft.steps = 10
    other.seed = 1
    other.optim.grad_clip = 0.0  # another optimizer (no clip transform) may start from it too
    other.sft.from_workdir = a
    rl.train(other, b)
    # The same params on the same held-out set: the eval before RL is a's.
    assert read_metrics(b, phase="eval")[0] == read_metrics(a, phase="eval")[0]
    want, got = _summary(a)["sft"], _summary(b)["sft"]
    assert got.pop("from_workdir") == os.path.abspath(a) and got == want
    assert read_metrics(b, phase="rl") != read_metrics(a, phase="rl")  # another seed's RL
    # Killed before its first RL checkpoint, b reruns from its own copy, a gone.
    rl_metrics = read_metrics(b, phase="rl")
    shutil.rmtree(os.path.join(b, "checkpoints"))
    shutil.rmtree(a)
    rl.train(other, b)
    assert read_metrics(b, phase="rl") == rl_metrics
    for source, match in [(a, "no run's warm start there"),
                          (c, "stopped at SFT step 4, unfinished")]:
        other.sft.from_workdir = source
        with pytest.raises(ValueError, match=match):
            rl.train(other, str(tmp_path / "d"))
    other.sft.from_workdir = b
    other.model.overrides.num_layers = 2
    with pytest.raises(ValueError, match=r"that run's \['model.overrides'\] differ"):
        rl.train(other, str(tmp_path / "e"))


def test_a_killed_warm_start_resumes_where_it_was(tmp_path, monkeypatch):
    cfg = small_config("grpo", steps=1)
    cfg.sft.steps, cfg.sft.eval_every, cfg.sft.warmup_steps = 10, 4, 2
    cfg.sft.batch_size, cfg.sft.eval_size = 8, 4
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    rl.train(cfg, a)
    demonstrations, calls = sft_lib.demonstrations, []

    def counted(inp, examples, kill_at=None):
        calls.append(1)
        if len(calls) == kill_at:
            raise RuntimeError("killed")
        return demonstrations(inp, examples)

    monkeypatch.setattr(sft_lib, "demonstrations", lambda *a: counted(*a, kill_at=6))
    with pytest.raises(RuntimeError, match="killed"):  # in SFT step 6; step 4 is saved
        rl.train(cfg, b)
    calls.clear()
    monkeypatch.setattr(sft_lib, "demonstrations", counted)
    rl.train(cfg, b)
    assert len(calls) == 6  # SFT steps 5..10
    for phase in ("sft", "eval", "rl"):
        assert read_metrics(b, phase=phase) == read_metrics(a, phase=phase), phase
    assert [r["step"] for r in read_metrics(b, phase="sft")] == [4, 8, 10, 10]
    want, got = _summary(a)["sft"], _summary(b)["sft"]
    assert want.pop("seconds") > 0 and got.pop("seconds") > 0 and got == want
