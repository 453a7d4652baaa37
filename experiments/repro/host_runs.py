"""Host-trainer runs for the reproductions: arms x seeds of one config, one after another in
this process, and their metrics read back.

    host_runs.prepare(first_cfg)                       # before JAX starts (CPU devices, malloc)
    cfg = host_runs.make_config("arith_grpo", {"rl.dynamic_sampling": True}, seed=0)
    record = host_runs.run(cfg, workdir, warm_start_from=other_workdir)

Each run is `lrmjax.train.rl.train` (what `python -m lrmjax.main` runs) in its own workdir.
Runs are sequential on purpose: one run of these shapes already keeps both cores of the
project's CPU busy, so parallel processes would only slow each other down. Arms of one seed
can share the supervised warm start: `run(..., warm_start_from=w)` starts RL from the finished
warm start of workdir `w` (the trainer's `sft.from_workdir`) instead of training it again, so
both arms start RL from the very same params. For the arms to be paired, the configs must
agree on everything the warm start depends on (model, task, sft.*, seed); `run` checks it.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Config groups a shared warm start depends on: arms that differ in one of these cannot share.
WARM_START_GROUPS = ("model", "tokenizer", "data", "sft", "sampling.max_prompt_len",
                     "sampling.max_new_tokens", "seed")


def setup_compile_cache() -> None:
    """XLA's persistent compilation cache (as `experiments/arith_demo.py` uses it): the arms
    of a reproduction compile the same programs, and a rerun compiles nothing."""
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "lrmjax", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def make_config(name: str, sets: Mapping[str, Any], seed: int,
                arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/<name>.py[:arg]` with `sets` applied (key -> value; a str is parsed as on the
    command line, anything else set as its repr), `seed`, no progress bar; validated
    (a bad key or value raises ValueError naming it)."""
    from lrmjax import config as config_lib

    cfg = config_lib.from_file(os.path.join(REPO, "configs", f"{name}.py"), arg)
    for key, value in sets.items():
        config_lib.set_by_path(cfg, key, value if isinstance(value, str) else repr(value))
    cfg.seed = int(seed)
    cfg.train.progress = False
    cfg.train.export_hf = False
    config_lib.validate(cfg)
    return cfg


def prepare(cfg: ml_collections.ConfigDict) -> None:
    """Process settings for `cfg`'s runs (`lrmjax.host.prepare`) and the compile cache; call
    before anything starts JAX's backend."""
    from lrmjax import host

    setup_compile_cache()
    host.prepare(cfg)


def _lookup(cfg: ml_collections.ConfigDict, path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else node


def run(cfg: ml_collections.ConfigDict, workdir: str,
        warm_start_from: str | None = None) -> dict[str, Any]:
    """Trains `cfg` in `workdir` (which must not hold a run yet) and returns its record
    (`read`, plus `wall_s`: the seconds of the whole call, warm start included).

    `warm_start_from`: a finished run's workdir whose warm start this run reuses (module
    docstring). Raises ValueError if its config differs from `cfg` in `WARM_START_GROUPS`."""
    from lrmjax.train import rl

    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise ValueError(f"{workdir} already holds a run; the reproductions start fresh")
    os.makedirs(workdir, exist_ok=True)
    if warm_start_from is not None:
        with open(os.path.join(warm_start_from, "config.json")) as f:
            other = json.load(f)
        for group in WARM_START_GROUPS:
            mine = json.loads(json.dumps(_lookup(cfg, group)))  # tuples -> lists, as in JSON
            if mine != _lookup(other, group):
                raise ValueError(f"cannot share the warm start of {warm_start_from}: config "
                                 f"{group!r} differs")
        cfg = copy.deepcopy(cfg)
        cfg.sft.from_workdir = warm_start_from
    t0 = time.perf_counter()
    rl.train(cfg, workdir)
    record = read(workdir)
    record["wall_s"] = time.perf_counter() - t0
    return record


def run_arms(cfgs: Mapping[tuple[str, int], ml_collections.ConfigDict], arms: Sequence[str],
             seeds: Sequence[int], topic: str,
             report: Callable[[str, int, dict[str, Any]], None] | None = None
             ) -> dict[tuple[str, int], dict[str, Any]]:
    """Runs config `cfgs[arm, seed]` for every seed and arm, one after another in temporary
    workdirs: per seed the first arm trains the warm start and the others reuse it (`run`'s
    `warm_start_from`), so the arms' differences are paired by seed. `report(arm, seed,
    record)` is called after each run (for progress lines). Returns {(arm, seed): record}."""
    prepare(cfgs[arms[0], seeds[0]])
    records: dict[tuple[str, int], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=f"repro_{topic}_") as tmp:
        for seed in seeds:
            first = os.path.join(tmp, f"arm0_seed{seed}")
            for i, arm in enumerate(arms):
                records[arm, seed] = run(cfgs[arm, seed], os.path.join(
                    tmp, f"arm{i}_seed{seed}"), warm_start_from=first if i else None)
                if report is not None:
                    report(arm, seed, records[arm, seed])
    return records


def wall_times(records: Mapping[tuple[str, int], dict[str, Any]], arms: Sequence[str],
               seeds: Sequence[int], names: Sequence[str] | None = None) -> str:
    """The results' sentence of each run's wall time, per seed in the order of `arms`
    (`run_arms`: the first arm's time includes the shared warm start); `names` the arms as
    the sentence calls them (default: `arms`)."""
    names = list(names or arms)
    walls = "; ".join(f"seed {s}: " + ", ".join(f"{records[a, s]['wall_s']:.0f} s" for a in arms)
                      for s in seeds)
    return (f"Wall time of each run ({names[0]}, the shared warm start included; "
            f"{', '.join(names[1:])}): {walls}.")


def read(workdir: str) -> dict[str, Any]:
    """A run's metrics from `workdir/metrics.jsonl`: {'rl': [row per RL step], 'eval': [row
    per held-out evaluation, step 0 first], 'sft': the warm start's summary or {}}; each row a
    dict of floats with its 'step'."""
    rows: dict[str, list[dict[str, float]]] = {"rl": [], "eval": []}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if row.get("phase") in rows:
                rows[row["phase"]].append({k: v for k, v in row.items()
                                           if k not in ("phase", "time")})
    summary_path = os.path.join(workdir, "summary.json")
    sft = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            sft = json.load(f).get("sft", {})
    return {"rl": rows["rl"], "eval": rows["eval"], "sft": sft}


def series(rows: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], values [T]) of `key` over `rows` (rows without it skipped)."""
    kept = [r for r in rows if key in r]
    return (np.array([r["step"] for r in kept], np.int64),
            np.array([r[key] for r in kept], np.float64))


def curves(records: list[dict[str, Any]], train_keys: tuple[str, ...] = ("reward/mean",),
           eval_keys: tuple[str, ...] = ("eval/greedy_pass@1",)) -> dict[str, Any]:
    """The curves of a table point (`experiments/repro/common.py`) from runs of one arm:
    {'train': {key: [runs][steps]}, 'eval': {key: [runs][evaluations], 'eval/step': ...}}.
    Runs of one arm log the same steps, so the lists are rectangular."""
    out: dict[str, Any] = {"train": {}, "eval": {}}
    for key in train_keys:
        out["train"][key] = [series(r["rl"], key)[1].tolist() for r in records]
    for key in eval_keys:
        out["eval"][key] = [series(r["eval"], key)[1].tolist() for r in records]
    out["eval"]["eval/step"] = [series(r["eval"], eval_keys[0])[0].tolist() for r in records]
    return out


# Microscopic shapes for --smoke on top of a config's `:runlocal` variant: a 1-layer width-32
# model and 3 RL steps, so a smoke run costs its compiles and little else.
SMOKE = {"model.overrides.num_layers": 1, "model.overrides.hidden_size": 32,
         "model.overrides.mlp_dim": 64, "model.overrides.num_heads": 2,
         "model.overrides.num_kv_heads": 2, "model.overrides.head_dim": 16,
         "data.train_size": 200, "data.eval_size": 16, "train.steps": 3, "sft.steps": 4,
         "sft.eval_every": 2, "sft.eval_size": 8, "eval.every": 0, "eval.size": 8,
         "eval.k": 0}


def paired(points: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Markdown lines: for each of `columns`, the second point's value minus the first's, paired
    by seed (arms of one seed share the warm start, so the pair removes its variation), as the
    mean [95 % t-interval] over seeds. The points must list the same seeds in the same order."""
    from experiments.repro import common
    from lrmjax.train.sweep import t_interval

    a, b = points
    if a["seeds"] != b["seeds"]:
        raise ValueError(f"paired: seeds differ: {a['seeds']} vs {b['seeds']}")
    name = f"{b['point']['run']} - {a['point']['run']}"
    lines = []
    for column in columns:
        diffs = [rb[column] - ra[column] for ra, rb in zip(a["runs"], b["runs"], strict=True)]
        lines.append(f"- {column}, {name}, paired by seed: "
                     f"{common.cell(diffs, t_interval, '.3f')}")
    return "\n".join(lines)
