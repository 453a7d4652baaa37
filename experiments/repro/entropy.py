"""Finding 7: the entropy mechanism (Cui et al. 2025, arXiv:2505.22617). Through RL, policy
entropy H falls and held-out performance R rises along R = -a exp(H) + b; KL-Cov (a KL penalty
on the few tokens with the largest covariance of log-probability and advantage) keeps entropy
up and improves the final performance.

    python experiments/repro/entropy.py [--seeds 0-4] [--smoke]

Setting: the reproductions' miniature arithmetic experiment (`common.ARITH` on
`configs/arith_grpo.py`) on the device-reward path. Each seed's warm start is shared by three
runs from it: GRPO (the PPO clip, as configured), the KL-Cov loss with its coefficient 0 (the
unclipped policy gradient KL-Cov is built on: the ablation) and KL-Cov (coefficient 1). The
last two are one program, the coefficient vmapped (`rl.kl_cov_coef`). The paper penalizes
0.2 % of a batch's tokens (7B models, millions of tokens per batch); a minibatch here has ~300
response tokens, where 0.2 % is under one token, so KL_COV_RATIO penalizes 2 %.

The fit: per GRPO run, (H, R) at each evaluation, R the held-out sampled pass@1 and H the
policy entropy (token mean) of the RL step right after it; `scipy.optimize.curve_fit` of
R = -a exp(H) + b, reporting a, b and R^2 per run (mean and interval over seeds) and one fit
pooled over the runs.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
from experiments.repro import common  # noqa: E402

TOPIC = "entropy"
SETTING = {**common.ARITH, "train.steps": 100}
KL_COV_RATIO = 0.02
FIT_COLUMNS = ("fit a", "fit b", "fit R^2")
COLUMNS = ("held-out sampled pass@1", "held-out greedy pass@1", "entropy (last 10 steps)",
           "entropy (first 10 steps)") + FIT_COLUMNS


def fit(entropy: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """Least-squares fit of score = -a exp(entropy) + b: (a, b, R^2), R^2 = 1 - SS_res /
    SS_tot (nan when the scores do not vary; all nan when the fit does not converge).
    entropy, score: [points]."""
    from scipy.optimize import curve_fit

    h, r = np.asarray(entropy, np.float64), np.asarray(score, np.float64)
    try:
        (a, b), _ = curve_fit(lambda x, a, b: -a * np.exp(x) + b, h, r,
                              p0=(0.1, float(r.max())))
    except RuntimeError:  # no convergence: reported as a missing fit
        return float("nan"), float("nan"), float("nan")
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    ss_res = float(np.sum((r - (-a * np.exp(h) + b)) ** 2))
    return float(a), float(b), (1.0 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def pairs(out: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Run i's (H, R) at each evaluation: the entropy of the RL step after it (the last
    step's for the final evaluation) and held-out sampled pass@1. [evaluations] each."""
    entropy = np.asarray(out["train"]["actor/entropy"][i])
    steps = np.minimum(np.asarray(out["eval"]["eval/step"][i]), entropy.shape[0] - 1)
    return entropy[steps], np.asarray(out["eval"]["eval/pass@1"][i])


def main(argv: list[str] | None = None) -> int:
    args = common.parse_args(TOPIC, __doc__, argv)
    started = time.time()
    common.setup()
    cfg = common.config("configs/arith_grpo.py",
                        {**SETTING, **(common.SMOKE if args.smoke else {})})
    seeds = args.seeds
    base = common.program(cfg, "arith_grpo")
    params, sft = common.warm_starts(base, seeds, cache=not args.smoke)
    print(f"warm starts done ({time.time() - started:.0f} s)", flush=True)
    grpo = {**common.rl_runs(base, params, seeds), "sft": sft}
    print(f"GRPO done ({time.time() - started:.0f} s)", flush=True)
    kl_cov = common.program(common.with_algorithm(cfg, "kl_cov", kl_cov_ratio=KL_COV_RATIO),
                            "kl_cov")
    import jax

    both = common.rl_runs(kl_cov, jax.tree.map(lambda x: np.concatenate([x, x]), params),
                          seeds + seeds, {"rl.kl_cov_coef": [0.0] * len(seeds)
                                          + [1.0] * len(seeds)})
    print(f"KL-Cov done ({time.time() - started:.0f} s)", flush=True)
    n = len(seeds)
    runs = [("GRPO (clip 0.2)", grpo),
            ("unclipped PG (KL-Cov coef 0)", {**common.take(both, range(n)), "sft": sft}),
            (f"KL-Cov (coef 1, {KL_COV_RATIO:.0%} of tokens)",
             {**common.take(both, range(n, 2 * n)), "sft": sft})]

    fits = {}
    points = []
    for name, out in runs:
        fits[name] = [fit(*pairs(out, i)) for i in range(n)]

        def extra(i, out=out, name=name):
            ent = np.asarray(out["train"]["actor/entropy"][i])
            row = {"entropy (first 10 steps)": float(ent[:10].mean()),
                   "entropy (last 10 steps)": float(ent[-10:].mean())}
            if name == runs[0][0]:
                row.update(zip(FIT_COLUMNS, fits[name][i], strict=True))
            return row

        points.append(common.point({"run": name}, out, seeds, extra=extra))

    h_all, r_all = (np.concatenate(x) for x in zip(*[pairs(grpo, i) for i in range(n)],
                                                   strict=True))
    pooled = fit(h_all, r_all)

    def figure(path):
        from lrmjax.train.sweep import t_interval

        fig, axes = common.figure(3)
        common.draw(axes[0], points, t_interval, "train", "actor/entropy", "policy entropy")
        common.draw(axes[1], points, t_interval, "eval", "eval/pass@1",
                    "held-out sampled pass@1")
        axes[1].legend(fontsize=6)
        ax = axes[2]
        for i in range(n):
            h, r = pairs(grpo, i)
            ax.scatter(h, r, s=8, label=f"seed {seeds[i]}")
        xs = np.linspace(h_all.min(), h_all.max(), 50)
        ax.plot(xs, -pooled[0] * np.exp(xs) + pooled[1], "k--", lw=1,
                label=f"-{pooled[0]:.3f} exp(H) + {pooled[1]:.3f}")
        ax.set_title(f"GRPO: R against H (pooled R^2 = {pooled[2]:.2f})", fontsize=9)
        ax.set_xlabel("policy entropy H (nats / token)", fontsize=8)
        ax.set_ylabel("held-out sampled pass@1", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        common.save(fig, path)

    c = cfg
    intro = (
        f"Setting: 3-digit addition, 2-layer width-128 model, {c.train.batch_prompts} prompts x "
        f"{c.sampling.n} responses per step, {c.train.steps} RL steps, {c.train.minibatches} "
        f"minibatches per batch, lr {c.optim.lr}, held-out sampled pass@1 on {c.eval.size} "
        f"prompts every {c.eval.every} steps; device-reward path. Warm starts (shared by the "
        f"three runs of a seed): {sft['sft/steps'].tolist()} SFT steps to held-out greedy "
        f"{common.rounded(sft['sft/eval_greedy_pass@1'])}. Fit columns (GRPO rows "
        "only): R = -a exp(H) + b per run over its evaluations.")
    extra_md = (f"Pooled fit over the GRPO runs' {h_all.size} (H, R) points: a = "
                f"{pooled[0]:.4f}, b = {pooled[1]:.4f}, R^2 = {pooled[2]:.3f}; the fit's "
                f"ceiling at H = 0 is -a + b = {pooled[1] - pooled[0]:.3f}.")
    text = common.write(args, "Finding 7: the entropy mechanism", points, intro=intro,
                        extra_md=extra_md, columns=COLUMNS, started=started, figure=figure,
                        data={"fits": fits, "pooled_fit": pooled})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
