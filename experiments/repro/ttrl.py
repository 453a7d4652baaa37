"""TTRL in miniature (Zuo et al. 2025, arXiv:2504.16084): the group's majority answer as the
reward, no labels, against the true reward, from the same warm start.

    python experiments/repro/ttrl.py [--smoke] [--seeds 0-4] [--out DIR]

TTRL samples n responses per unlabeled prompt, takes their majority answer as the pseudo-label
and rewards agreement with it. The paper reports that this improves pass@1 well beyond the
starting model, approaching training on the true labels, and even beyond the starting model's
maj@n (the accuracy of its own training signal); and that the reward stays mostly right even
when the label is wrong ("lucky hits": a wrong response disagreeing with a wrong majority still
gets the right reward, 0).

Setting: the host trainer (`lrmjax.train.rl.train`: text rewards run on the host), `make
demo`'s experiment (`configs/arith_grpo.py`: GRPO on 3-digit addition, 32 prompts x 8
responses, CPU-tiny 2-layer model warm-started by SFT to about 35 % held-out accuracy) with a
constant learning rate after warm-up, in two arms that differ only in the reward:
`majority_vote_exact` (`lrmjax/rewards/unsupervised.py`: the vote on whole responses, since
arithmetic's answers are bare digits) or the task's verifier (`task`). Both arms of a seed start
RL from the same warm start. Both also compute, at weight 0 (logged, never rewarded), the
other arm's reward and `ttrl_labels`: how often the group's majority answer is right (label
accuracy) and how often a response's majority reward equals its true reward (reward accuracy).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.repro import common, host_runs  # noqa: E402

TOPIC = "ttrl"
CONFIG = "arith_grpo"
K = 8  # held-out samples per problem: sampled pass@1, pass@8 and maj@8
FULL = {"optim.schedule": "constant", "train.steps": 120, "eval.every": 20, "eval.size": 300,
        "eval.k": K, "train.checkpoint_every": 10**6, "train.rollout_log_every": 10**6}
SMOKE = {**host_runs.SMOKE, "eval.every": 2, "eval.k": 2, "train.checkpoint_every": 10**6,
         "train.rollout_log_every": 10**6}
ARMS = {"true reward": "task", "majority vote (no labels)": "majority_vote_exact"}
LABELS = "ttrl_labels"


def ttrl_labels(prompts: list[str], completions: list[str], metadata: list[dict]) -> Any:
    """A diagnostic with labels, logged at weight 0: 1.0 for every row of a group whose
    majority answer (`majority_vote_exact`'s) is correct, else 0.0 (a group without answers:
    0.0); component `reward_agrees`: 1.0 iff the row's majority-vote reward equals its true
    (`task`) reward. Means over rows equal means over groups (groups are all of size n)."""
    from lrmjax.rewards import base, get

    vote = get("majority_vote_exact")(prompts, completions, metadata).scores
    truth = get("task")(prompts, completions, metadata)
    groups: dict[Any, list[int]] = {}
    for i, meta in enumerate(metadata):
        groups.setdefault(meta["group_id"], []).append(i)
    label = [0.0] * len(completions)
    for rows in groups.values():
        right = float(any(vote[i] == 1.0 and truth[i] == 1.0 for i in rows))
        for i in rows:
            label[i] = right
    agrees = [float(v == t) for v, t in zip(vote, truth, strict=True)]
    return base.RewardResult(scores=label, components={"reward_agrees": agrees})


ttrl_labels.group_level = True  # type: ignore[attr-defined]


def register() -> None:
    """Registers `ttrl_labels` (idempotent: the registry accepts the same function again)."""
    from lrmjax.rewards import base

    base.register(LABELS)(ttrl_labels)


def arm_sets(reward: str, smoke: bool) -> dict[str, Any]:
    """The config overrides of the arm rewarded by `reward` ('task' or
    'majority_vote_exact'); the other reward and the diagnostic at weight 0."""
    fns = {f"reward.fns.{name}": float(name == reward)
           for name in ("task", "majority_vote_exact")}
    return {**(SMOKE if smoke else FULL), **fns, f"reward.fns.{LABELS}": 0.0}


# Table columns: (column, where, key, reduce): 'first'/'last' evaluation, or the mean over the
# first / last 10 RL steps of a train metric.
COLUMNS = (
    ("greedy pass@1 before RL", "first", "eval/greedy_pass@1"),
    ("greedy pass@1 after", "last", "eval/greedy_pass@1"),
    ("sampled pass@1 after", "last", "eval/pass@1"),
    (f"maj@{K} before RL", "first", f"eval/maj@{K}"),
    (f"maj@{K} after", "last", f"eval/maj@{K}"),
    ("label accuracy, first 10 steps", "train_first", f"reward/{LABELS}"),
    ("label accuracy, last 10 steps", "train_last", f"reward/{LABELS}"),
    ("reward accuracy, last 10 steps", "train_last", f"reward/{LABELS}/reward_agrees"),
)
PANELS = (("eval", "eval/greedy_pass@1", "held-out greedy pass@1"),
          ("eval", f"eval/maj@{K}", f"held-out maj@{K}"),
          ("train", f"reward/{LABELS}", "train: majority label right (share of groups)"),
          ("train", f"reward/{LABELS}/reward_agrees", "train: majority reward = true reward"))


def run_metrics(record: dict[str, Any], k: int) -> dict[str, float]:
    """One run's table cells (`COLUMNS`, with maj@k of this mode's k)."""
    row = {}
    for column, where, key in COLUMNS:
        key = key.replace(f"@{K}", f"@{k}")
        column = column.replace(f"@{K}", f"@{k}")
        if where in ("first", "last"):
            values = host_runs.series(record["eval"], key)[1]
            row[column] = float(values[0 if where == "first" else -1])
        else:
            values = host_runs.series(record["rl"], key)[1]
            row[column] = float(np.mean(values[:10] if where == "train_first" else values[-10:]))
    return row


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(TOPIC, __doc__, argv)
    started = time.time()
    register()
    cfgs = {(arm, seed): host_runs.make_config(CONFIG, arm_sets(reward, args.smoke), seed,
                                               "runlocal" if args.smoke else None)
            for arm, reward in ARMS.items() for seed in args.seeds}
    first, second = ARMS
    def report(arm, seed, r):
        print(f"seed {seed} {arm}: held-out greedy pass@1 "
              f"{r['eval'][0]['eval/greedy_pass@1']:.3f} -> "
              f"{r['eval'][-1]['eval/greedy_pass@1']:.3f} in {r['wall_s']:.0f} s", flush=True)

    records = host_runs.run_arms(cfgs, tuple(ARMS), args.seeds, TOPIC, report)
    k = cfgs[first, args.seeds[0]].eval.k
    panels = tuple((w, key.replace(f"@{K}", f"@{k}"), t.replace(f"@{K}", f"@{k}"))
                   for w, key, t in PANELS)
    points = []
    for arm in ARMS:
        recs = [records[arm, s] for s in args.seeds]
        points.append({
            "point": {"run": arm}, "seeds": list(args.seeds),
            "runs": [run_metrics(r, k) for r in recs],
            "curves": host_runs.curves(
                recs, train_keys=tuple(key for w, key, _ in panels if w == "train"),
                eval_keys=tuple(key for w, key, _ in panels if w == "eval"))})
    sets = arm_sets(ARMS[second], args.smoke)
    intro = (f"Host trainer, `configs/{CONFIG}.py` with "
             + ", ".join(f"`{key}={v}`" for key, v in sets.items()
                         if not key.startswith("reward."))
             + f"; the rewarded function is `task` or `majority_vote_exact` (weight 1, the "
             f"other and `{LABELS}` at weight 0). Held-out metrics on `eval.size` unseen "
             f"problems ({k} samples each at temperature 1 for sampled pass@1 and maj@{k}). "
             "Label accuracy: share of training groups whose majority answer is right; reward "
             "accuracy: share of training responses whose majority reward equals the true one "
             "(both measured in both arms, rewarded in neither).")
    extra = host_runs.wall_times(records, tuple(ARMS), args.seeds)
    text = common.write(args, "TTRL: majority-vote reward without labels vs the true reward",
                        points, intro=intro, extra_md=extra, started=started, panels=panels)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
