"""Finding 1: do the popular critic-free algorithms (and PPO with a critic) perform alike on the
same task and sample budget?

    python experiments/repro/algorithms.py [--seeds 0-4] [--algorithms grpo,rloo] [--smoke]

Yue et al. ("Does RL really incentivize reasoning", arXiv:2504.13837) and Liu et al. ("Tricks
or Traps?", arXiv:2508.08221) report that GRPO-style variants end up close to each other. Here:
`configs/arith_grpo.py`'s experiment (3-digit addition, the 2-layer CPU-tiny model, a warm
start by SFT to ~35 % held-out greedy accuracy) shrunk to fit, on the device-reward path
(`lrmjax/train/pure.py`). Each seed's warm start is made once and every algorithm starts RL
from it (a paired comparison); every algorithm then gets the same prompts per step, responses
per prompt, steps (so the same number of samples), optimizer, learning rate and update schedule
(two minibatches per batch, so the second step is off-policy and clipping acts). Each
algorithm is its preset (`lrmjax.rl.algorithms`, KL settings included) except DAPO, which runs
without dynamic sampling and the overlong penalty (host-side only; `--algorithms` names the
presets).

Reports per algorithm: held-out greedy and sampled pass@1 after RL, the gain over the warm
start, and the samples (responses generated) until held-out greedy pass@1 first reaches
THRESHOLD at an evaluation (runs that never do are counted apart).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
from experiments.repro import common  # noqa: E402

TOPIC = "algorithms"
# (label, preset, overrides): the presets the field compares. DAPO without the knobs the
# device-reward path does not have (dynamic sampling refills batches on the host; the overlong
# penalty is host-side shaping).
ALGORITHMS = (("GRPO", "grpo", {}),
              ("Dr.GRPO", "dr_grpo", {}),
              ("DAPO*", "dapo", {"dynamic_sampling": False, "overlong_buffer_len": 0}),
              ("RLOO", "rloo", {}),
              ("REINFORCE++-baseline", "reinforce_pp_baseline", {}),
              ("GSPO", "gspo", {}),
              ("CISPO", "cispo", {}),
              ("GPG", "gpg", {}),
              ("Lite PPO", "lite_ppo", {}),
              ("PPO (critic)", "ppo", {}))
SMOKE_ALGORITHMS = ("grpo", "gspo", "ppo")

# The shrunk experiment: the reproductions' miniature arithmetic setting.
SETTING = dict(common.ARITH)
# Held-out greedy pass@1 that counts as "reached" (fixed before any run: about halfway from
# the warm start's 0.35 to the 0.7-0.9 the 400-step demo reaches).
THRESHOLD = 0.5

COLUMNS = ("held-out greedy pass@1", "held-out sampled pass@1", "greedy gain over warm start",
           "train reward (last 10 steps)", f"samples to greedy pass@1 >= {THRESHOLD}")


def samples_to_threshold(greedy: np.ndarray, steps: np.ndarray, per_step: int,
                         threshold: float) -> float:
    """Responses generated before the first evaluation with greedy >= threshold: steps[j] *
    per_step at the first such j, nan if none. greedy, steps: [evaluations]."""
    hit = np.flatnonzero(np.asarray(greedy) >= threshold)
    return float(steps[hit[0]] * per_step) if hit.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = common.parser(TOPIC, __doc__)
    p.add_argument("--algorithms", default=None,
                   help="comma-separated preset names (default: all ten; smoke: "
                        + ",".join(SMOKE_ALGORITHMS) + ")")
    args = common.parse_args(TOPIC, __doc__, argv, p)
    known = {preset: (label, kw) for label, preset, kw in ALGORITHMS}
    names = (args.algorithms.split(",") if args.algorithms
             else list(SMOKE_ALGORITHMS) if args.smoke else list(known))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--algorithms: {unknown} are not among {sorted(known)}")
    started = time.time()
    common.setup()
    setting = {**SETTING, **(common.SMOKE if args.smoke else {})}
    cfg = common.config("configs/arith_grpo.py", setting)
    per_step = cfg.train.batch_prompts * cfg.sampling.n

    base = common.program(cfg, "arith_grpo")
    params, sft = common.warm_starts(base, args.seeds, cache=not args.smoke)
    print(f"warm starts: {sft['sft/steps'].tolist()} steps, greedy "
          f"{common.rounded(sft['sft/eval_greedy_pass@1'])} "
          f"({time.time() - started:.0f} s)", flush=True)
    points = []
    for name in names:
        label, kw = known[name]
        t0 = time.time()
        prog = common.program(common.with_algorithm(cfg, name, **kw), name)
        out = {**common.rl_runs(prog, params, args.seeds), "sft": sft}
        ev = out["eval"]

        def extra(i, ev=ev):
            greedy = ev["eval/greedy_pass@1"][i]
            return {"greedy gain over warm start": float(greedy[-1] - greedy[0]),
                    f"samples to greedy pass@1 >= {THRESHOLD}": samples_to_threshold(
                        greedy, ev["eval/step"][i], per_step, THRESHOLD)}

        points.append(common.point({"algorithm": label}, out, args.seeds, extra=extra))
        print(f"{label}: greedy {common.rounded(ev['eval/greedy_pass@1'][:, -1])} "
              f"({time.time() - t0:.0f} s)", flush=True)

    c = cfg
    intro = (
        f"Setting: `configs/arith_grpo.py` (3-digit addition, 2-layer width-128 model) with "
        f"{c.train.batch_prompts} prompts x {c.sampling.n} responses per step, "
        f"{c.train.steps} RL steps ({c.train.steps * per_step} samples), "
        f"{c.train.minibatches} minibatches per batch, lr {c.optim.lr} (cosine, "
        f"{c.optim.warmup_steps} warm-up steps), held-out set of {c.eval.size} prompts "
        f"evaluated every {c.eval.every} steps; device-reward path, one program per "
        "algorithm (seeds vmapped). Each seed's warm start (SFT to "
        f"{c.sft.target_accuracy} held-out greedy accuracy: "
        f"{common.rounded(sft['sft/eval_greedy_pass@1'])} after "
        f"{sft['sft/steps'].tolist()} steps) is shared by all algorithms. DAPO* = DAPO's "
        "clip-higher and token-mean loss without dynamic sampling or the overlong penalty. "
        f"The samples column counts runs reaching {THRESHOLD} as (k/n) when some do not.")
    text = common.write(args, "Finding 1: algorithms on one task and sample budget", points,
                        intro=intro, columns=COLUMNS, started=started)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
