"""Host-process settings that must be made before JAX's CPU backend starts.

`prepare(cfg)` applies an experiment's (the CPU device count and, through `tune_malloc`, the
malloc settings below); `lrmjax.main` and the demo call it, and `rl.train` calls `tune_malloc`.

`retain_freed_memory()` keeps glibc's malloc from handing XLA:CPU's per-call buffers back to
the operating system. XLA:CPU allocates a program's temporaries (tens to hundreds of MiB for a
train step) when the program is called and frees them when it returns. glibc serves an
allocation that large with a fresh `mmap` and unmaps it on free (or, from a worker thread,
from a per-thread arena that cannot grow past 64 MiB, so again with `mmap`), so every call
page-faults its whole working set back in: one fault per 4 KiB page, each zeroing the page
(tests/test_host.py counts the faults; the measured effect on train steps and the decode loop
is in experiments/benchmarks/RESULTS.md, "Measurements behind design choices").

The fix is three `mallopt` settings: one arena for every thread (the main arena grows with
`brk`, without a size cap), no `mmap` for allocations below 2 GiB, and no trimming of the
heap's free top below 2 GiB. The cost: the process keeps its peak heap (it does not shrink
after a large program has run) and threads share one malloc lock, which matters little here
because the heavy host work (rewards, sandboxes) runs in worker processes. `tune_malloc` skips
accelerator hosts; `mesh.cpu_retain_freed_memory = False` turns it off; it is a no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import sys

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# The largest value mallopt takes (an int): allocations below it come from the heap, and up to
# this much free memory at the heap's top stays mapped.
RETAIN_BYTES = 2**31 - 1

_state = {"applied": False}


def retain_freed_memory() -> bool:
    """Tunes glibc malloc so XLA:CPU's per-call buffers are reused instead of refaulted.

    Call before JAX's backend starts (its worker threads pick their malloc arena when they
    first allocate). Idempotent. Returns True when the settings are in effect, False where the
    C library is not glibc (macOS, musl) or refused a setting (logged).
    """
    if _state["applied"]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process already runs on
        libc.gnu_get_libc_version  # noqa: B018  glibc only: other libcs lack these mallopt codes
    except (OSError, AttributeError):
        return False
    for name, param, value in (("M_ARENA_MAX", M_ARENA_MAX, 1),
                               ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, RETAIN_BYTES),
                               ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, RETAIN_BYTES)):
        if libc.mallopt(param, value) != 1:
            logging.warning("mallopt(%s, %d) was refused: XLA:CPU buffers may be refaulted "
                            "on every call", name, value)
            return False
    _state["applied"] = True
    return True


def prepare(cfg) -> None:
    """The process settings an experiment `cfg` asks for; call before JAX's backend starts.

    On a CPU host, `mesh.cpu_devices` XLA devices (XLA reads the flag when the backend starts;
    an explicit `--xla_force_host_platform_device_count` in XLA_FLAGS wins; GPU/TPU backends
    ignore it), and `retain_freed_memory()` when `mesh.cpu_retain_freed_memory` is set.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                   f"{cfg.mesh.cpu_devices}").strip()
    tune_malloc(cfg)


def tune_malloc(cfg) -> bool:
    """`retain_freed_memory()` when `mesh.cpu_retain_freed_memory` is set and JAX will run on
    the CPU. On an accelerator host it is left alone: there XLA's large buffers live on the
    device, and one malloc arena would only slow the host threads that feed it."""
    if cfg.mesh.cpu_retain_freed_memory and cpu_backend_expected():
        return retain_freed_memory()
    return False


def cpu_backend_expected() -> bool:
    """Whether JAX's default backend will be the CPU, judged without starting a backend:
    JAX_PLATFORMS (or jax_platforms) when set, else whether no accelerator plugin (CUDA, ROCm,
    TPU) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if not platforms and "jax" in sys.modules:
        platforms = sys.modules["jax"].config.jax_platforms or ""
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    accelerators = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")
    return not any((d.metadata["Name"] or "").lower().startswith(accelerators)
                   for d in importlib.metadata.distributions())
