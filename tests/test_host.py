"""lrmjax.host: the process settings made before JAX's backend starts."""

import json
import os
import subprocess
import sys
import types

import pytest

from lrmjax import config as config_lib
from lrmjax import host

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process per setting (malloc settings are process-wide): a jitted 4-layer SwiGLU stack
# whose forward + backward needs about 100 MiB of XLA temporaries, more than a thread's malloc
# arena can hold, called 9 times after warm-up; prints the median of the calls' minor page
# faults (a median: with asynchronous dispatch a call's buffers are now and then allocated
# before the previous call's are freed, and the heap grows once more).
_FAULTS = r"""
import json, resource, statistics, sys
retain = sys.argv[1] == "retain"
if retain:
    from lrmjax import host
    assert host.retain_freed_memory()
import jax, jax.numpy as jnp

def stack(x, ws):
    for a, b, c in ws:
        x = x + (jax.nn.silu(x @ a) * (x @ b)) @ c
    return jnp.sum(x * x)

keys = jax.random.split(jax.random.key(0), 13)
x = jax.random.normal(keys[0], (3072, 128))
ws = [(jax.random.normal(keys[3 * i + 1], (128, 384)) / 11.3,
       jax.random.normal(keys[3 * i + 2], (128, 384)) / 11.3,
       jax.random.normal(keys[3 * i + 3], (384, 128)) / 19.6) for i in range(4)]
step = jax.jit(jax.grad(stack, argnums=(0, 1))).lower(x, ws).compile()
temp = step.memory_analysis().temp_size_in_bytes
for _ in range(3):
    jax.block_until_ready(step(x, ws))
counts = []
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    jax.block_until_ready(step(x, ws))
    counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = statistics.median(counts)
print(json.dumps({"faults_per_call": faults, "temp_mib": temp / 2**20}))
"""


def _faults(mode: str) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": REPO}
    for var in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_retain_freed_memory_stops_refaulting_xla_buffers():
    default, retained = _faults("default"), _faults("retain")
    assert default["temp_mib"] > 64  # past a thread arena's 64 MiB heaps
    # glibc unmaps the temporaries after each call, so every page is faulted in again: the
    # ~100 MiB of temporaries are ~25,000 pages of 4 KiB.
    assert default["faults_per_call"] > 0.5 * default["temp_mib"] * 256
    assert retained["faults_per_call"] < 0.05 * default["faults_per_call"]


def test_retain_freed_memory_is_idempotent(monkeypatch):
    calls = []
    fake_libc = types.SimpleNamespace(gnu_get_libc_version=lambda: b"2.36",
                                      mallopt=lambda p, v: calls.append((p, v)) or 1)
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: fake_libc)
    monkeypatch.setattr(host, "_state", {"applied": False})
    monkeypatch.setattr(host.sys, "platform", "linux")
    assert host.retain_freed_memory() and host.retain_freed_memory()
    assert calls == [(host.M_ARENA_MAX, 1), (host.M_MMAP_THRESHOLD, 2**31 - 1),
                     (host.M_TRIM_THRESHOLD, 2**31 - 1)]  # once, not twice


def test_retain_freed_memory_reports_a_refused_setting(monkeypatch, caplog):
    fake_libc = types.SimpleNamespace(gnu_get_libc_version=lambda: b"2.36",
                                      mallopt=lambda p, v: 0 if p == host.M_MMAP_THRESHOLD else 1)
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: fake_libc)
    monkeypatch.setattr(host, "_state", {"applied": False})
    monkeypatch.setattr(host.sys, "platform", "linux")
    assert not host.retain_freed_memory()
    assert "M_MMAP_THRESHOLD" in caplog.text


def test_retain_freed_memory_skips_other_c_libraries(monkeypatch):
    monkeypatch.setattr(host.ctypes, "CDLL", lambda name: types.SimpleNamespace())  # no glibc
    monkeypatch.setattr(host, "_state", {"applied": False})
    monkeypatch.setattr(host.sys, "platform", "linux")
    assert not host.retain_freed_memory()
    monkeypatch.setattr(host.sys, "platform", "darwin")
    assert not host.retain_freed_memory()


@pytest.mark.parametrize("platforms, expected", [("cpu", True), ("cuda", False),
                                                 ("tpu,cpu", False), ("CPU,cuda", True)])
def test_cpu_backend_expected_from_jax_platforms(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host.cpu_backend_expected() is expected


@pytest.mark.parametrize("dists, expected", [
    (["jax", "jaxlib", "flax"], True),
    (["jax", "jax-cuda12-plugin", "jax-cuda12-pjrt"], False),
    (["jax", "libtpu"], False),
])
def test_cpu_backend_expected_from_installed_plugins(monkeypatch, dists, expected):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(host.sys, "modules", {k: v for k, v in sys.modules.items()
                                              if k != "jax"})
    fake = [types.SimpleNamespace(metadata={"Name": d}) for d in dists]
    monkeypatch.setattr(host.importlib.metadata, "distributions", lambda: fake)
    assert host.cpu_backend_expected() is expected


def test_tune_malloc_follows_the_config_and_the_backend(monkeypatch):
    calls = []
    monkeypatch.setattr(host, "retain_freed_memory", lambda: calls.append(1) or True)
    cfg = config_lib.base_config("grpo")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host.tune_malloc(cfg) and calls == [1]
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert not host.tune_malloc(cfg) and calls == [1]
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    cfg.mesh.cpu_retain_freed_memory = False
    assert not host.tune_malloc(cfg) and calls == [1]


def test_prepare_sets_the_cpu_device_count_unless_given(monkeypatch):
    monkeypatch.setattr(host, "retain_freed_memory", lambda: True)
    cfg = config_lib.base_config("grpo")
    cfg.mesh.cpu_devices = 3
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    host.prepare(cfg)
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       "--xla_force_host_platform_device_count=3")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=5")
    host.prepare(cfg)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=5"
