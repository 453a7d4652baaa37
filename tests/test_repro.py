"""The reproductions (experiments/repro/): the shared pieces (common.py) and each script's
--smoke run, in process, with the files it writes."""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments.repro import common  # noqa: E402
from lrmjax.train.sweep import t_interval  # noqa: E402

# Student's t quantile t_{0.975, 2} (tables: 4.303).
T_975_2 = 4.302652729911275


def test_seeds_parse_and_bad_ones_name_the_option():
    assert common.parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert common.parse_seeds("1-2,7") == [1, 2, 7]
    for bad in ("a", "1,1", "", "-3"):
        with pytest.raises(ValueError, match="--seeds"):
            common.parse_seeds(bad)


def test_args_defaults(tmp_path):
    args = common.parse_args("topic", "Doc.", ["--smoke", "--out", str(tmp_path / "o")])
    assert args.seeds == [0, 1] and args.smoke and (tmp_path / "o").is_dir()
    assert common.command(args) == f"python experiments/repro/topic.py --smoke --out {tmp_path}/o"
    args = common.parse_args("topic", "Doc.", ["--seeds", "3-9", "--out", str(tmp_path)])
    assert args.seeds == list(range(3, 10)) and not args.smoke


def test_table_cells_are_mean_and_t_interval_and_count_missing_runs():
    runs = [{"acc": 0.2, "steps": 10.0}, {"acc": 0.4, "steps": np.nan},
            {"acc": 0.9, "steps": 30.0}]
    text = common.table([{"point": {"algorithm": "a"}, "runs": runs}], t_interval,
                        ["acc", "steps"])
    lines = text.splitlines()
    assert lines[0] == "| algorithm | seeds | acc | steps |"
    x = np.array([0.2, 0.4, 0.9])
    half = T_975_2 * x.std(ddof=1) / np.sqrt(3)
    acc = f"{x.mean():.3f} [{x.mean() - half:.3f}, {x.mean() + half:.3f}]"
    # Steps: 2 of 3 runs have one; t_{0.975,1} = 12.706, s = 14.142, half = 127.06.
    steps = f"20.000 [{20 - 127.062:.3f}, {20 + 127.062:.3f}] (2/3)"
    assert lines[2] == f"| a | 3 | {acc} | {steps} |"
    one = common.table([{"point": {}, "runs": [{"acc": 0.5}]}], t_interval)
    assert one.splitlines()[2] == "| 1 | 0.500 |"
    none = common.table([{"point": {}, "runs": [{"acc": np.nan}]}], t_interval)
    assert "- (0/1)" in none


def test_final_metrics_read_the_last_eval_the_first_and_the_last_ten_steps():
    out = {"eval": {"eval/greedy_pass@1": np.array([[0.1, 0.5, 0.7]])},
           "train": {"reward/mean": np.arange(20, dtype=float)[None]},
           "sft": {"sft/steps": np.array([40])}}
    row = common.final_metrics(out, 0)
    assert row == {"held-out greedy pass@1": 0.7, "greedy pass@1 before RL": 0.1,
                   "train reward (last 10 steps)": 14.5, "SFT steps": 40.0}


def test_write_makes_the_three_files(tmp_path):
    args = common.parse_args("topic", "Doc.", ["--out", str(tmp_path), "--seeds", "0-1"])
    out = {"train": {"reward/mean": np.array([[0.1, 0.2, 0.3], [0.2, 0.2, 0.4]])},
           "eval": {"eval/greedy_pass@1": np.array([[0.1, 0.3], [0.2, 0.5]]),
                    "eval/step": np.array([[0, 3], [0, 3]])}}
    text = common.write(args, "T", [common.point({"run": "x"}, out, [0, 1])], intro="Hi.",
                        started=0.0)
    assert "Student's t" in text and "Hi." in text
    assert (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "curves.png").stat().st_size > 1000
    runs = json.loads((tmp_path / "runs.json").read_text())["points"]
    assert runs[0]["runs"][1]["held-out greedy pass@1"] == 0.5
    assert runs[0]["curves"]["train"]["reward/mean"][0] == [0.1, 0.2, 0.3]


def _smoke(module, tmp_path, *extra):
    """Runs `module.main` with --smoke into tmp_path; returns (results.md rows, runs.json)."""
    assert module.main(["--smoke", "--out", str(tmp_path), *extra]) == 0
    text = (tmp_path / "results.md").read_text()
    assert (tmp_path / "curves.png").stat().st_size > 1000
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return rows, json.loads((tmp_path / "runs.json").read_text())


def _cells_ok(rows, columns):
    header = rows[0]
    assert header[-len(columns):][:-1] == list(columns)[:-1], header
    for row in rows[1:]:
        assert len(row) == len(header), row


def test_algorithms_smoke(tmp_path):
    from experiments.repro import algorithms

    rows, runs = _smoke(algorithms, tmp_path, "--algorithms", "grpo,ppo")
    _cells_ok(rows, algorithms.COLUMNS)
    assert [r[0].strip("| ") for r in rows[1:]] == ["GRPO", "PPO (critic)"]
    assert [len(p["runs"]) for p in runs["points"]] == [2, 2]
    with pytest.raises(ValueError, match="--algorithms"):
        algorithms.main(["--smoke", "--algorithms", "nope"])


def test_entropy_smoke(tmp_path):
    from experiments.repro import entropy

    rows, runs = _smoke(entropy, tmp_path)
    _cells_ok(rows, entropy.COLUMNS)
    assert len(rows) == 4  # header + GRPO, unclipped, KL-Cov
    assert len(runs["fits"]) == 3 and len(runs["pooled_fit"]) == 3


def test_spurious_rewards_smoke(tmp_path):
    from experiments.repro import spurious_rewards

    rows, runs = _smoke(spurious_rewards, tmp_path)
    _cells_ok(rows, spurious_rewards.COLUMNS)
    assert len(rows) == 4
    random_clip = runs["points"][1]["curves"]["train"]
    assert "reward/verified_mean" in random_clip


def test_pass_at_k_smoke(tmp_path):
    from experiments.repro import pass_at_k

    rows, runs = _smoke(pass_at_k, tmp_path, "--samples", "4")
    assert rows[0] == ["| model", "seeds", "pass@1", "pass@4", "prompts solved (any of n) |"]
    assert runs["ks"] == [1, 2, 4]
    assert len(rows) == 3 + 2  # header + base + RL, then the paired table's header + row
    assert rows[3] == rows[0] and rows[4][0] == "| RL - base (paired by seed)"
    with pytest.raises(ValueError, match="--samples"):
        pass_at_k.main(["--smoke", "--samples", "3"])


def test_the_unbiased_pass_at_k_curve():
    from experiments.repro import pass_at_k

    # n = 4 samples, c = 1 correct: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2, pass@4 = 1;
    # c = 0: all 0. Mean over the two prompts.
    np.testing.assert_allclose(pass_at_k.pass_curve(np.array([1, 0]), 4, [1, 2, 4]),
                               [0.125, 0.25, 0.5])


def test_the_entropy_fit_recovers_known_coefficients():
    from experiments.repro import entropy

    h = np.linspace(0.1, 1.5, 12)
    a, b, r2 = entropy.fit(h, -0.2 * np.exp(h) + 0.9)
    assert (a, b, r2) == pytest.approx((0.2, 0.9, 1.0), abs=1e-6)
    noisy = -0.2 * np.exp(h) + 0.9 + np.where(np.arange(12) % 2, 0.01, -0.01)
    r = noisy - noisy.mean()
    # R^2 against a 0.02-wide alternating residual: at least 1 - 12 * 0.01^2 / sum(r^2).
    assert entropy.fit(h, noisy)[2] >= 1 - 12 * 1e-4 / np.sum(r ** 2) - 1e-9


def test_samples_to_threshold():
    from experiments.repro import algorithms

    steps = np.array([0, 10, 20])
    assert algorithms.samples_to_threshold(np.array([0.3, 0.55, 0.6]), steps, 128, 0.5) == 1280
    assert np.isnan(algorithms.samples_to_threshold(np.array([0.3, 0.4, 0.4]), steps, 128, 0.5))
