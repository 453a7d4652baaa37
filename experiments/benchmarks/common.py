"""Benchmark helpers: device faking, timing, memory, the machine's measured limits, and the
Tunix model config and tokenizer that vs_peers.py and grpo_step_tunix.py share.

`force_cpu_devices` must run before jax is imported (XLA reads XLA_FLAGS once), so this
module imports jax only inside functions. It imports nothing outside the standard library at
the top, so the Tunix venv's interpreter can import it too (tunix only inside functions).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def force_cpu_devices(n: int) -> None:
    """Runs jax on the CPU with `n` (faked) devices. Call before the first `import jax`."""
    if "jax" in sys.modules:
        raise RuntimeError("force_cpu_devices must be called before jax is imported")
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    if n > 1:
        flags.append(f"--xla_force_host_platform_device_count={n}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["JAX_PLATFORMS"] = "cpu"


def worker_env(platform: str, root: str) -> dict[str, str]:
    """The environment of a benchmark's worker process on `platform` ("cpu" or "gpu").

    cpu: one plain CPU device (no faked devices unless the worker asks for them). gpu: JAX on
    CUDA without preallocation, since several JAX workers (lrmjax, Tunix) share the card at
    once. `root` goes first on PYTHONPATH; an existing PYTHONPATH (e.g. extra packages) stays.
    """
    if platform not in ("cpu", "gpu"):
        raise ValueError(f"platform must be 'cpu' or 'gpu', got {platform!r}")
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}
    if platform == "cpu":
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="")
    else:
        env.update(JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    return env


def accelerator_name() -> str:
    """The first GPU's name from nvidia-smi, or the CPU model where there is none."""
    try:
        out = os.popen("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null").read()
    except OSError:
        out = ""
    return out.strip().splitlines()[0] if out.strip() else cpu_model()


def machine(platform: str) -> str:
    """Where a benchmark ran, for its table header: "2 x <CPU model>" on the CPU, "one <GPU>,
    XLA_FLAGS='...'" on a GPU."""
    if platform == "cpu":
        return f"{os.cpu_count()} x {cpu_model()}"
    return f"one {accelerator_name()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"


def block(tree: Any) -> Any:
    import jax

    return jax.block_until_ready(tree)


def timeit(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time (s) of `fn()` over `repeats` runs after `warmup` runs (results are
    blocked on, so asynchronous dispatch is included)."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def program_memory_mb(compiled: Any) -> float | None:
    """XLA's estimate of a compiled program's peak: arguments + outputs + temporaries, MiB."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    return total / 2**20


def memory_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Read bandwidth, GB/s: a jitted sum over a `mib` MiB fp32 array (larger than caches)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    t, _ = timeit(lambda: f(x), repeats=repeats)
    return x.nbytes / t / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n x n by n x n `jnp.dot`."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    t, _ = timeit(lambda: f(a, b), repeats=repeats)
    return 2 * n**3 / t / 1e9


def demo_device_setup() -> tuple[Any, Any, Any, Any]:
    """The `make demo` experiment on the device-reward path (`lrmjax.train.pure`), as
    sweep.py and pure_vmap.py time it: (char tokenizer, the demo's 2-layer model config,
    `pure.DeviceData` of 4,096 3-digit sums with answers reversed, the demo's AdamW with its
    cosine schedule)."""
    import numpy as np

    from lrmjax.data.tasks import arithmetic, arithmetic_device
    from lrmjax.models import presets
    from lrmjax.tokenizers import CharTokenizer
    from lrmjax.train import pure
    from lrmjax.train.state import adamw, lr_schedule

    tok = CharTokenizer()
    cfg = presets.get("tiny", vocab_size=tok.vocab_size, num_layers=2, max_seq_len=64)
    task = arithmetic.ArithmeticTask(digits=3, min_digits=3, reverse_answer=True)
    data = pure.DeviceData.from_examples(tok, task.sample(np.random.default_rng(0), 4096), 10,
                                         arithmetic_device.encode_answers)
    tx = adamw(lr_schedule(3e-4, 20, 400, "cosine", 0.0), grad_clip=1.0)
    return tok, cfg, data, tx


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_summary() -> str:
    import jax

    return (f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} "
            f"device(s), {os.cpu_count()} CPU core(s) ({cpu_model()})")


class IntTok:
    """The tokenizer the Tunix workers use: "id id id" <-> ids. 0 is bos (Tunix's sampler then
    adds none), pad and eos; prompts never contain 0 and `eos_tokens=[-1]` keeps 0 from ending
    a response."""

    def encode(self, s, **kw):
        return [int(t) for t in s.split()]

    def decode(self, ids, **kw):
        return " ".join(map(str, ids))

    def bos_id(self):
        return 0

    def eos_id(self):
        return 0

    def pad_id(self):
        return 0


def tunix_model_config(path: str | pathlib.Path):
    """Tunix's Qwen2 `ModelConfig` for the HF checkpoint directory `path`, from its config.json
    (transformers 4.x or 5.x layout: rope_theta at the top or under rope_parameters). Runs
    only where google-tunix is installed."""
    from tunix.models.qwen2 import model as qm

    c = json.loads((pathlib.Path(path) / "config.json").read_text())
    theta = (c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta"))
    return qm.ModelConfig(
        num_layers=c["num_hidden_layers"], vocab_size=c["vocab_size"],
        embed_dim=c["hidden_size"], hidden_dim=c["intermediate_size"],
        num_heads=c["num_attention_heads"],
        head_dim=c["hidden_size"] // c["num_attention_heads"],
        num_kv_heads=c["num_key_value_heads"], rope_theta=int(theta),
        norm_eps=c["rms_norm_eps"], use_tied_embedding=c["tie_word_embeddings"])
