"""What every reproduction script (`experiments/repro/<topic>.py`) shares: its command line,
running whole runs on the device-reward path over seeds, the table of final metrics with 95 %
t-intervals over seeds, curves with bands, and the files it writes.

    args = common.parse_args("entropy", __doc__, argv)       # --smoke, --seeds, --out
    common.setup()                                            # before JAX starts
    cfg = common.config("configs/arith_grpo.py", {"train.steps": 100})
    runs = common.run(cfg, args.seeds)                        # one vmapped program
    point = common.point({"algorithm": "grpo"}, runs, args.seeds)
    common.write(args, "Title", [point], intro="...")         # results.md, curves.png, runs.json

A *point* is one row of the table: {'point': {name: value} (what distinguishes the row),
'seeds': [...], 'runs': [per run {column: value}], 'curves': {'train': {metric: [seeds][steps]},
'eval': {metric: [seeds][evaluations]}}}. `experiments/sweep.py` writes the same points with
the same `table` and `plot`.

Scripts import this module as `experiments.repro.common` (each puts the repo on sys.path;
`experiments` is a namespace package, and experiments/benchmarks has a `common` of its own).
Nothing here imports JAX at import time: `setup` must run before the backend starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "experiments", "repro", "results")

# Final metrics of a run: (column, where: 'eval' last row, 'before' first eval row, 'sft'
# summary, 'train' mean of the last 10 steps), metric key.
FINAL = (("held-out greedy pass@1", "eval", "eval/greedy_pass@1"),
         ("held-out sampled pass@1", "eval", "eval/pass@1"),
         ("greedy pass@1 before RL", "before", "eval/greedy_pass@1"),
         ("train reward (last 10 steps)", "train", "reward/mean"),
         ("SFT steps", "sft", "sft/steps"))

# Curves of `plot`: (where, metric key, panel title).
PANELS = (("train", "reward/mean", "train reward"),
          ("eval", "eval/greedy_pass@1", "held-out greedy pass@1"),
          ("eval", "eval/pass@1", "held-out sampled pass@1"))

# Columns shown as whole numbers.
INTEGER_COLUMNS = frozenset({"SFT steps"})


# ------------------------------------------------------------------ command line


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> [0..7]; '0,2,5' -> [0, 2, 5]; '1-3,7' -> [1, 2, 3, 7]. ValueError naming
    --seeds on anything else."""
    out = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected e.g. 0-4 or 0,2,5") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"--seeds {text!r}: expected distinct non-negative seeds")
    return out


def parser(topic: str, doc: str | None) -> argparse.ArgumentParser:
    """The shared options: --smoke, --seeds (default 0-4), --out (default
    experiments/repro/results/<topic>/). A script adds its own before `parse_args`."""
    p = argparse.ArgumentParser(prog=f"experiments/repro/{topic}.py",
                                description=(doc or "").split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="microscopic shapes, 2 seeds: checks the script runs (seconds)")
    p.add_argument("--seeds", default=None, help="e.g. 0-4 or 0,1,2 (default 0-4; smoke: 0-1)")
    p.add_argument("--out", default=None,
                   help=f"output folder (default experiments/repro/results/{topic}/; smoke: "
                        f"workdirs/repro_smoke/{topic}/)")
    return p


def parse_args(topic: str, doc: str | None, argv: Sequence[str] | None = None,
               p: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parses `argv` with `parser(topic, doc)` (or `p`, made by it); `args.seeds` becomes a
    list of ints, `args.out` a folder (created), `args.topic` and `args.argv` are kept for the
    results' command line."""
    p = p or parser(topic, doc)
    args = p.parse_args(list(argv) if argv is not None else None)
    args.seeds = parse_seeds(args.seeds or ("0-1" if args.smoke else "0-4"))
    if args.out is None:
        args.out = (os.path.join(REPO, "workdirs", "repro_smoke", topic) if args.smoke
                    else os.path.join(RESULTS, topic))
    os.makedirs(args.out, exist_ok=True)
    args.topic = topic
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def setup() -> None:
    """Process settings before JAX starts: one CPU device (the demo shapes run fastest
    unsplit) unless XLA_FLAGS already says otherwise (the tests fake 8), and the persistent
    compilation cache. Harmless once JAX has started (then it changes nothing)."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=1".strip()
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


# ------------------------------------------------------------------ configs and runs

# The miniature arithmetic experiment the reproductions share, on top of configs/arith_grpo.py
# (3-digit addition, the 2-layer CPU-tiny model, SFT warm start to ~35 % held-out greedy
# accuracy): 16 prompts x 8 responses per step, two minibatches per batch (so the second
# optimizer step is off-policy and ratio clipping acts), a 256-prompt held-out set.
ARITH = {"train.steps": 60, "train.batch_prompts": 16, "sampling.n": 8, "train.minibatches": 2,
         "optim.warmup_steps": 5, "optim.critic_lr": 1e-3, "optim.critic_warmup_steps": 5,
         "data.train_size": 5000, "eval.size": 256, "eval.batch_size": 256, "eval.every": 10,
         "sft.eval_size": 256}

# Microscopic shapes for --smoke: a 1-layer width-32 model, a few steps, a handful of prompts.
SMOKE = {"model.overrides.num_layers": 1, "model.overrides.hidden_size": 32,
         "model.overrides.mlp_dim": 64, "model.overrides.num_heads": 2,
         "model.overrides.num_kv_heads": 2, "model.overrides.head_dim": 16,
         "data.train_size": 200, "eval.size": 8, "eval.batch_size": 8, "eval.every": 2,
         "train.steps": 3, "train.batch_prompts": 4, "sampling.n": 4, "sft.steps": 4,
         "sft.eval_every": 2, "sft.eval_size": 8, "sft.batch_size": 8}


def config(path: str, overrides: Mapping[str, Any] | None = None, arg: str | None = None
           ) -> Any:
    """The config of file `path` (relative to the repo or absolute; `arg` its argument) with
    `overrides` {dotted key: value} set (`config.set_by_path`: an unknown key or a value of
    the wrong type raises ValueError naming the key)."""
    from lrmjax import config as config_lib

    cfg = config_lib.from_file(path if os.path.isabs(path) else os.path.join(REPO, path), arg)
    for key, value in (overrides or {}).items():
        config_lib.set_by_path(cfg, key, value if isinstance(value, str) else repr(value))
    return cfg


def with_algorithm(cfg: Any, name: str, **knobs: Any) -> Any:
    """`cfg` with its RL knobs replaced by preset `name`'s (`algorithms.get(name, **knobs)`)."""
    from lrmjax.rl import algorithms

    cfg = cfg.copy_and_resolve_references()
    cfg.rl = algorithms.get(name, **knobs)
    cfg.algorithm = name
    return cfg


def program(cfg: Any, name: str = "the config") -> Any:
    """`sweep.Program(cfg, name)`: host-side data built once."""
    from lrmjax.train import sweep

    return sweep.Program(cfg, name)


def warm_starts(prog: Any, seeds: Sequence[int], cache: bool = True
                ) -> tuple[Any, dict[str, np.ndarray]]:
    """Each seed's initial params and supervised warm start (`Program.warm_start`): (params
    with a leading seed axis [S, ...], summary {sft/...: [S]}).

    One compiled warm start called once per seed, not a vmap: the warm start stops at a target
    accuracy, and a vmapped `while_loop` would run every seed as long as the slowest. With
    `cache`, each seed's result is kept in workdirs/repro_cache/ under a hash of everything the
    warm start reads (the config less its RL, training and reward groups), so the scripts of
    `make repro` share their warm starts (the same values as recomputing them: it is
    deterministic).
    """
    import hashlib
    import pickle

    import jax
    import jax.numpy as jnp

    c = prog.cfg.to_dict()
    for group in ("rl", "train", "reward", "algorithm"):
        c.pop(group, None)
    c["optim"] = {"grad_clip": c["optim"]["grad_clip"]}
    digest = hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()
    folder = os.path.join(REPO, "workdirs", "repro_cache")
    fn = None
    results = []
    for seed in seeds:
        path = os.path.join(folder, f"warm_{digest[:16]}_{seed}.pkl")
        if cache and os.path.exists(path):
            with open(path, "rb") as f:
                results.append(pickle.load(f))
            continue
        fn = fn or jax.jit(lambda a, s: prog.warm_start(a, s, {}))
        result = jax.device_get(fn(prog.arrays, jnp.asarray(seed, jnp.int32)))
        if cache:
            os.makedirs(folder, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                pickle.dump(result, f)
            os.replace(path + ".tmp", path)
        results.append(result)
    params, summary = jax.tree.map(lambda *xs: np.stack(xs), *results)
    return jax.tree.map(jnp.asarray, params), summary


def rl_runs(prog: Any, params: Any, seeds: Sequence[int],
            hparams: Mapping[str, Sequence[float]] | None = None, keep_params: bool = False
            ) -> dict[str, Any]:
    """`Program.rl` of run i from params[i] (leading axis [S]) with seed seeds[i] and
    hyperparameters hparams[k][i] (`sweep.TRACEABLE`), vmapped in one program; as numpy
    {'train': [S, steps], 'eval': [S, evaluations]} and, with `keep_params`, 'params': the
    policies after RL [S, ...], left on device."""
    import functools

    import jax
    import jax.numpy as jnp

    hp = {k: jnp.asarray(v, jnp.float32) for k, v in (hparams or {}).items()}
    fn = jax.jit(jax.vmap(functools.partial(prog.rl, keep_params=keep_params),
                          in_axes=(None, 0, 0, 0)))
    out = fn(prog.arrays, params, jnp.asarray(seeds, jnp.int32), hp)
    kept = out.pop("params", None)
    out = jax.device_get(out)
    return {**out, "params": kept} if keep_params else out


def run(cfg: Any, seeds: Sequence[int], hparams: Mapping[str, Sequence[float]] | None = None,
        name: str = "the config") -> dict[str, Any]:
    """Whole runs of `cfg` (warm start and RL), run i with seed seeds[i] and hparams[k][i],
    in one vmapped program (`Program.run_many`); as numpy {'train', 'eval', 'sft'}."""
    return program(cfg, name).run_many(seeds, hparams)


def take(out: Mapping[str, Any], idx: Sequence[int]) -> dict[str, Any]:
    """Runs `idx` of a batched output (every leaf's leading axis)."""
    import jax

    return jax.tree.map(lambda x: np.asarray(x)[np.asarray(idx)], dict(out))


# ------------------------------------------------------------------ results


def final_metrics(out: Mapping[str, Any], i: int, final: Sequence[tuple[str, str, str]] = FINAL
                  ) -> dict[str, float]:
    """Run i's values of the `final` columns (those whose metric `out` has)."""
    row = {}
    for column, where, key in final:
        if where == "eval" and key in out["eval"]:
            row[column] = float(out["eval"][key][i, -1])
        elif where == "before" and key in out["eval"]:
            row[column] = float(out["eval"][key][i, 0])
        elif where == "train" and key in out["train"]:
            row[column] = float(np.mean(out["train"][key][i, -10:]))
        elif where == "sft" and key in out.get("sft", {}):
            row[column] = float(out["sft"][key][i])
    return row


def point(label: Mapping[str, Any], out: Mapping[str, Any], seeds: Sequence[int],
          final: Sequence[tuple[str, str, str]] = FINAL,
          extra: Callable[[int], Mapping[str, float]] | None = None) -> dict[str, Any]:
    """One table row from runs 0..S-1 of `out` (seeds `seeds`): each run's `final_metrics`
    plus `extra(i)`, and every train / eval curve."""
    runs = [{**final_metrics(out, i, final), **(extra(i) if extra else {})}
            for i in range(len(seeds))]
    curves = {where: {k: np.asarray(v).tolist() for k, v in out[where].items()}
              for where in ("train", "eval") if where in out}
    return {"point": dict(label), "seeds": list(seeds), "runs": runs, "curves": curves}


def cell(values: Sequence[float], t_interval: Callable, fmt: str) -> str:
    """mean [low, high] over the finite values; '(k/n)' when only k of n runs have one (e.g.
    a threshold some runs never reach)."""
    x = np.asarray(values, np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return f"- (0/{x.size})"
    mean, lo, hi = t_interval(finite)
    text = f"{mean:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if np.isfinite(lo) else f"{mean:{fmt}}"
    return text + (f" ({finite.size}/{x.size})" if finite.size < x.size else "")


def table(points: Sequence[Mapping[str, Any]], t_interval: Callable,
          columns: Sequence[str] | None = None) -> str:
    """Markdown: one row per point, its label keys first, then each column (default: every
    column a run has, in first-seen order) as mean [95 % interval low, high] over the runs."""
    if columns is None:
        columns = list(dict.fromkeys(c for p in points for r in p["runs"] for c in r))
    keys = list(dict.fromkeys(k for p in points for k in p["point"]))
    lines = ["| " + " | ".join(keys + ["seeds"] + list(columns)) + " |",
             "|" + "---|" * (len(keys) + 1 + len(columns))]
    for p in points:
        cells = [str(p["point"].get(k, "")) for k in keys] + [str(len(p["runs"]))]
        for c in columns:
            fmt = ".0f" if c in INTEGER_COLUMNS else ".3f"
            cells.append(cell([r.get(c, np.nan) for r in p["runs"]], t_interval, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def label(p: Mapping[str, Any]) -> str:
    """A point's legend label: its values ('algorithm' and 'run' bare, others key=value)."""
    return ", ".join(f"{v}" if k in ("algorithm", "run") else f"{k}={v}"
                     for k, v in p["point"].items()) or "config"


def draw(ax: Any, points: Sequence[Mapping[str, Any]], t_interval: Callable, where: str,
         key: str, title: str, xlabel: str = "RL step") -> None:
    """On matplotlib axes `ax`: curve `key` of `where` ('train' against the step, 'eval'
    against eval/step), the mean over seeds of each point with its t-interval as a band."""
    for p in points:
        ys = np.asarray(p["curves"][where][key], np.float64)  # [seeds, points]
        xs = (np.arange(1, ys.shape[1] + 1) if where == "train"
              else np.asarray(p["curves"]["eval"]["eval/step"])[0])
        band(ax, xs, ys, label(p), t_interval)
    style(ax, title, xlabel)


def band(ax: Any, xs: Any, ys: Any, name: str, t_interval: Callable) -> None:
    """The mean over seeds of `ys` [seeds, points] against `xs` [points], labelled `name`,
    with its t-interval as a band (none for one seed)."""
    ys = np.asarray(ys, np.float64)
    stats = np.array([t_interval(ys[:, j]) for j in range(ys.shape[1])])
    (line,) = ax.plot(xs, stats[:, 0], label=name, lw=1.2)
    if ys.shape[0] > 1:
        ax.fill_between(xs, stats[:, 1], stats[:, 2], color=line.get_color(), alpha=0.15)


def style(ax: Any, title: str, xlabel: str = "RL step") -> None:
    """The panels' common look: small title and labels, a light grid."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def figure(n: int) -> tuple[Any, Any]:
    """A matplotlib figure of n panels in a row (Agg backend): (fig, axes [n])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.3), squeeze=False)
    return fig, axes[0]


def save(fig: Any, path: str) -> None:
    """Saves `fig` small (80 dpi PNG, `shrink_png`) and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    shrink_png(path)


def shrink_png(path: str) -> None:
    """Rewrites the PNG at `path` with a 256-colour palette (a line plot loses nothing visible;
    the file shrinks about 3x, keeping committed figures small)."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def plot(points: Sequence[Mapping[str, Any]], t_interval: Callable, path: str,
         panels: Sequence[tuple[str, str, str]] = PANELS, xlabel: str = "RL step") -> None:
    """One panel per (where, metric, title) of `panels` that the points have (`draw`)."""
    panels = [p for p in panels if p[1] in points[0]["curves"].get(p[0], {})]
    fig, axes = figure(len(panels))
    for ax, (where, key, title) in zip(axes, panels, strict=True):
        draw(ax, points, t_interval, where, key, title, xlabel)
    axes[-1].legend(fontsize=6)
    save(fig, path)


def rounded(values: Any, digits: int = 3) -> str:
    """'[0.363, 0.434]': an array's values rounded for a sentence."""
    return "[" + ", ".join(f"{float(x):.{digits}f}" for x in np.ravel(values)) + "]"


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces `args` (as given, relative to the repo)."""
    return " ".join([f"python experiments/repro/{args.topic}.py", *args.argv]).strip()


def write(args: argparse.Namespace, title: str, points: Sequence[Mapping[str, Any]],
          intro: str = "", extra_md: str = "", columns: Sequence[str] | None = None,
          panels: Sequence[tuple[str, str, str]] = PANELS, started: float | None = None,
          figure: Callable[[str], None] | None = None, data: Mapping[str, Any] | None = None
          ) -> str:
    """Writes `results.md` (title, command, wall time and load, `intro`, the `table` of the
    points, `extra_md`), `curves.png` (`plot` of `panels`, or `figure(path)`) and `runs.json`
    (the points, plus `data`) into args.out; returns the markdown."""
    from lrmjax.train.sweep import t_interval

    wall = f"{time.time() - started:.0f} s" if started is not None else "?"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    text = (f"# {title}\n\n```\n{command(args)}\n```\n\n"
            f"Wall time {wall} (load average at the end {load}; {os.cpu_count()} CPU cores). "
            "Each cell: mean over seeds [95 % confidence interval, Student's t over the seeds"
            "].\n\n" + (intro.strip() + "\n\n" if intro else "")
            + table(points, t_interval, columns) + "\n"
            + ("\n" + extra_md.strip() + "\n" if extra_md else ""))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "runs.json"), "w") as f:
        json.dump({"points": list(points), **(data or {})}, f, default=_json_default)
    path = os.path.join(args.out, "curves.png")
    if figure is not None:
        figure(path)
    else:
        plot(points, t_interval, path, panels)
    return text


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray | np.generic):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x)}")
