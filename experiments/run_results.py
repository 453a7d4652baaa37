"""A run's held-out evaluations read back from its `metrics.jsonl`, as `arith_demo.py` and
`config_results.py` report them."""

from __future__ import annotations

import json
import os

PREFIX = "eval/"


def held_out(workdir: str) -> tuple[dict[str, float] | None, dict[str, float] | None]:
    """The held-out metrics at RL step 0 (after any SFT warm start) and at the last evaluation.

    Reads the rows of `workdir/metrics.jsonl` whose `phase` is 'eval'. Each returned dict holds
    one row's overall metrics without the `eval/` prefix (`greedy_pass@1`,
    `mean_response_length` and, with `eval.k` > 0, `pass@1`, `pass@<k>`, `maj@<k>`) and its
    `step`; a mixture's per-label metrics (`eval/<label>/...`) are left out. A resumed run's
    log holds each step once (the trainer drops the rows after its checkpoint), and a later row
    of the same step would win. Returns None for a row that is not there: both when the file
    is missing or holds no evaluation (a run that failed before evaluating), `before` when the
    log has no step-0 evaluation, and `after` when its only evaluation is step 0's.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None, None
    by_step: dict[int, dict[str, float]] = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if row.get("phase") != "eval":
                continue
            metrics = {k[len(PREFIX):]: float(v) for k, v in row.items()
                       if k.startswith(PREFIX) and "/" not in k[len(PREFIX):]}
            by_step[int(row["step"])] = {"step": int(row["step"]), **metrics}
    last = max(by_step, default=0)
    return by_step.get(0), (by_step[last] if last > 0 else None)


def change(before: float, after: float) -> str:
    """`after - before` of two fractions in percentage points, e.g. '+40.0 points'."""
    return f"{100 * (after - before):+.1f} points"
