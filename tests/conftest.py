"""Test setup: fake 8 CPU devices before jax is imported anywhere."""

import os
import signal

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A persistent XLA compilation cache shared by the test processes (and their subprocesses):
# many tests compile the same small programs, and on 2 CPU cores compiling dominates.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "/tmp/lrmjax-test-xla-cache")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


# ---------------------------------------------------------------------------------------------
# Ctrl-C must keep working in the process that ran a test: a library path that left SIGINT
# ignored or blocked would leave a notebook user's Ctrl-C after `train()` doing nothing (and
# every child process started later inherits an ignored SIGINT). Fails the test that changed it.


def _sigint_state() -> tuple:
    """SIGINT's Python handler, whether the process ignores it at the OS level (a C library
    can do that behind Python's back), and whether this thread blocks it."""
    ignored = False
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                ignored = bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    return signal.getsignal(signal.SIGINT), ignored, blocked


@pytest.fixture(autouse=True)
def _sigint_left_as_found():
    if not os.path.exists("/proc/self/status"):
        yield
        return
    before = _sigint_state()
    yield
    after = _sigint_state()
    assert after == before, (
        f"SIGINT (handler, ignored, blocked) changed from {before} to {after}: restore it")
