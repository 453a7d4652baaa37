"""What XLA compiles, and how much memory a compiled program needs.

`CompileCounter` listens to JAX's backend-compile event, so it sees every XLA program this
process builds (or loads from the persistent compilation cache), whoever asked for it: the
train step, the sampler, a stray `jnp` call on the host. The RL loop compiles its step before
the loop and then expects no compiles after its first step; a compile there means a new
shape, dtype or sharding reached a jitted function, which the loop reports by name.

`compile_programs` builds what the RL loop runs on the devices (`Programs`, jitted by
`jit_programs`) and compiles the train step ahead of the loop, logging its memory.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import time
from typing import Any

import jax
import ml_collections

from lrmjax import parallel
from lrmjax.models import lora
from lrmjax.models.presets import ModelConfig
from lrmjax.train import steps, update_batch
from lrmjax.train.state import TrainState

# The event jax records around every XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA compilations while active (a context manager).

    `count` and `seconds` are totals; `names` counts compilations per jitted function name
    (jax's `fun_name`, e.g. "jit(rl_train_step)"). `new_since(mark)` lists the names compiled
    after an earlier `count`.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._log: list[str] = []
        self.seconds = 0.0

    def _listener(self, event: str, duration: float, **kwargs: Any) -> None:
        if event != BACKEND_COMPILE_EVENT:
            return
        with self._lock:
            self._log.append(str(kwargs.get("fun_name", "?")))
            self.seconds += float(duration)

    def __enter__(self) -> CompileCounter:
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._log)

    @property
    def names(self) -> collections.Counter:
        return self.new_since(0)

    def new_since(self, mark: int) -> collections.Counter:
        """Names compiled since `count` was `mark`, with how many times each."""
        with self._lock:
            return collections.Counter(self._log[mark:])


def memory_mib(compiled: Any) -> dict[str, float]:
    """XLA's memory analysis of a compiled program, MiB per device: arguments, outputs,
    temporaries, aliased (donated inputs reused as outputs), generated code, and the peak
    they imply (arguments + outputs + temporaries - aliased). Empty if the backend has none.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return {}
    if m is None:
        return {}
    mib = lambda b: float(b) / 2**20  # noqa: E731
    out = {"arguments": mib(m.argument_size_in_bytes), "outputs": mib(m.output_size_in_bytes),
           "temporaries": mib(m.temp_size_in_bytes), "aliased": mib(m.alias_size_in_bytes),
           "code": mib(m.generated_code_size_in_bytes)}
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def describe_memory(name: str, memory: dict[str, float], seconds: float | None = None) -> str:
    """One log line: "<name>: compiled in 2.1 s; per device 310.2 MiB peak (arguments ...)"."""
    head = f"{name}: compiled" + (f" in {seconds:.1f} s" if seconds is not None else "")
    if not memory:
        return head + "; no memory analysis on this backend"
    parts = ", ".join(f"{k} {memory[k]:.1f}" for k in
                      ("arguments", "outputs", "temporaries", "aliased", "code"))
    return f"{head}; per device {memory['peak']:.1f} MiB peak ({parts} MiB)"


@dataclasses.dataclass(frozen=True)
class Programs:
    """What the loop runs on the devices, compiled for one run.

    Attributes:
      train_step: (state, minibatch) -> (state, metrics), jitted with explicit shardings.
      passes: the log-prob, value and advantage passes that build the update batch.
      state_sharding: the TrainState's shardings (the train step's in and out layout).
      merge: under `model.lora.merge_for_sampling`, (base, adapters) -> merged params
        (`lora.merge`, jitted into the base's shardings); else None.
    """

    train_step: Any
    passes: update_batch.Passes
    state_sharding: TrainState
    merge: Any = None

    def sampling_policy(self, state: TrainState) -> Any:
        """The params the sampler runs: `state.policy`, or its merged weights (one merge per
        call) under `model.lora.merge_for_sampling`."""
        return state.policy if self.merge is None else self.merge(state.frozen, state.params)


def jit_programs(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, prompt_len: int,
                 temperature: float, mesh: Any, state_sh: TrainState
                 ) -> tuple[update_batch.Passes, Any]:
    """The batch passes and the jitted train step of config `cfg` (nothing compiled yet):
    what the loop runs, and what `experiments/benchmarks/memory_plan.py` compiles from
    shapes. `temperature` is the one log-probs are scored under
    (`SamplingParams.score_temperature`)."""
    logprob_group, update_group = steps.shared_prompt_groups(cfg, mesh)
    passes = update_batch.make_passes(cfg, model_cfg, prompt_len, temperature, logprob_group,
                                      mesh)
    # Explicit in/out shardings keep the state in one layout across steps (so neither the
    # step nor the sampler, which reads the same params, ever recompiles for a new layout).
    train_step = jax.jit(parallel.in_mesh(
        functools.partial(steps.rl_train_step, model_cfg=model_cfg, algo=cfg.rl,
                          prompt_len=prompt_len, temperature=temperature,
                          microbatches=cfg.train.microbatches, on_policy=passes.on_policy,
                          group_size=update_group,
                          logits_chunk_mb=cfg.train.logits_chunk_mb), mesh),
        in_shardings=(state_sh, parallel.batch_sharding(mesh)),
        out_shardings=(state_sh, parallel.replicated(mesh)), donate_argnums=(0,))
    return passes, train_step


def compile_programs(cfg: ml_collections.ConfigDict, inp: Any, state: TrainState,
                     state_sh: TrainState, ref_params: Any, writer: Any, *,
                     ahead_of_time: bool, first_step: int) -> Programs:
    """Jits the train step and the batch passes. With `ahead_of_time`, compiles the train
    step now, for the batch `update_batch.spec` describes, and logs its memory: an
    out-of-memory shows before any sampling, and the loop's calls hit this executable."""
    passes, train_step = jit_programs(cfg, inp.model_cfg, inp.prompt_len,
                                      inp.train_sampling.score_temperature, inp.mesh, state_sh)
    if ahead_of_time:
        spec = update_batch.spec(cfg, passes, state, ref_params, inp.prompt_len, inp.mesh)
        t0 = time.perf_counter()
        compiled = train_step.lower(state, spec).compile()
        seconds = time.perf_counter() - t0
        memory = memory_mib(compiled)
        writer.log(describe_memory("train step", memory, seconds))
        writer.write(first_step, {"perf/train_step_compile_s": seconds,
                                  **{f"perf/train_step_{k}_mib": v for k, v in memory.items()}},
                     phase="compile")
    merge = None
    if state.frozen is not None and cfg.model.lora.merge_for_sampling:
        merge = jax.jit(functools.partial(lora.merge, cfg=inp.model_cfg),
                        out_shardings=state_sh.frozen)
    return Programs(train_step, passes, state_sh, merge)
