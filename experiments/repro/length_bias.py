"""Dr. GRPO's length bias in miniature (Liu et al. 2025, "Understanding R1-Zero-Like Training",
arXiv:2503.20783): the length of wrong and right responses through GRPO and Dr. GRPO.

    python experiments/repro/length_bias.py [--smoke] [--seeds 0-4] [--out DIR]

GRPO averages each response's token losses over its own length before averaging over
responses (`seq-mean-token-mean`). The paper's claim: a wrong response (negative advantage) is
then penalized less per token the longer it is, and a right one rewarded more the shorter it is,
so under GRPO wrong responses grow longer through training while right ones do not; Dr. GRPO
sums token losses over a constant (`seq-mean-token-sum-norm`: the response budget) and drops
the group's std from the advantage, and its wrong responses do not grow.

Setting: the host trainer (`lrmjax.train.rl.train`) on `scratchpad_arithmetic`
(`lrmjax/data/tasks/scratchpad.py`): 2-digit addition answered after a scratchpad of free
length and a `#`; the verifier reads only the answer, so length earns nothing. `make demo`'s
model and recipe otherwise (`configs/arith_grpo.py`: CPU-tiny 2-layer model warm-started by SFT
to about 35 % held-out accuracy on demonstrations whose filler is 0-6 characters, 32 prompts x
8 responses per step, constant learning rate after warm-up, no KL), response budget 16 tokens.
The two arms differ only in the RL knobs of the Dr. GRPO preset (`rl.adv_estimator`,
`rl.norm_adv_by_std`, `rl.loss_agg_mode`) and share each seed's warm start. Lengths are in
tokens (one per character, EOS included), measured on the training samples of every step by
`length_by_outcome`, a diagnostic logged at weight 0.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.repro import common, host_runs  # noqa: E402

TOPIC = "length_bias"
CONFIG = "arith_grpo"
DIAG = "length_by_outcome"
# 2-digit sums (3-digit ones with a scratchpad need twice the warm start on 2 CPU cores),
# demonstrations with 0-6 filler characters, a 16-token budget: room to grow past them.
TASK = {"data.task": "scratchpad_arithmetic", "data.task_kwargs.digits": 2,
        "data.task_kwargs.min_digits": 2, "data.task_kwargs.max_pad": 6,
        "sampling.max_new_tokens": 16, "reward.fns.task": 1.0, f"reward.fns.{DIAG}": 0.0,
        "train.checkpoint_every": 10**6, "train.rollout_log_every": 10**6}
FULL = {**TASK, "optim.schedule": "constant", "train.steps": 100, "eval.every": 25,
        "eval.size": 200, "eval.k": 0}
SMOKE = {**host_runs.SMOKE, **TASK, "eval.every": 2}
ARMS = {"GRPO": {},
        "Dr. GRPO": {"rl.adv_estimator": "dr_grpo", "rl.norm_adv_by_std": False,
                     "rl.loss_agg_mode": "seq-mean-token-sum-norm"}}
WINDOW = 10  # steps averaged for the first / last lengths of the table


def length_by_outcome(prompts: list[str], completions: list[str], metadata: list[dict]) -> Any:
    """A diagnostic logged at weight 0: the task's verdict (1.0 right / 0.0 wrong) as the
    score; components `right_tokens` and `wrong_tokens`: the response's length in tokens
    (`metadata['response_tokens']`) where it is right / wrong, else 0. Batch means of the
    components over the mean verdict (or 1 - it) give the mean length of right (wrong)
    responses."""
    from lrmjax.rewards import base, get

    right = get("task")(prompts, completions, metadata)
    tokens = [float(m["response_tokens"]) for m in metadata]
    return base.RewardResult(scores=right, components={
        "right_tokens": [t * r for t, r in zip(tokens, right, strict=True)],
        "wrong_tokens": [t * (1.0 - r) for t, r in zip(tokens, right, strict=True)]})


def register() -> None:
    """Registers `length_by_outcome` (idempotent: the registry accepts the same function)."""
    from lrmjax.rewards import base

    base.register(DIAG)(length_by_outcome)


def lengths(rows: Sequence[dict[str, float]]) -> dict[str, np.ndarray]:
    """Per RL step [T]: accuracy of the training samples and the mean length of the right and
    the wrong ones (NaN in a step without any)."""
    acc = np.array([r[f"reward/{DIAG}"] for r in rows])
    right = np.array([r[f"reward/{DIAG}/right_tokens"] for r in rows])
    wrong = np.array([r[f"reward/{DIAG}/wrong_tokens"] for r in rows])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"accuracy": acc,
                "right": np.where(acc > 0, right / acc, np.nan),
                "wrong": np.where(acc < 1, wrong / (1 - acc), np.nan),
                "all": np.array([r["response_length/mean"] for r in rows])}


def run_metrics(record: dict[str, Any]) -> dict[str, float]:
    """One run's table cells: mean lengths of wrong and right responses over the first and
    the last `WINDOW` steps, their change, the training accuracy, held-out greedy pass@1."""
    per_step = lengths(record["rl"])
    acc = host_runs.series(record["eval"], "eval/greedy_pass@1")[1]
    row = {}
    for kind in ("wrong", "right"):
        with warnings.catch_warnings():  # a window without such responses is NaN, and says so
            warnings.simplefilter("ignore", RuntimeWarning)
            first, last = (float(np.nanmean(per_step[kind][s])) for s in
                           (slice(None, WINDOW), slice(-WINDOW, None)))
        row[f"{kind} length, first {WINDOW} steps"] = first
        row[f"{kind} length, last {WINDOW} steps"] = last
        row[f"{kind} length change"] = last - first
    row[f"train accuracy, last {WINDOW} steps"] = float(np.mean(per_step["accuracy"][-WINDOW:]))
    row["held-out greedy pass@1 before RL"] = float(acc[0])
    row["held-out greedy pass@1 after"] = float(acc[-1])
    return row


def figure(points: list[dict[str, Any]], path: str) -> None:
    """Mean length of wrong and of right training responses, and training accuracy, per RL
    step (a `WINDOW`-step running mean of each run, then the mean over seeds with its
    t-interval as a band)."""
    from lrmjax.train.sweep import t_interval

    fig, axes = common.figure(3)
    titles = {"wrong": "length of wrong responses (tokens)",
              "right": "length of right responses (tokens)", "accuracy": "train accuracy"}
    for p in points:
        for ax, kind in zip(axes, titles, strict=True):
            ys = np.asarray(p["curves"]["train"][kind], np.float64)  # [seeds, steps]
            window = min(WINDOW, ys.shape[1])  # a smoke run has fewer steps
            kernel = np.ones(window) / window
            with warnings.catch_warnings():  # a run without such responses: NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                smooth = np.array([np.convolve(np.nan_to_num(y, nan=np.nanmean(y)), kernel,
                                               mode="valid") for y in ys])
            common.band(ax, np.arange(window, ys.shape[1] + 1), smooth, p["point"]["run"],
                        t_interval)
            common.style(ax, titles[kind])
    axes[0].legend(fontsize=7)
    common.save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(TOPIC, __doc__, argv)
    started = time.time()
    register()
    base = SMOKE if args.smoke else FULL
    cfgs = {(arm, seed): host_runs.make_config(CONFIG, {**base, **sets}, seed,
                                               "runlocal" if args.smoke else None)
            for arm, sets in ARMS.items() for seed in args.seeds}
    second = list(ARMS)[1]
    def report(arm, seed, r):
        m = run_metrics(r)
        print(f"seed {seed} {arm}: wrong length {m['wrong length, first 10 steps']:.1f} -> "
              f"{m['wrong length, last 10 steps']:.1f}, right length "
              f"{m['right length, first 10 steps']:.1f} -> "
              f"{m['right length, last 10 steps']:.1f} tokens in {r['wall_s']:.0f} s",
              flush=True)

    records = host_runs.run_arms(cfgs, tuple(ARMS), args.seeds, TOPIC, report)
    points = []
    for arm in ARMS:
        recs = [records[arm, s] for s in args.seeds]
        per_step = [lengths(r["rl"]) for r in recs]
        curves = host_runs.curves(recs)
        curves["train"].update({kind: [x[kind].tolist() for x in per_step]
                                for kind in ("wrong", "right", "accuracy", "all")})
        points.append({"point": {"run": arm}, "seeds": list(args.seeds),
                       "runs": [run_metrics(r) for r in recs], "curves": curves})
    intro = (f"Host trainer, `configs/{CONFIG}.py` with "
             + ", ".join(f"`{k}={v}`" for k, v in base.items())
             + "; Dr. GRPO adds " + ", ".join(f"`{k}={v}`" for k, v in ARMS[second].items())
             + f". Lengths in tokens, means over the training responses of the first and last "
             f"{WINDOW} RL steps; change = last - first.")
    extra = ("Differences between the arms, paired by seed (both start from the seed's warm "
             "start):\n\n" + host_runs.paired(points, (
                 "wrong length change", "right length change",
                 f"wrong length, last {WINDOW} steps", "held-out greedy pass@1 after"))
             + "\n\n" + host_runs.wall_times(records, tuple(ARMS), args.seeds))
    text = common.write(args, "Dr. GRPO's length bias: lengths of wrong and right responses",
                        points, intro=intro, extra_md=extra, started=started,
                        figure=lambda path: figure(points, path))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
