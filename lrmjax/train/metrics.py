"""Metric writers: console progress, a JSONL file, TensorBoard event files, rollout samples,
and a PNG of the learning curves at the end.

Metric names follow verl (`actor/pg_loss`, `reward/mean`, `timing_s/step`, ...), so plots and
habits carry over.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _scalar(v: Any) -> float:
    return float(np.asarray(v))


TB_FLUSH_SECS = 10


class MetricsWriter:
    """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard: the warm start's
    rows (phase "sft", counted in SFT steps) to `<workdir>/tb/sft`, the others (counted in RL
    steps) to `<workdir>/tb`.

    Only process 0 of a multi-host run writes (pass `enabled=False` elsewhere). Appends to
    what is there; a resumed run first calls `resume` so that its logs read as one run's.
    """

    def __init__(self, workdir: str, enabled: bool = True, progress_total: int | None = None,
                 progress: bool = True, keys: Mapping[str, str] | None = None):
        self.enabled = enabled
        self.workdir = workdir
        self.keys = dict(keys or {"reward/mean": "reward"})  # metric -> short label
        self._bar = None
        self._tb: dict[str, Any] = {}   # TensorBoard run dir -> FileWriter, opened on first use
        self._purge: dict[str, int] = {}  # run dir -> purge step for its next event file
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        if progress and progress_total:
            from tqdm import tqdm

            self._bar = tqdm(total=progress_total, dynamic_ncols=True, file=sys.stdout,
                             mininterval=1.0)

    def resume(self, rl_step: int, sft_step: int | None = None) -> None:
        """Drops the rows a resumed run will write again: the run goes on after RL step
        `rl_step`, or, with `sft_step`, after that step of the warm start (no RL step done).

        metrics.jsonl keeps the warm start's rows up to `sft_step` (all of them when None) and
        the other rows (rl, eval, compile) up to `rl_step` (none when it is 0: the run starts
        RL afresh); rollouts.jsonl keeps the same RL steps. Both are rewritten atomically, and
        a line cut off by a kill is dropped. TensorBoard's next event file in each run dir starts
        with a purge marker (tensorboardX's `purge_step`): TensorBoard then hides that run's
        older events at steps from `rl_step + 1` (`sft_step + 1`), or all of them when the step
        is 0. Compile rows are the one thing logged at the resumed step: one per start.
        """
        def kept(row: dict[str, Any]) -> bool:
            if row.get("phase") == "sft":
                return sft_step is None or row["step"] <= sft_step
            return sft_step is None and rl_step > 0 and row["step"] <= rl_step

        if not self.enabled:
            return
        self._close_files()
        _filter_jsonl(os.path.join(self.workdir, "metrics.jsonl"), kept)
        _filter_jsonl(os.path.join(self.workdir, "rollouts.jsonl"),
                      lambda row: sft_step is None and row["step"] <= rl_step)
        self._purge = {"tb": rl_step + 1 if rl_step and sft_step is None else 0}
        if sft_step is not None:
            self._purge[os.path.join("tb", "sft")] = sft_step + 1 if sft_step else 0
        for run in self._purge:  # old events to hide: mark them now, even if nothing follows
            if glob.glob(os.path.join(self.workdir, run, "events.out.tfevents.*")):
                self._event_file(run)

    def _event_file(self, run: str) -> Any:
        if run not in self._tb:
            from tensorboardX import FileWriter
            from tensorboardX.proto.event_pb2 import Event, SessionLog

            # Events reach the file every TB_FLUSH_SECS from tensorboardX's own thread, and
            # at close: a flush per row would fsync the file on the training thread (slow on
            # network file systems). metrics.jsonl is flushed every row.
            # The name's time is in seconds, and a second file of the same second would
            # overwrite the first: the suffix keeps names apart (and in order).
            w = FileWriter(os.path.join(self.workdir, run), flush_secs=TB_FLUSH_SECS,
                           filename_suffix=f".{time.time_ns()}")
            if run in self._purge:
                step = self._purge[run]
                w.add_event(Event(step=step, file_version="brain.Event:2"))
                w.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
            self._tb[run] = w
        return self._tb[run]

    def write(self, step: int, metrics: Mapping[str, Any], phase: str = "rl") -> None:
        if not self.enabled:
            return
        row = {k: _scalar(v) for k, v in metrics.items()}
        if self._jsonl is None:
            self._jsonl = open(os.path.join(self.workdir, "metrics.jsonl"), "a",
                               encoding="utf-8")
        self._jsonl.write(json.dumps({"step": int(step), "phase": phase, "time": time.time(),
                                      **row}) + "\n")
        self._jsonl.flush()
        from tensorboardX.proto.summary_pb2 import Summary

        # One event per row holding every finite scalar: SummaryWriter.add_scalar would write
        # one event per metric, each a protobuf and a write on the training thread.
        # TensorBoard tags may not contain '@'.
        values = [Summary.Value(tag=self._tag(k, phase), simple_value=v)
                  for k, v in row.items() if math.isfinite(v)]
        run = os.path.join("tb", "sft") if phase == "sft" else "tb"
        self._event_file(run).add_summary(Summary(value=values), int(step))

    @staticmethod
    def _tag(key: str, phase: str) -> str:
        tag = key if key.startswith(f"{phase}/") or phase in ("rl", "eval") else f"{phase}/{key}"
        return tag.replace("@", "_at_")

    def progress(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.n = int(step)
        shown = {label: f"{_scalar(metrics[k]):.3g}" for k, label in self.keys.items()
                 if k in metrics}
        self._bar.set_postfix(shown, refresh=True)

    def log(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def _close_files(self) -> None:
        for w in self._tb.values():
            w.close()
        self._tb = {}
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def close(self) -> None:
        """Flushes and closes the files. Safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._close_files()


def _filter_jsonl(path: str, keep: Any) -> None:
    """Rewrites the JSONL file `path` (if any) with the rows `keep(row)` accepts; lines that do
    not parse (one cut off by a kill) go too. Atomic: a kill leaves the old or the new file."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if keep(row):
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def write_rollouts(path: str, step: int, prompts: Sequence[str], completions: Sequence[str],
                   rewards: Sequence[float], limit: int = 16) -> None:
    """Appends up to `limit` sampled (prompt, response, reward) rows to a JSONL file."""
    with open(path, "a", encoding="utf-8") as f:
        for p, c, r in list(zip(prompts, completions, rewards, strict=True))[:limit]:
            f.write(json.dumps({"step": int(step), "prompt": p, "response": c,
                                "reward": float(r)}) + "\n")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


CURVES = (("reward/mean", "reward"), ("eval/greedy_pass@1", "held-out accuracy (greedy)"),
          ("response_length/mean", "response length"), ("actor/kl_loss", "KL to reference"),
          ("actor/entropy", "entropy"))


def plot_curves(metrics_path: str, out_path: str) -> str:
    """Plots the learning curves (reward, accuracy, response length, KL, entropy) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_jsonl(metrics_path) if r.get("phase") in ("rl", "eval")]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4 * len(CURVES), 3.2))
    for ax, (key, title) in zip(axes, CURVES, strict=True):
        pts = sorted((r["step"], r[key]) for r in rows if key in r)
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
