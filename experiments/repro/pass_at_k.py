"""Finding 5: does RL widen reasoning or sharpen it? (Yue et al. 2025, arXiv:2504.13837). RL
models beat their base at pass@1, but the base catches up as k grows and overtakes at large k
(pass@256): RL sharpens the distribution toward answers the base could already sample rather
than teaching new ones.

    python experiments/repro/pass_at_k.py [--seeds 0-4] [--samples 256] [--smoke]

Setting: the reproductions' miniature arithmetic experiment (`common.ARITH` on
`configs/arith_grpo.py`, GRPO) on the device-reward path. Per seed, the warm-started (SFT)
model is the base and the same model after RL is the RL model; both sample `--samples`
responses (temperature 1) to each of the first PROMPTS held-out prompts, and pass@k for k = 1,
2, 4, ..., `--samples` is the unbiased estimator of Chen et al. 2021
(`lrmjax.train.evaluate.pass_at_k`: 1 - C(n-c, k) / C(n, k) from n samples with c correct),
averaged over the prompts.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
from experiments.repro import common  # noqa: E402

TOPIC = "pass_at_k"
SETTING = {**common.ARITH, "train.steps": 100}
PROMPTS = 128
CHUNK = 16  # prompts per sampling call (CHUNK x samples rows)


def correct_counts(prog, params, key, n: int, prompts: int, chunk: int):
    """Correct responses among `n` sampled (the config's temperature) for each of the first
    `prompts` held-out prompts: [prompts] int32. Pure; vmap it over params and keys."""
    import jax
    import jax.numpy as jnp

    from lrmjax.sampling import SamplingParams, generate

    data = jax.tree.map(lambda x: x[:prompts], prog.arrays["eval"])
    chunks = jax.tree.map(lambda x: x.reshape(prompts // chunk, chunk, *x.shape[1:]), data)
    sampling = SamplingParams(temperature=prog.cfg.sampling.temperature, n=n,
                              max_new_tokens=prog.cfg.sampling.max_new_tokens)

    def one(args):
        c, k = args
        roll = generate(params, c.prompt_tokens, c.prompt_mask, k, cfg=prog.model_cfg,
                        sampling=sampling, stop_ids=prog.stop_ids,
                        pad_id=prog.tokenizer.pad_id)
        rep = functools.partial(jnp.repeat, repeats=n, axis=0)
        scores = prog.reward_fn(roll.response_tokens, roll.response_mask,
                                rep(c.answer_tokens), rep(c.answer_mask))
        return jnp.sum(scores.reshape(chunk, n) > 0.5, axis=1).astype(jnp.int32)

    keys = jax.random.split(key, prompts // chunk)
    return jax.lax.map(one, (chunks, keys)).reshape(prompts)


def pass_curve(counts: np.ndarray, n: int, ks: list[int]) -> np.ndarray:
    """Mean over prompts of the unbiased pass@k for each k: [len(ks)]. counts: [prompts]."""
    from lrmjax.train.evaluate import pass_at_k

    return np.array([np.mean([pass_at_k(n, int(c), k) for c in counts]) for k in ks])


def main(argv: list[str] | None = None) -> int:
    p = common.parser(TOPIC, __doc__)
    p.add_argument("--samples", type=int, default=None,
                   help="responses per prompt n (the largest k; default 256, smoke 8)")
    args = common.parse_args(TOPIC, __doc__, argv, p)
    n = args.samples or (8 if args.smoke else 256)
    if n < 1 or n & (n - 1):
        raise ValueError(f"--samples {n}: a power of two (k runs over 1, 2, 4, ..., n)")
    started = time.time()
    common.setup()
    cfg = common.config("configs/arith_grpo.py",
                        {**SETTING, **(common.SMOKE if args.smoke else {})})
    prompts = min(PROMPTS, cfg.eval.size)
    chunk = min(CHUNK, prompts)
    seeds = args.seeds
    prog = common.program(cfg, "arith_grpo")
    params, sft = common.warm_starts(prog, seeds, cache=not args.smoke)
    print(f"warm starts done ({time.time() - started:.0f} s)", flush=True)
    out = {**common.rl_runs(prog, params, seeds, keep_params=True), "sft": sft}
    print(f"RL done ({time.time() - started:.0f} s)", flush=True)

    import jax

    count = jax.jit(jax.vmap(functools.partial(correct_counts, prog, n=n, prompts=prompts,
                                               chunk=chunk)))
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), 5))(np.asarray(seeds))
    counts = {"base (warm start)": np.asarray(count(params, keys)),
              "RL (GRPO)": np.asarray(count(out.pop("params"), keys))}  # [seeds, prompts]
    print(f"sampling done ({time.time() - started:.0f} s)", flush=True)
    ks = [2 ** j for j in range(int(np.log2(n)) + 1)]
    curves = {m: np.stack([pass_curve(c[i], n, ks) for i in range(len(seeds))])
              for m, c in counts.items()}  # [seeds, len(ks)]
    shown = [k for k in ks if k in (1, 4, 16, 64, 256) or k == n]
    columns = [f"pass@{k}" for k in shown] + ["prompts solved (any of n)"]
    points = []
    for m, c in counts.items():
        def extra(i, m=m, c=c):
            row = {f"pass@{k}": float(curves[m][i, ks.index(k)]) for k in shown}
            return {**row, "prompts solved (any of n)": float(np.mean(c[i] > 0))}

        points.append(common.point({"model": m}, {"train": {}, "eval": {}}, seeds, final=(),
                                   extra=extra))
    diff = {"point": {"model": "RL - base (paired by seed)"},
            "runs": [{col: points[1]["runs"][i][col] - points[0]["runs"][i][col]
                      for col in columns} for i in range(len(seeds))]}
    base_only = [float(np.mean((counts["base (warm start)"][i] > 0)
                               & (counts["RL (GRPO)"][i] == 0))) for i in range(len(seeds))]
    rl_only = [float(np.mean((counts["RL (GRPO)"][i] > 0)
                             & (counts["base (warm start)"][i] == 0))) for i in range(len(seeds))]
    crossing = [next((k for j, k in enumerate(ks) if curves["base (warm start)"][i, j]
                      >= curves["RL (GRPO)"][i, j]), None) for i in range(len(seeds))]

    def figure(path):
        from lrmjax.train.sweep import t_interval

        fig, axes = common.figure(2)
        ax = axes[0]
        for m, cv in curves.items():
            stats = np.array([t_interval(cv[:, j]) for j in range(len(ks))])
            (line,) = ax.plot(ks, stats[:, 0], marker="o", ms=3, label=m)
            if len(seeds) > 1:
                ax.fill_between(ks, stats[:, 1], stats[:, 2], color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k", fontsize=8)
        ax.set_title(f"held-out pass@k ({prompts} prompts, n = {n})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        gap = curves["RL (GRPO)"] - curves["base (warm start)"]
        stats = np.array([t_interval(gap[:, j]) for j in range(len(ks))])
        axes[1].plot(ks, stats[:, 0], marker="o", ms=3, color="k")
        if len(seeds) > 1:
            axes[1].fill_between(ks, stats[:, 1], stats[:, 2], color="k", alpha=0.15)
        axes[1].axhline(0, color="r", lw=0.8)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("k", fontsize=8)
        axes[1].set_title("pass@k of RL minus base", fontsize=9)
        axes[1].grid(alpha=0.3)
        axes[1].tick_params(labelsize=7)
        common.save(fig, path)

    c = cfg
    intro = (
        f"Setting: 3-digit addition, 2-layer width-128 model; base = the SFT warm start "
        f"({sft['sft/steps'].tolist()} steps, held-out greedy "
        f"{common.rounded(sft['sft/eval_greedy_pass@1'])}), RL = it after "
        f"{c.train.steps} GRPO steps of {c.train.batch_prompts} prompts x {c.sampling.n} "
        f"responses ({c.train.minibatches} minibatches, lr {c.optim.lr}; held-out greedy "
        f"after RL {common.rounded(out['eval']['eval/greedy_pass@1'][:, -1])}); "
        f"n = {n} samples at temperature {c.sampling.temperature} per prompt on the first "
        f"{prompts} held-out prompts; device-reward path.")
    from lrmjax.train.sweep import t_interval

    extra_md = ("Paired difference per seed:\n\n" + common.table([diff], t_interval, columns)
                + f"\n\nPrompts solved (any of n) by the base only: "
                f"{common.cell(base_only, t_interval, '.3f')}; by the RL model only: "
                f"{common.cell(rl_only, t_interval, '.3f')}. Smallest k at which the base's "
                f"pass@k reaches the RL model's, per seed: {crossing} (None: never up to k = "
                f"{n}).")
    text = common.write(args, "Finding 5: pass@k of the base and the RL model", points,
                        intro=intro, extra_md=extra_md, columns=columns, started=started,
                        figure=figure,
                        data={"ks": ks, "pass_at_k": {m: v.tolist() for m, v in curves.items()},
                              "counts": {m: v.tolist() for m, v in counts.items()},
                              "eval": {k: v.tolist() for k, v in out["eval"].items()}})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
