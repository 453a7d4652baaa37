"""lrmjax.train.metrics: JSONL rows, TensorBoard event files, rollout samples, curve plots."""

from __future__ import annotations

import glob
import json
import os
import struct

import numpy as np
from tensorboardX.proto import event_pb2

from lrmjax.train import metrics as metrics_lib


def _read_events(logdir: str) -> list[event_pb2.Event]:
    """Parses TFRecord framing (u64 length, u32 crc, data, u32 crc) of every event file."""
    events = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            pos += 12
            events.append(event_pb2.Event.FromString(data[pos:pos + length]))
            pos += length + 4
        assert pos == len(data), path
    return events


def _scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in _read_events(logdir):
        for v in e.summary.value:
            out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_jsonl_and_tensorboard(tmp_path):
    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.write(1, {"reward/mean": np.float32(0.25), "eval/pass@4": 0.5, "actor/loss": 2})
    w.write(2, {"reward/mean": 0.75, "actor/loss": float("nan")})
    w.write(3, {"loss": 1.5}, phase="sft")
    w.close()

    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["step"], r["phase"]) for r in rows] == [(1, "rl"), (2, "rl"), (3, "sft")]
    assert rows[0]["reward/mean"] == 0.25 and rows[0]["eval/pass@4"] == 0.5
    assert rows[0]["actor/loss"] == 2.0 and isinstance(rows[0]["actor/loss"], float)
    assert np.isnan(rows[1]["actor/loss"])        # kept in the JSONL (as NaN)
    assert rows[2]["loss"] == 1.5
    assert all(isinstance(r["time"], float) for r in rows)
    again = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in again] == [1, 2, 3] and again[0] == rows[0]

    tb = _scalars(str(tmp_path / "tb"))
    assert tb["reward/mean"] == [(1, 0.25), (2, 0.75)]
    assert tb["eval/pass_at_4"] == [(1, 0.5)]     # '@' is not allowed in a tag
    assert not any("@" in tag for tag in tb)
    assert tb["actor/loss"] == [(1, 2.0)]         # the non-finite value is not plotted
    # The warm start counts its own steps: its rows are a TensorBoard run of their own, and
    # other phases get their prefix.
    assert _scalars(str(tmp_path / "tb" / "sft")) == {"sft/loss": [(3, 1.5)]}


def test_appends_on_resume(tmp_path):
    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.write(1, {"a": 1.0})
    w.close()
    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.write(2, {"a": 2.0})
    w.close()
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["a"]) for r in rows] == [(1, 1.0), (2, 2.0)]


def test_resume_keeps_the_rows_of_the_run_it_continues(tmp_path):
    """A run resumed at RL step 2 drops what a killed attempt logged after it (and a line the
    kill cut off); resumed in its warm start, it keeps only the warm start's rows up to there."""
    from tensorboardX.proto.event_pb2 import SessionLog

    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.write(10, {"loss": 1.0}, phase="sft")
    w.write(20, {"loss": 0.5}, phase="sft")
    w.write(0, {"perf/compile_s": 1.0}, phase="compile")
    w.write(0, {"eval/pass@1": 0.1}, phase="eval")
    for step in range(1, 5):
        w.write(step, {"a": float(step)})
        metrics_lib.write_rollouts(str(tmp_path / "rollouts.jsonl"), step, ["p"], ["c"], [1.0])
    w.write(4, {"eval/pass@1": 0.4}, phase="eval")
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "phase": "rl", "a"')  # cut off by a SIGKILL

    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.resume(2)
    w.write(3, {"a": 30.0})
    w.close()
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["phase"]) for r in rows] == [
        (10, "sft"), (20, "sft"), (0, "compile"), (0, "eval"), (1, "rl"), (2, "rl"), (3, "rl")]
    assert rows[-1]["a"] == 30.0
    rollouts = metrics_lib.read_jsonl(str(tmp_path / "rollouts.jsonl"))
    assert [r["step"] for r in rollouts] == [1, 2]
    # TensorBoard: the new event file starts by purging the old events after step 2.
    starts = [e.step for e in _read_events(str(tmp_path / "tb"))
              if e.session_log.status == SessionLog.START]
    assert starts == [3]
    assert _scalars(str(tmp_path / "tb"))["a"][-1] == (3, 30.0)

    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    w.resume(0, sft_step=10)  # the warm start goes on after its step 10
    w.close()
    rows = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["phase"]) for r in rows] == [(10, "sft")]
    assert not os.path.exists(tmp_path / "rollouts.jsonl") or not metrics_lib.read_jsonl(
        str(tmp_path / "rollouts.jsonl"))
    starts = [e.step for e in _read_events(str(tmp_path / "tb" / "sft"))
              if e.session_log.status == SessionLog.START]
    assert starts == [11]
    assert [e.step for e in _read_events(str(tmp_path / "tb"))
            if e.session_log.status == SessionLog.START] == [3, 0]  # RL from scratch


def test_disabled_writer_writes_nothing(tmp_path):
    w = metrics_lib.MetricsWriter(str(tmp_path / "out"), enabled=False)
    w.write(1, {"a": 1.0})
    w.log("hello")
    w.progress(1, {"a": 1.0})
    w.close()
    assert not os.path.exists(tmp_path / "out")


def test_progress_bar_shows_short_labels(tmp_path, capsys):
    w = metrics_lib.MetricsWriter(str(tmp_path), progress_total=4, progress=True)
    w.progress(2, {"reward/mean": 0.123456, "other": 1.0})
    w.log("a message")
    w.close()
    out = capsys.readouterr().out
    assert "reward=0.123" in out and "a message" in out
    assert "2/4" in out


def test_write_rollouts(tmp_path):
    path = str(tmp_path / "rollouts.jsonl")
    metrics_lib.write_rollouts(path, 5, ["p0", "p1", "p2"], ["c0", "c1", "c2"],
                               [1, np.float32(0.5), 0.0], limit=2)
    metrics_lib.write_rollouts(path, 6, ["q"], ["d"], [1.0])
    rows = metrics_lib.read_jsonl(path)
    assert rows == [{"step": 5, "prompt": "p0", "response": "c0", "reward": 1.0},
                    {"step": 5, "prompt": "p1", "response": "c1", "reward": 0.5},
                    {"step": 6, "prompt": "q", "response": "d", "reward": 1.0}]


def test_plot_curves_writes_png(tmp_path):
    w = metrics_lib.MetricsWriter(str(tmp_path), progress=False)
    for step in range(1, 6):
        w.write(step, {"reward/mean": step / 5, "response_length/mean": 3.0 + step,
                       "actor/entropy": 1.0 / step})
    w.write(5, {"eval/greedy_pass@1": 0.4}, phase="eval")
    w.write(1, {"loss": 3.0}, phase="sft")          # other phases are not plotted
    w.close()
    out = str(tmp_path / "curves.png")
    assert metrics_lib.plot_curves(str(tmp_path / "metrics.jsonl"), out) == out
    data = open(out, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR: width and height (big-endian) of a 5-panel figure 20 x 3.2 inches at 100 dpi.
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (2000, 320)
    assert len(data) > 10_000


def test_plot_curves_without_rl_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "phase": "sft", "loss": 1.0}) + "\n")
    out = metrics_lib.plot_curves(str(path), str(tmp_path / "c.png"))
    assert open(out, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
