"""Tests for the host-trainer reproductions (experiments/repro/dynamic_sampling.py, ttrl.py,
length_bias.py and their helper host_runs.py): the arithmetic each table is drawn from, by hand,
and each script's --smoke run (9-17 s each on 2 cores: a host-trainer run costs its
compiles)."""

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments.repro import dynamic_sampling, host_runs, length_bias, ttrl  # noqa: E402


def _rows(**columns):
    """Metric rows of RL steps 1..T from {key: [T values]}."""
    T = len(next(iter(columns.values())))
    return [{"step": t + 1, **{k.replace("__", "/"): v[t] for k, v in columns.items()}}
            for t in range(T)]


def test_samples_count_every_refill_round():
    cfg = host_runs.make_config("arith_grpo", {"train.batch_prompts": 4, "sampling.n": 2}, 0)
    rows = [{"step": 1}, {"step": 2, "filter_groups/rounds": 0.0},
            {"step": 3, "filter_groups/rounds": 2.0}]
    # 4 prompts x 2 responses per round; step 3 sampled three rounds.
    np.testing.assert_array_equal(dynamic_sampling.samples_per_step(cfg, rows), [8, 8, 24])
    record = {"rl": rows, "eval": [{"step": 0, "eval/greedy_pass@1": 0.2},
                                   {"step": 3, "eval/greedy_pass@1": 0.5}]}
    samples, acc = dynamic_sampling.eval_samples(cfg, record)
    np.testing.assert_array_equal(samples, [0, 40])
    np.testing.assert_array_equal(acc, [0.2, 0.5])
    assert dynamic_sampling.accuracy_at(samples, acc, 10) == pytest.approx(0.2 + 0.3 * 10 / 40)
    assert np.isnan(dynamic_sampling.accuracy_at(samples, acc, 41))


def test_ttrl_labels_measures_label_and_reward_accuracy():
    # Group 0 (answer 975 reversed: 123+456): majority '975' right. Group 1 (answer '2' for
    # 1+1): majority '3' wrong; the '2' response is right but gets majority reward 0, the '4'
    # response is wrong and gets 0 from both.
    prompts = ["123+456="] * 3 + ["1+1="] * 4
    completions = ["975", "975", "976", "3", "3", "2", "4"]
    meta = [{"task": "arithmetic", "task_kwargs": {"digits": 3, "reverse_answer": True},
             "answer": a, "group_id": g}
            for a, g in [("975", 0)] * 3 + [("2", 1)] * 4]
    res = ttrl.ttrl_labels(prompts, completions, meta)
    assert res.scores == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert res.components["reward_agrees"] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_ttrl_arms_reward_one_function_and_log_the_rest():
    sets = ttrl.arm_sets("majority_vote_exact", smoke=False)
    assert (sets["reward.fns.majority_vote_exact"], sets["reward.fns.task"],
            sets["reward.fns.ttrl_labels"]) == (1.0, 0.0, 0.0)
    assert ttrl.arm_sets("task", smoke=False)["reward.fns.task"] == 1.0


def test_length_by_outcome_and_the_mean_lengths_it_gives():
    meta = [{"task": "scratchpad_arithmetic", "task_kwargs": {"digits": 1}, "answer": "2",
             "response_tokens": n} for n in (3, 5, 9, 11)]
    res = length_bias.length_by_outcome(["1+1="] * 4, ["#2", "..#2", "#3", "2"], meta)
    assert res.scores == [1.0, 1.0, 0.0, 0.0]
    assert res.components == {"right_tokens": [3.0, 5.0, 0.0, 0.0],
                              "wrong_tokens": [0.0, 0.0, 9.0, 11.0]}
    # Batch means as the trainer logs them: right (3+5)/4, wrong (9+11)/4, accuracy 1/2; a
    # second step where every response is right has no wrong length.
    key = "reward__length_by_outcome"
    rows = _rows(**{key: [0.5, 1.0], f"{key}__right_tokens": [2.0, 4.0],
                    f"{key}__wrong_tokens": [5.0, 0.0], "response_length__mean": [7.0, 4.0]})
    out = length_bias.lengths(rows)
    np.testing.assert_allclose(out["right"], [4.0, 4.0])
    np.testing.assert_allclose(out["wrong"], [10.0, np.nan])
    np.testing.assert_allclose(out["accuracy"], [0.5, 1.0])


def test_host_runs_reject_bad_keys_and_unshareable_warm_starts(tmp_path):
    with pytest.raises(ValueError, match="no_such_key"):
        host_runs.make_config("arith_grpo", {"train.no_such_key": 1}, 0)
    other = tmp_path / "other"
    os.makedirs(other / "sft")
    cfg = host_runs.make_config("arith_grpo", {}, 0)
    with open(other / "config.json", "w") as f:
        f.write(host_runs.make_config("arith_grpo", {"sft.lr": 1e-3}, 0).to_json_best_effort())
    with pytest.raises(ValueError, match="'sft' differs"):
        host_runs.run(cfg, str(tmp_path / "new"), warm_start_from=str(other))


@pytest.mark.parametrize("script", [dynamic_sampling, ttrl, length_bias])
def test_smoke(script, tmp_path):
    assert script.main(["--smoke", "--seeds", "0", "--out", str(tmp_path)]) == 0
    for name in ("results.md", "curves.png", "runs.json"):
        assert os.path.getsize(tmp_path / name) > 0
    with open(tmp_path / "runs.json") as f:
        points = json.load(f)["points"]
    assert len(points) == 2 and all(len(p["runs"]) == 1 for p in points)
    assert "| run | seeds |" in (tmp_path / "results.md").read_text()


def test_paired_differences_are_t_intervals_of_per_seed_differences():
    a = {"point": {"run": "A"}, "seeds": [0, 1, 2], "runs": [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]}
    b = {"point": {"run": "B"}, "seeds": [0, 1, 2], "runs": [{"x": 2.0}, {"x": 4.0}, {"x": 3.0}]}
    # Differences 1, 2, 0: mean 1, s = 1, half-width t_{0.975,2} / sqrt(3) = 4.3027 / 1.7321.
    half = 4.302652729911275 / np.sqrt(3)
    assert host_runs.paired([a, b], ("x",)) == (
        f"- x, B - A, paired by seed: 1.000 [{1 - half:.3f}, {1 + half:.3f}]")
    with pytest.raises(ValueError, match="seeds differ"):
        host_runs.paired([a, {**b, "seeds": [0, 1, 3]}], ("x",))
