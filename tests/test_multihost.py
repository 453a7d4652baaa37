"""Multi-host training on one machine: two processes joined by jax.distributed on localhost
(JAX's CPU collectives, gloo) must log the same metrics as one process with the same 8 devices.

Each process owns 4 of the 8 CPU devices, reads its block of every prompt batch, samples and
scores its own rows, and the update runs on the global batch; evaluation, the SFT warm start,
the reference model and checkpoints run the multi-host paths too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(workdir: str, devices: int, extra: list[str], variant: str = ""
            ) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "lrmjax.main",
         f"--config={REPO}/tests/multihost_config.py" + (f":{variant}" if variant else ""),
         f"--workdir={workdir}", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, name: str) -> None:
    try:
        out, _ = proc.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{name} timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"


def _metrics(workdir: str) -> dict[tuple[str, int], dict[str, float]]:
    rows: dict[tuple[str, int], dict[str, float]] = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows.setdefault((row["phase"], row["step"]), {}).update(
                {k: v for k, v in row.items() if k not in ("time", "step", "phase")
                 and not k.startswith(("timing_s/", "perf/"))})
    return rows


@pytest.mark.parametrize("variant", ["", "episodes"], ids=["single-turn", "episodes"])
def test_two_processes_log_the_same_metrics_as_one(tmp_path, variant):
    one = _launch(str(tmp_path / "one"), 8, [], variant)
    _finish(one, "the one-process run")
    # The two-process run stops after its step-2 checkpoint and resumes to step 3: each host
    # must get its own data position back (the checkpoint's extras are written by host 0).
    for steps in (["--config.train.steps=2"], []):
        port = _free_port()
        procs = [_launch(str(tmp_path / "two"), 4, [
            "--config.mesh.distributed=True",
            f"--config.mesh.coordinator_address=localhost:{port}",
            "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}", *steps],
            variant) for i in range(2)]
        for i, p in enumerate(procs):
            _finish(p, f"process {i} of the two-process run {steps}")

    single, multi = _metrics(str(tmp_path / "one")), _metrics(str(tmp_path / "two"))
    multi = {k: v for k, v in multi.items() if k != ("compile", 2)}  # the resume's compile row
    assert sorted(single) == sorted(multi)
    phases = {phase for phase, _ in single}
    assert phases == {"data", "sft", "eval", "rl", "compile"}  # compile rows: only perf/ keys
    rl = [m for (phase, _), m in single.items() if phase == "rl"]
    # The comparison means something: rewards vary, the KL term and the update are live.
    assert any(m["reward/std"] > 0 for m in rl)
    assert all(m["actor/grad_norm"] > 0 for m in rl)
    assert any(m["actor/kl_loss"] > 0 for m in rl)
    if variant == "episodes":  # several turns, with observations, on every host's rows
        assert all(m["env/turns"] > 1 and m["env/observation_tokens"] > 0 for m in rl)
    for key, metrics in single.items():
        assert set(metrics) == set(multi[key]), key
        for name, value in metrics.items():
            assert multi[key][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, name)
    # Both runs checkpointed (every host wrote its shards into the one directory).
    assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == \
        sorted(os.listdir(tmp_path / "one" / "checkpoints"))
