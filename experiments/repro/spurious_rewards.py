"""Finding 6: spurious rewards (Shao et al. 2025, arXiv:2506.10947). RLVR with *random* rewards,
independent of the answer, still raised Qwen2.5-Math's accuracy, and the paper traces the gain
to the PPO ratio clip: clipping biases the update toward the policy's already likely outputs
(its prior behaviour), so without clipping random rewards do not help.

    python experiments/repro/spurious_rewards.py [--seeds 0-4] [--smoke]

Setting: the reproductions' miniature arithmetic experiment (`common.ARITH` on
`configs/arith_grpo.py`: GRPO without KL, two minibatches per batch so the second optimizer
step is off-policy and the clip acts) on the device-reward path. From each seed's shared warm
start: random rewards (`reward.random_p` = 0.5: Bernoulli(0.5) per response) with the clip
(ratio in [0.8, 1.2]) and without it (clip_ratio_low = 1, clip_ratio_high = 1e6: no ratio is
ever clipped) as one program (the clip range vmapped), and the true reward with the clip as the
reference.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
from experiments.repro import common  # noqa: E402

TOPIC = "spurious_rewards"
SETTING = {**common.ARITH, "train.steps": 100}
P = 0.5
CLIP = {"rl.clip_ratio_low": 0.2, "rl.clip_ratio_high": 0.2}
NO_CLIP = {"rl.clip_ratio_low": 1.0, "rl.clip_ratio_high": 1e6}
COLUMNS = ("held-out sampled pass@1", "sampled pass@1 gain", "held-out greedy pass@1",
           "greedy gain", "train accuracy (last 10 steps)", "entropy (last 10 steps)",
           "clipped fraction")
PANELS = (("train", "reward/verified_mean", "train accuracy (verifier)"),
          ("eval", "eval/pass@1", "held-out sampled pass@1"),
          ("eval", "eval/greedy_pass@1", "held-out greedy pass@1"),
          ("train", "actor/entropy", "policy entropy"))


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(TOPIC, __doc__, argv)
    started = time.time()
    common.setup()
    cfg = common.config("configs/arith_grpo.py",
                        {**SETTING, **(common.SMOKE if args.smoke else {})})
    seeds, n = args.seeds, len(args.seeds)
    base = common.program(cfg, "arith_grpo")
    params, sft = common.warm_starts(base, seeds, cache=not args.smoke)
    print(f"warm starts done ({time.time() - started:.0f} s)", flush=True)
    true = common.rl_runs(base, params, seeds)
    # The true reward's accuracy on the training batches is its reward.
    true["train"]["reward/verified_mean"] = true["train"]["reward/mean"]
    print(f"true reward done ({time.time() - started:.0f} s)", flush=True)

    import jax

    random_cfg = cfg.copy_and_resolve_references()
    random_cfg.reward.random_p = P
    rand = common.rl_runs(common.program(random_cfg, "random reward"),
                          jax.tree.map(lambda x: np.concatenate([x, x]), params), seeds + seeds,
                          {k: [CLIP[k]] * n + [NO_CLIP[k]] * n for k in CLIP})
    print(f"random reward done ({time.time() - started:.0f} s)", flush=True)
    runs = [("true reward, clip", true),
            (f"random reward p={P}, clip", common.take(rand, range(n))),
            (f"random reward p={P}, no clip", common.take(rand, range(n, 2 * n)))]

    points = []
    for name, out in runs:
        out = {**out, "sft": sft}

        def extra(i, out=out):
            tr, ev = out["train"], out["eval"]
            clipped = np.asarray(tr["actor/pg_clipfrac"][i])
            return {"sampled pass@1 gain": float(ev["eval/pass@1"][i, -1]
                                                 - ev["eval/pass@1"][i, 0]),
                    "greedy gain": float(ev["eval/greedy_pass@1"][i, -1]
                                         - ev["eval/greedy_pass@1"][i, 0]),
                    "train accuracy (last 10 steps)": float(
                        np.mean(tr["reward/verified_mean"][i, -10:])),
                    "entropy (last 10 steps)": float(np.mean(tr["actor/entropy"][i, -10:])),
                    "clipped fraction": float(np.mean(clipped))}

        points.append(common.point({"run": name}, out, seeds, extra=extra))

    c = cfg
    intro = (
        f"Setting: 3-digit addition, 2-layer width-128 model, GRPO without KL, "
        f"{c.train.batch_prompts} prompts x {c.sampling.n} responses per step, "
        f"{c.train.steps} RL steps, {c.train.minibatches} minibatches per batch, lr "
        f"{c.optim.lr}, {c.eval.size} held-out prompts; device-reward path. Warm starts "
        f"(shared by the three runs of a seed): {sft['sft/steps'].tolist()} SFT steps to "
        f"held-out greedy {common.rounded(sft['sft/eval_greedy_pass@1'])}. Gains are "
        "after RL minus before (the warm start); the clipped fraction is the share of tokens "
        "whose gradient the clip removed (pg_clipfrac), averaged over minibatches and steps.")
    text = common.write(args, "Finding 6: spurious (random) rewards and clipping", points,
                        intro=intro, columns=COLUMNS, panels=PANELS, started=started)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
