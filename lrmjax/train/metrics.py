"""Metric writers: console progress, a JSONL file, TensorBoard event files, rollout samples,
and a PNG of the learning curves at the end.

Metric names follow verl (`actor/pg_loss`, `reward/mean`, `timing_s/step`, ...), so plots and
habits carry over.
"""

from __future__ import annotations

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
    """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tb`).

    Only process 0 of a multi-host run writes (pass `enabled=False` elsewhere). Appends on
    resume: steps already in the JSONL are not rewritten.
    """

    def __init__(self, workdir: str, enabled: bool = True, progress_total: int | None = None,
                 progress: bool = True, keys: Mapping[str, str] | None = None):
        self.enabled = enabled
        self.workdir = workdir
        self.keys = dict(keys or {"reward/mean": "reward"})  # metric -> short label
        self._bar = None
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        from tensorboardX import FileWriter

        # Events reach the file every TB_FLUSH_SECS from tensorboardX's own thread, and at
        # close: a flush per row would fsync the file on the training thread (slow on network
        # file systems). metrics.jsonl is flushed every row.
        self._tb = FileWriter(os.path.join(workdir, "tb"), flush_secs=TB_FLUSH_SECS)
        if progress and progress_total:
            from tqdm import tqdm

            self._bar = tqdm(total=progress_total, dynamic_ncols=True, file=sys.stdout,
                             mininterval=1.0)

    def write(self, step: int, metrics: Mapping[str, Any], phase: str = "rl") -> None:
        if not self.enabled:
            return
        row = {k: _scalar(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "phase": phase, "time": time.time(),
                                      **row}) + "\n")
        self._jsonl.flush()
        from tensorboardX.proto.summary_pb2 import Summary

        # One event per row holding every finite scalar: SummaryWriter.add_scalar would write
        # one event per metric, each a protobuf and a write on the training thread.
        # TensorBoard tags may not contain '@'.
        values = [Summary.Value(tag=self._tag(k, phase), simple_value=v)
                  for k, v in row.items() if math.isfinite(v)]
        self._tb.add_summary(Summary(value=values), int(step))

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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


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
