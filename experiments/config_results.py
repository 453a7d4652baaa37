"""Runs every config under configs/ and writes the README's table of what each one learns.

    python experiments/config_results.py --write-readme          # `make config-results`
    python experiments/config_results.py --configs arith_grpo arith_ppo --seeds 0
    python experiments/config_results.py --from-json experiments/config_results.json \
        --write-readme                                           # redraw, no runs
    python experiments/config_results.py --configs calc_tool_grpo --update --write-readme

Procedural configs (neither variant names `model.hf_path`) run in full; the real-model
configs run at `:runlocal` only (a tiny random checkpoint: they run, they learn nothing worth
reporting), on the first seed. Each run is its own `python -m lrmjax.main` process, one at a
time, in `<workdir-root>/<config>/seed<k>` (its output in `seed<k>.log` beside it), timed
around the whole command (start-up and compiles included). A workdir that already holds a
run resumes it (lrmjax's rule), and its row says so. A run that fails is reported in the
table and the JSON, the others still run, and the script exits with status 1.

The table compares held-out metrics at RL step 0 (after the SFT warm start) with the end of
RL (`run_results.held_out`); the verdict is on the mean change of greedy pass@1 over seeds.
`FLOORS` holds the rise each procedural config must keep: `tests/test_config_results.py`
(marked slow, so in `make test-all`) runs each config in full on seed 0 and fails below it.

The JSON (`--json`) keeps what the table is drawn from:
    {"schema": 1, "invocation": "python experiments/config_results.py --write-readme",
     "commit": "3e5fec7", "dirty": false, "date": "2026-12-07T12:00:00Z",
     "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "jax": "0.10.2", "load_avg": [2.1, 3.4]},
     "seeds": [0, 1, 2], "duration_s": 1800.0,
     "runs": [{"config": "arith_grpo", "kind": "procedural", "variant": "full", "seed": 0,
               "command": [...], "returncode": 0, "error": null, "resumed": false,
               "wall_s": 57.1, "before": {"step": 0, "greedy_pass@1": 0.32, ...},
               "after": {"step": 400, ...}, "log": ".../seed0.log", "log_tail": null}, ...]}
`error` is null or why the run failed ("exit 1", "killed by signal 9", "timed out after
3600 s", no evaluation logged), with the end of its output in `log_tail`;
`before`/`after` are `run_results.held_out`'s dicts (null where missing); `dirty` is whether
tracked files other than README.md and this JSON differed from the commit;
`load_avg` is the 1-minute load average before the first run and after the last.

`--update` reruns only the named configs and replaces their runs in the existing JSON, the
others kept as they were; it appends to the JSON's `updates` list
    {"invocation": ..., "commit": ..., "dirty": ..., "date": ..., "configs": [...],
     "machine": {...}, "duration_s": ...}
and the table's opening paragraph names each update's commit and configs, so every row says
which code produced it.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence

import run_results
from benchmarks.common import cpu_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
JSON = os.path.join(REPO, "experiments", "config_results.json")
BEGIN, END = "<!-- config-results:begin -->", "<!-- config-results:end -->"
REPRODUCE = "python experiments/config_results.py --write-readme"

# The rise of held-out greedy pass@1 (fraction, 0.10 = 10 points) each procedural config must
# keep from RL step 0 to its end, seed 0, in tests/test_config_results.py. Set from this
# script's table: below what every measured seed gave, with room for another machine's float
# rounding.
FLOORS = {  # from experiments/config_results.json: at most seed 0's rise, which the test reruns
    "arith_dapo": 0.30,
    "arith_grpo": 0.30,
    "arith_ppo": 0.45,
    "calc_tool_grpo": 0.25,
    "countdown_grpo": 0.10,
    "guess_grpo": 0.10,
    "mixture_grpo": 0.15,
}
# A mean change of greedy pass@1 within this band is 'flat': with 200-500 held-out problems a
# binomial standard error is up to 2-3.5 points.
FLAT_BAND = 0.03


# ------------------------------------------------------------------------------ the configs

def config_names() -> list[str]:
    """Every config under configs/, by file name without `.py`, sorted."""
    return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs",
                                                                             "*.py")))


def kind(name: str) -> str:
    """'real-model' for a config whose full or `:runlocal` variant names `model.hf_path` (the
    full one leaves it to the launch command, `:runlocal` makes a tiny random one), else
    'procedural'."""
    from lrmjax import config as config_lib

    path = os.path.join(REPO, "configs", f"{name}.py")
    variants = (config_lib.from_file(path), config_lib.from_file(path, "runlocal"))
    return "real-model" if any(c.model.hf_path for c in variants) else "procedural"


def command(name: str, variant: str, workdir: str, seed: int | str,
            python: str = "python") -> list[str]:
    """The lrmjax.main command of one run; `variant` is 'full' or 'runlocal'."""
    suffix = ":runlocal" if variant == "runlocal" else ""
    return [python, "-m", "lrmjax.main", "--config", f"configs/{name}.py{suffix}",
            "--workdir", workdir, f"--config.seed={seed}"]


# ------------------------------------------------------------------------------ one run

def run_one(name: str, seed: int, workdir: str, variant: str = "full",
            config_kind: str = "procedural", timeout_s: float | None = None) -> dict:
    """Runs `name` on `seed` in `workdir` as a subprocess (from the repository root, in this
    environment) and returns its record (the JSON's `runs` entries, module docstring): the
    command, exit status, wall seconds around the process, the held-out metrics at RL step 0
    and at the end, `error` (None, or why the run counts as failed) and, for a failed run,
    `log_tail`, the end of its output; all of it is in `log`, `<workdir>.log`."""
    workdir = os.path.abspath(workdir)   # the run starts in the repository root
    resumed = os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    argv = command(name, variant, workdir, seed, python=sys.executable)
    log_path = workdir + ".log"
    returncode, error, log_tail = None, None, None
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            returncode = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout_s:g} s"
    wall_s = time.perf_counter() - t0
    before, after = run_results.held_out(workdir)
    if error is None and returncode != 0:
        error = (f"exit {returncode}" if returncode > 0
                 else f"killed by signal {-returncode}")
    if error is None and (before is None or after is None):
        error = "no held-out evaluation at RL step 0 and at the end in metrics.jsonl"
    if error is not None:
        with open(log_path, errors="replace") as f:   # progress bars end lines with \r
            log_tail = "\n".join(f.read().replace("\r", "\n").splitlines()[-15:])
    return {"config": name, "kind": config_kind, "variant": variant, "seed": seed,
            "command": argv, "returncode": returncode, "error": error, "resumed": resumed,
            "wall_s": round(wall_s, 2), "before": before, "after": after, "log": log_path,
            "log_tail": log_tail}


# ------------------------------------------------------------------------------ the table

def verdict(before: float, after: float, band: float = FLAT_BAND) -> str:
    """'rises', 'flat' or 'WORSE': whether `after - before` (fractions) is at least `band`,
    within it, or at most `-band`."""
    delta = round(after - before, 9)   # 0.33 - 0.30 is 0.0299... in floats
    if delta >= band:
        return "rises"
    return "WORSE" if delta <= -band else "flat"


def _pass_at_k(metrics: dict) -> tuple[str, float] | None:
    """The ('pass@<k>', value) of one evaluation with k > 1, or None (eval.k 0 or 1)."""
    keys = [k for k in metrics if k.startswith("pass@") and k != "pass@1"]
    return (keys[0], metrics[keys[0]]) if keys else None


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _start_end(runs: list[dict], key: str, fmt: str, per_seed: bool = False) -> str:
    """'mean before -> mean after' of `key` over the runs that have it, and with `per_seed` each
    run's pair in brackets; '-' where no run has it."""
    pairs = [(r["before"][key], r["after"][key]) for r in runs
             if key in r["before"] and key in r["after"]]
    if not pairs:
        return "-"
    text = f"{_mean([b for b, _ in pairs]):{fmt}} -> {_mean([a for _, a in pairs]):{fmt}}"
    if per_seed and len(pairs) > 1:
        text += " (" + "; ".join(f"{b:{fmt}} -> {a:{fmt}}" for b, a in pairs) + ")"
    return text


def table_row(name: str, runs: list[dict], floors: dict[str, float] = FLOORS) -> str:
    """One config's markdown row from its runs' records (one per seed, in seed order)."""
    first = runs[0]
    cmd = " ".join(command(name, first["variant"], "W", "S"))
    seeds = ", ".join(str(r["seed"]) for r in runs)
    ok = [r for r in runs if r["error"] is None]
    failed = [r for r in runs if r["error"] is not None]
    walls = [r["wall_s"] for r in runs]
    wall = f"{_mean(walls):.0f} s"
    if len(walls) > 1:
        wall += f" ({min(walls):.0f}-{max(walls):.0f})"
    if any(r["resumed"] for r in runs):
        wall += ", resumed"
    greedy = pass1 = passk = length = "-"
    if ok:
        greedy = _start_end(ok, "greedy_pass@1", ".3f", per_seed=True)
        pass1 = _start_end(ok, "pass@1", ".3f")
        k = _pass_at_k(ok[0]["after"])
        if k is not None:
            passk = f"{_start_end(ok, k[0], '.3f')} (k={k[0][5:]})"
        length = _start_end(ok, "mean_response_length", ".1f")
    if failed:
        verdict_text = "FAILED (" + "; ".join(
            f"seed {r['seed']}: {r['error']}" for r in failed) + ")"
    elif first["variant"] == "runlocal":
        verdict_text = ":runlocal runs"
    else:
        before = _mean([r["before"]["greedy_pass@1"] for r in ok])
        after = _mean([r["after"]["greedy_pass@1"] for r in ok])
        verdict_text = f"{verdict(before, after)} ({run_results.change(before, after)}"
        if name in floors:
            verdict_text += f"; test floor {100 * floors[name]:+.1f}"
        verdict_text += ")"
    if first["variant"] == "runlocal" and first["kind"] == "real-model":
        greedy = pass1 = passk = length = "-"   # a tiny random checkpoint: nothing to report
    return (f"| `{name}` | `{cmd}` | {seeds} | {greedy} | {pass1} | {passk} | {length} | "
            f"{wall} | {verdict_text} |")


def render_table(results: dict, floors: dict[str, float] = FLOORS) -> str:
    """The README's block (between the markers) from the JSON `results`: a paragraph that says
    how, where and when it was made, and one row per config in the order they ran."""
    by_config: dict[str, list[dict]] = {}
    for run in results["runs"]:
        by_config.setdefault(run["config"], []).append(run)
    machine = results["machine"]
    load = "-".join(f"{x:.1f}" for x in machine["load_avg"])
    commit = results["commit"] + (" plus uncommitted changes" if results["dirty"] else "")
    make = " (`make config-results`)" if results["invocation"] == REPRODUCE else ""
    intro = (
        f"Made by `{results['invocation']}`{make} at commit {commit}, "
        f"{results['date']}, on {machine['cpu']} ({machine['cores']} cores, load average "
        f"{load}; JAX {machine['jax']}), one run at a time. Held-out metrics at RL step 0 "
        "(after the SFT warm start) -> the last step, mean over "
        "seeds (each seed's in brackets); response length: greedy, in tokens. ")
    for update in results.get("updates", []):
        commit = update["commit"] + (" plus uncommitted changes" if update["dirty"] else "")
        names = ", ".join(f"`{n}`" for n in update["configs"])
        intro += (f"Rerun later by `{update['invocation']}` at commit {commit}, "
                  f"{update['date']} (load average "
                  f"{'-'.join(f'{x:.1f}' for x in update['machine']['load_avg'])}): {names}. ")
    if any(r["variant"] == "full" for r in results["runs"]):
        intro += (
            "Procedural configs run in full; the verdict is on the mean change of greedy "
            f"pass@1 (flat within {100 * FLAT_BAND:.0f} points), and the floor is the rise "
            "`tests/test_config_results.py` requires of seed 0. Real-model configs run only "
            "at `:runlocal` (a tiny random checkpoint): they run, they claim nothing. The "
            "numbers drawn from: `experiments/config_results.json` (`--from-json` redraws the "
            "table from them). ")
    else:
        intro += "Every config ran at `:runlocal` only (a smoke test): no row claims learning. "
    intro += "`W` is a fresh workdir, `S` the seed."
    lines = [
        textwrap.fill(intro, width=100, break_long_words=False, break_on_hyphens=False),
        "",
        "| config | command | seeds | greedy pass@1 | pass@1 | pass@k | response length | wall "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [table_row(name, runs, floors) for name, runs in by_config.items()]
    return "\n".join(lines)


def replace_between_markers(text: str, block: str) -> str:
    """`text` with everything between the BEGIN and END marker lines replaced by `block`.
    Raises ValueError unless each marker occurs exactly once, BEGIN first."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN!r} followed by one {END!r}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{block.strip()}\n{END}{tail}"


# ------------------------------------------------------------------------------ provenance

def git_commit() -> tuple[str, bool]:
    """The short commit of HEAD and whether tracked files (other than the README and the
    JSON, which this script writes) differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":!README.md", ":!experiments/config_results.json")
    return git("rev-parse", "--short", "HEAD"), bool(status)


def merge_update(old: dict, new: dict) -> dict:
    """`old` results with the runs of the configs `new` ran replaced by `new`'s (each config
    keeps its place in the order; a config `old` lacks goes last) and `new`'s provenance
    appended to `updates`."""
    rerun = {r["config"] for r in new["runs"]}
    runs, placed = [], set()
    for run in old["runs"]:
        if run["config"] not in rerun:
            runs.append(run)
        elif run["config"] not in placed:
            runs += [r for r in new["runs"] if r["config"] == run["config"]]
            placed.add(run["config"])
    runs += [r for r in new["runs"] if r["config"] not in placed]
    update = {key: new[key] for key in ("invocation", "commit", "dirty", "date", "machine",
                                        "duration_s")}
    update["configs"] = sorted(rerun)
    return {**old, "runs": runs, "updates": [*old.get("updates", []), update]}


# ------------------------------------------------------------------------------ main

def write_readme(block: str, path: str = README) -> None:
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(replace_between_markers(text, block))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                        help="configs to run (default: every file in configs/)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--workdir-root", default=None,
                        help="where the runs' workdirs go (default: a new temporary folder)")
    parser.add_argument("--json", default=None,
                        help="where the raw numbers are written (default: "
                             "experiments/config_results.json; with --runlocal, in the "
                             "workdir root)")
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="run nothing: draw the table from this JSON")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the table between the README's config-results markers")
    parser.add_argument("--readme", default=README, help=argparse.SUPPRESS)
    parser.add_argument("--runlocal", action="store_true",
                        help="every config at :runlocal (a smoke test of this script; its "
                             "table claims nothing, so it is not written to the README)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per run")
    parser.add_argument("--update", action="store_true",
                        help="rerun only --configs and replace their runs in the existing JSON "
                             "(the other configs' runs are kept, the update is recorded)")
    args = parser.parse_args(argv)
    if args.runlocal and args.write_readme:
        parser.error("--runlocal tables are not written to the README")
    if args.update and (not args.configs or args.from_json or args.runlocal):
        parser.error("--update needs --configs, and neither --from-json nor --runlocal")

    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
    else:
        sys.path.insert(0, REPO)
        known = config_names()
        names = [os.path.basename(n).removesuffix(".py") for n in args.configs or known]
        unknown = sorted(set(names) - set(known))
        if unknown:
            parser.error(f"unknown configs {unknown}; valid: {known}")
        root = args.workdir_root or tempfile.mkdtemp(prefix="config_results_")
        # A smoke run's numbers never replace the real ones.
        json_path = args.json or (os.path.join(root, "config_results.json") if args.runlocal
                                  else JSON)
        commit, dirty = git_commit()
        # The command that redoes these runs (and writes the README unless --runlocal).
        invocation = " ".join(
            ["python experiments/config_results.py"]
            + (["--configs", *names] if args.configs else [])
            + (["--seeds", *map(str, args.seeds)] if args.seeds != [0, 1, 2] else [])
            + (["--update"] if args.update else [])
            + (["--runlocal"] if args.runlocal else ["--write-readme"]))
        results = {"schema": 1, "invocation": invocation, "commit": commit, "dirty": dirty,
                   "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                               "jax": importlib.metadata.version("jax"),
                               "load_avg": [round(os.getloadavg()[0], 2)]},
                   "seeds": args.seeds, "runs": []}
        t0 = time.perf_counter()
        for name in names:
            config_kind = kind(name)
            variant = "full" if config_kind == "procedural" and not args.runlocal else "runlocal"
            for seed in args.seeds if config_kind == "procedural" else args.seeds[:1]:
                workdir = os.path.join(root, name, f"seed{seed}")
                print(f"{name} seed {seed} ({variant}) in {workdir} ...", flush=True)
                run = run_one(name, seed, workdir, variant, config_kind, args.timeout_s)
                results["runs"].append(run)
                if run["error"] is None:
                    b, a = run["before"]["greedy_pass@1"], run["after"]["greedy_pass@1"]
                    print(f"  greedy pass@1 {b:.3f} -> {a:.3f} ({run_results.change(b, a)}) "
                          f"in {run['wall_s']:.0f} s", flush=True)
                else:
                    print(f"  FAILED: {run['error']} ({run['log']}):\n{run['log_tail']}",
                          flush=True)
        results["duration_s"] = round(time.perf_counter() - t0, 1)
        results["machine"]["load_avg"].append(round(os.getloadavg()[0], 2))
        if args.update:
            with open(json_path) as f:
                results = merge_update(json.load(f), results)
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        print(f"raw numbers: {json_path}")

    if args.write_readme and any(r["kind"] == "procedural" and r["variant"] == "runlocal"
                                 for r in results["runs"]):
        parser.error("--runlocal tables are not written to the README")
    block = render_table(results)
    print("\n" + block)
    if args.write_readme:
        write_readme(block, args.readme)
        print(f"written to {args.readme}")
    return 1 if any(r["error"] is not None for r in results["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
