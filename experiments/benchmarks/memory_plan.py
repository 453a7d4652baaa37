"""Per-device memory of a config's device programs on its target mesh, from shapes alone.

    python experiments/benchmarks/memory_plan.py --config configs/gsm8k_grpo_qwen2_5_1_5b.py \
        [--devices 8] [--preset qwen2.5-1.5b] [--set mesh.fsdp=8 --set train.microbatches=8]

Compiles ahead of time, on faked CPU devices shaped like the config's mesh and from
`jax.eval_shape`d params (no weights are read or allocated), what one RL step runs on the
devices: the sampler (prefill + decode, `Sampler.program`), the log-prob pass over the whole
step's rows (reference and old policy, `update_batch.make_passes`; the value pass too with a
critic) and the train step on one minibatch (`compilation.jit_programs`, for the batch
`update_batch.spec` describes), all with the trainer's own shardings. It prints per-device
bytes: what stays on the devices through the step (params, optimizer state, reference params,
critic), XLA's memory analysis of each program (arguments, outputs, temporaries, aliased),
the sampler's KV cache, and what each phase needs in all, against 80 GiB (H100), 141 GiB
(H200), 16 GiB (TPU v5e) and 95 GiB (TPU v5p), with a setting that would make it fit where
it does not.

A config that names a checkpoint by `model.hf_path` gets its shapes from that directory's
config.json when it exists here, else from the preset of the same shape (`--preset`, or
CHECKPOINT_PRESETS for the shipped configs). `model.scan_layers=True` keeps the compile time
flat in depth (a 28-layer 7B train step unrolled compiles in minutes on two cores).

XLA:CPU's buffer assignment approximates an accelerator's, it is not one: the GPU and TPU
compilers fuse, schedule and overlap collectives differently (prefetched all-gathers of
FSDP weights hold extra memory there), may pick fused attention kernels that never hold the
[T, S] scores, and the runtime adds its own workspace, allocator fragmentation and (GPU) the
CUDA context. Read the numbers as estimates within a few tens of percent; a phase "fits"
here when it needs at most 90% of the device's memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Any

# Importing jax starts no backend: `main` still sets the faked device count before the first
# call that does.
import jax
import jax.numpy as jnp
import numpy as np

from lrmjax import config as config_lib
from lrmjax import envs as envs_lib
from lrmjax import parallel
from lrmjax.models import heads, hf, lora, presets, sharding, transformer
from lrmjax.sampling import Sampler, SamplingParams
from lrmjax.tokenizers import bucket
from lrmjax.train import compilation, rl, update_batch
from lrmjax.train import state as state_lib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

GIB = 2**30
# Memory per device, GiB, as each part is sold (H100 SXM 80 GB, H200 141 GB, v5e 16 GB, v5p
# 95 GB of HBM).
HARDWARE = {"H100": 80, "H200": 141, "TPU v5e": 16, "TPU v5p": 95}
HEADROOM = 0.9  # a phase fits a device when it needs at most this share of its memory
# The checkpoints the shipped real-model configs are written for (their model.hf_path is a
# directory given on the command line): the presets of the same shapes.
CHECKPOINT_PRESETS = {
    "gsm8k_grpo_qwen2_5_1_5b": "qwen2.5-1.5b",
    "tool_math_qwen2_5_1_5b": "qwen2.5-1.5b",
    "search_qa_qwen2_5_1_5b": "qwen2.5-1.5b",
    "math_dapo_qwen2_5_math_7b": "qwen2.5-math-7b",
}
PROGRAMS = ("sampler", "logprobs", "train")


# ------------------------------------------------------------------------------ the config
def load_config(spec: str, sets: list[str]) -> Any:
    """The config of `path[:arg]` with `--set key=value` overrides applied (unknown keys and
    malformed settings raise ValueError naming them)."""
    path, _, arg = spec.partition(":")
    cfg = config_lib.from_file(path, arg or None)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected key=value")
        config_lib.set_by_path(cfg, key.strip(), value.strip())
    return cfg


def resolve_model(cfg: Any, config_path: str, preset: str | None = None) -> tuple[Any, Any]:
    """(the config with `model.preset` filled in, the run's ModelConfig), from `preset`, else
    the checkpoint's config.json when `model.hf_path` exists here, else `model.preset`, else
    CHECKPOINT_PRESETS. The vocabulary is the checkpoint's (the embedding's rows), not the
    tokenizer's."""
    cfg = cfg.copy_and_resolve_references()
    hf_dir = pathlib.Path(cfg.model.hf_path) if cfg.model.hf_path else None
    if preset is None and hf_dir is not None and (hf_dir / "config.json").exists():
        model_cfg = hf.read_config(hf_dir, dtype=jnp.dtype(cfg.model.dtype),
                                   param_dtype=jnp.dtype(cfg.model.param_dtype))
        fields = {k: v for k, v in config_lib.run_fields(cfg).items()
                  if k not in ("dtype", "param_dtype")}
        return cfg, dataclasses.replace(model_cfg, **fields)
    name = preset or cfg.model.preset or CHECKPOINT_PRESETS.get(
        pathlib.Path(config_path.partition(":")[0]).stem)
    if not name:
        raise ValueError(f"{config_path} names no preset and its model.hf_path "
                         f"{cfg.model.hf_path!r} is not here: pass --preset "
                         f"(one of {sorted(presets.PRESETS)})")
    cfg.model.hf_path = ""
    cfg.model.preset = name
    return cfg, config_lib.model_config(cfg, presets.get(name).vocab_size)


def device_count(cfg: Any, devices: int | None) -> int:
    """Devices to fake: `devices`, else the mesh's product when no axis is -1, else 8 (one
    host of eight accelerators)."""
    if devices:
        return devices
    dims = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    return 8 if -1 in dims else math.prod(dims)


# ------------------------------------------------------------------------------ the plan
@dataclasses.dataclass
class Program:
    """XLA's memory analysis of one compiled program, bytes per device, and `extra`: its
    peak (arguments + outputs + temporaries - aliased) less the bytes of its arguments that
    stay on the devices anyway (`Plan.resident`)."""

    seconds: float
    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    extra: int

    @property
    def peak(self) -> int:
        return self.arguments + self.outputs + self.temporaries - self.aliased


@dataclasses.dataclass
class Plan:
    """Per-device bytes of one config on one mesh.

    Attributes:
      resident: what stays on the devices through the step: params, opt_state, ref_params,
        critic (params and optimizer state), each in bytes per device.
      programs: name -> Program ('sampler', 'logprobs', 'values', 'train').
      kv_cache: the sampler's KV cache (all rows, all slots), bytes per device.
      shapes: a few numbers for the header (rows, slots, params, ...).
    """

    resident: dict[str, int]
    programs: dict[str, Program]
    kv_cache: int
    shapes: dict[str, Any]

    @property
    def resident_total(self) -> int:
        return sum(self.resident.values())

    def phases(self) -> dict[str, int]:
        """Bytes per device each phase of the step needs: the resident state plus the extra
        of the programs it runs (sample: the sampler; prepare: the log-prob and value
        passes, one at a time; update: the train step)."""
        out = {}
        for phase, names in (("sample", ("sampler",)), ("prepare", ("logprobs", "values")),
                             ("update", ("train",))):
            extras = [self.programs[n].extra for n in names if n in self.programs]
            if extras:
                out[phase] = self.resident_total + max(extras)
        return out


def tree_bytes(tree: Any) -> int:
    """Bytes per device of a tree of arrays / ShapeDtypeStructs that carry shardings (a leaf
    without one counts whole)."""
    total = 0
    for x in jax.tree.leaves(tree):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def _with_shardings(shapes: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def state_shapes(cfg: Any, model_cfg: Any, mesh: Any) -> tuple[Any, Any, Any]:
    """(the policy, TrainState, reference params or None) as ShapeDtypeStructs with the
    trainer's shardings: params from the logical-axis rules, the state built as `rl.train`
    builds it (`rl.optimizers`, `TrainState.create`, a critic from the policy; under LoRA
    `policy.lora_state`: adapters trained, the base frozen in `model.lora.base_dtype` and the
    reference) and sharded as `state.place_state` shards it. The policy is what the sampler
    and the log-prob pass run: the params, or under LoRA `lora.LoraParams(base, adapters)`."""
    full = _with_shardings(transformer.param_shapes(model_cfg),
                           sharding.param_shardings(model_cfg, mesh))
    tx, critic_tx = rl.optimizers(cfg)
    lora_on = cfg.model.lora.rank > 0
    frozen = adapters = None
    if lora_on:
        dtype = jnp.dtype(cfg.model.lora.base_dtype or model_cfg.param_dtype)
        frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype,
                                                             sharding=x.sharding), full)
        adapters = _with_shardings(lora.adapter_shapes(model_cfg),
                                   sharding.adapter_shardings(model_cfg, mesh))

    def create(p, base, full):
        critic = None
        if critic_tx is not None:  # from the full policy at RL start, as rl.train does
            critic = heads.init_from_policy(model_cfg, full, jax.random.key(0))
        return state_lib.TrainState.create(p, tx, critic_params=critic, critic_tx=critic_tx,
                                           kl_coef=cfg.rl.kl_coef, frozen=base)

    state = jax.eval_shape(create, adapters if lora_on else full, frozen, full)
    shardings = state_lib.state_shardings(state, full, mesh)
    if lora_on:  # the adapters and their moments take the adapters' shardings
        by_adapters = state_lib.state_shardings(state, adapters, mesh)
        shardings = shardings.replace(params=by_adapters.params,
                                      opt_state=by_adapters.opt_state)
    state = _with_shardings(state, shardings)
    if cfg.rl.kl_mode == "none":
        return state.policy, state, None
    # Under LoRA the reference is the frozen base itself (no copy); else a copy of the params.
    return state.policy, state, state.frozen if lora_on else full


def _compile(lowered: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def _program(compiled: Any, seconds: float, resident_args: int) -> Program:
    m = compiled.memory_analysis()
    args, out = int(m.argument_size_in_bytes), int(m.output_size_in_bytes)
    temp, alias = int(m.temp_size_in_bytes), int(m.alias_size_in_bytes)
    return Program(seconds, args, out, temp, alias, args + out + temp - alias - resident_args)


def sampler_length(cfg: Any) -> tuple[int, str]:
    """Response slots of the sampler's KV cache: `sampling.max_new_tokens`, or for episodes
    (config 'env') the episode sampler's slots (every turn and observation at its cap); and
    a note saying which."""
    if cfg.env.name == "none":
        return cfg.sampling.max_new_tokens, ""
    turns = envs_lib.make_env(cfg.env.name, **cfg.env.kwargs.to_dict()).max_turns
    turn = cfg.env.turn_tokens or cfg.sampling.max_new_tokens
    slots = turns * turn + (turns - 1) * cfg.env.observation_tokens
    return slots, (f"episodes: the single-turn sampler over the episode sampler's {slots} "
                   f"slots ({turns} turns x {turn} + {turns - 1} observations x "
                   f"{cfg.env.observation_tokens}) stands in for its programs")


def build_plan(cfg: Any, model_cfg: Any, programs: tuple[str, ...] = PROGRAMS,
               log: Any = print) -> Plan:
    """Compiles `programs` of config `cfg` (with `model.preset` resolved, see
    `resolve_model`) on a mesh over all of jax's devices, one at a time, and returns their
    per-device memory. `log` gets a line per compiled program."""
    config_lib.validate(cfg, jax.device_count(), jax.process_count())
    unknown = set(programs) - set(PROGRAMS)
    if unknown:
        raise ValueError(f"unknown programs {sorted(unknown)}; valid: {PROGRAMS}")
    mesh = parallel.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp,
                               "tensor": cfg.mesh.tensor})
    params, state, ref_params = state_shapes(cfg, model_cfg, mesh)
    params_b, state_b = tree_bytes(params), tree_bytes(state)
    resident = {"params": params_b, "opt_state": tree_bytes(state.opt_state),
                "ref_params": (tree_bytes(ref_params) if ref_params is not None
                               and state.frozen is None else 0),
                "critic": tree_bytes((state.critic_params, state.critic_opt_state))}
    s = cfg.sampling
    R, sampler_note = sampler_length(cfg)
    sampling = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              min_p=s.min_p, max_new_tokens=R, n=s.n)
    P, rows = s.max_prompt_len, cfg.train.batch_prompts * s.n
    passes, train_step = compilation.jit_programs(cfg, model_cfg, P,
                                                  sampling.score_temperature, mesh,
                                                  jax.tree.map(lambda x: x.sharding, state))
    out: dict[str, Program] = {}
    done = lambda name: log(f"  {name}: compiled in {out[name].seconds:.0f} s")  # noqa: E731

    sampler = Sampler(model_cfg, pad_id=0, stop_ids=(1,), mesh=mesh, prompt_buckets=(P,))
    prompts = bucket(cfg.train.batch_prompts, sampler.batch_buckets)
    cache = jax.eval_shape(lambda: transformer.init_cache(model_cfg, prompts * s.n, P + R))
    # Rows split over the batch axes (the prompts' sharding, which XLA carries to the cache).
    shards = parallel.batch_divisor(mesh)
    kv_cache = tree_bytes((cache.k, cache.v)) // (shards if prompts * s.n % shards == 0 else 1)
    if "sampler" in programs:
        batch = parallel.batch_sharding(mesh)
        key = jax.eval_shape(lambda: jax.random.key(0))
        args = (jax.ShapeDtypeStruct((prompts, P), jnp.int32, sharding=batch),
                jax.ShapeDtypeStruct((prompts, P), jnp.bool_, sharding=batch),
                jax.ShapeDtypeStruct(key.shape, key.dtype,
                                     sharding=parallel.replicated(mesh)))
        t0 = time.perf_counter()
        compiled = sampler.program(params, args, sampling)
        out["sampler"] = _program(compiled, time.perf_counter() - t0, params_b)
        done("sampler")
    if "logprobs" in programs:
        spec = update_batch.row_spec(cfg, P, mesh, rows)
        compiled, sec = _compile(passes.logprobs.lower(params, spec["tokens"], spec["mask"]))
        out["logprobs"] = _program(compiled, sec, params_b)
        done("logprobs")
        if passes.values is not None:
            compiled, sec = _compile(passes.values.lower(state.critic_params, spec["tokens"],
                                                         spec["mask"]))
            out["values"] = _program(compiled, sec, tree_bytes(state.critic_params))
            done("values")
    if "train" in programs:
        spec = update_batch.spec(cfg, passes, state, ref_params, P, mesh)
        compiled, sec = _compile(train_step.lower(state, spec))
        out["train"] = _program(compiled, sec, state_b)
        done("train")
    minibatch = rows // cfg.train.minibatches
    lora_on = state.frozen is not None
    shapes = {"params": transformer.count_params(state.frozen if lora_on else params),
              "trained": transformer.count_params(state.params), "devices": jax.device_count(),
              "mesh": dict(mesh.shape), "rows": rows, "sampler_rows": prompts * s.n,
              "prompt_len": P, "response_len": s.max_new_tokens, "sampler_slots": P + R,
              "minibatch": minibatch,
              "microbatch": minibatch // cfg.train.microbatches, "sampler_note": sampler_note}
    return Plan(resident, out, kv_cache, shapes)


# ------------------------------------------------------------------------------ the report
def _gib(b: float) -> str:
    return f"{b / GIB:.1f}" if b >= GIB else f"{b / GIB:.3f}"


def _pow2_at_least(x: float) -> int:
    return 1 if x <= 1 else 2 ** math.ceil(math.log2(x))


def advice(plan: Plan, cfg: Any, model_cfg: Any, capacity_gib: float) -> str:
    """What would make the step fit a device of `capacity_gib` ('' when it fits): estimates
    from how the parts scale (more devices divide both the state and the rows each device
    holds; the settings below divide only the largest phase's activations), to be checked by
    running the plan again with the setting."""
    usable = HEADROOM * capacity_gib * GIB
    phases = plan.phases()
    worst = max(phases, key=lambda k: phases[k])
    if phases[worst] <= usable:
        return ""
    mesh, state = plan.shapes["mesh"], plan.resident_total
    devices = _pow2_at_least(phases[worst] / usable)
    tips = [f"{devices}x the devices ({plan.shapes['devices'] * devices}, mesh.fsdp="
            f"{mesh['fsdp'] * devices})"]
    if state > usable / 2:
        if cfg.model.lora.rank == 0:
            tips.append("LoRA (model.lora.rank=32, model.lora.base_dtype=bfloat16: no "
                        "gradient, optimizer state or reference copy for the base)")
    room = usable - state
    if room <= 0:
        return "; ".join(tips) + " (the state alone does not fit)"
    f = _pow2_at_least((phases[worst] - state) / room)
    shards = mesh["data"] * mesh["fsdp"]
    rows = plan.shapes["rows"]
    if worst == "update" and model_cfg.remat == "none":
        tips.append("model.remat=full")
    elif worst == "update":
        micro = cfg.train.microbatches * f
        if plan.shapes["minibatch"] % (micro * shards) == 0:
            tips.append(f"train.microbatches={micro}")
    elif worst == "prepare":
        k = cfg.train.logprob_microbatches * f
        if rows % (k * shards) == 0:
            tips.append(f"train.logprob_microbatches={k}")
    if len(tips) == 1 or worst == "sample":
        tips.append(f"train.batch_prompts={cfg.train.batch_prompts // f} (1/{f} of the rows)")
    return " or ".join(tips)


def report(plan: Plan, cfg: Any, model_cfg: Any, config: str) -> str:
    """The plan as markdown: header, resident state, programs, phases against each device,
    what would make it fit, and the caveat."""
    sh, m = plan.shapes, plan.shapes["mesh"]
    lines = [
        f"### {config}: {model_cfg.name}, {sh['params']:,} params, {sh['devices']} devices",
        "",
        f"mesh data={m['data']} fsdp={m['fsdp']} tensor={m['tensor']}; compute "
        f"{np.dtype(model_cfg.dtype).name}, params {np.dtype(model_cfg.param_dtype).name}, "
        f"remat {model_cfg.remat}, scan_layers {model_cfg.scan_layers}. A step: "
        f"{cfg.train.batch_prompts} prompts x {cfg.sampling.n} = {sh['rows']} rows of "
        f"{sh['prompt_len']} + {sh['response_len']} slots; the update: "
        f"{cfg.train.minibatches} minibatch(es) of {sh['minibatch']} rows, each in "
        f"{cfg.train.microbatches} microbatch(es) of {sh['microbatch']}."
        + (f" LoRA rank {cfg.model.lora.rank} on {', '.join(cfg.model.lora.targets)}: "
           f"{sh['trained']:,} adapter params trained ({sh['trained'] / sh['params']:.2%}), "
           f"the base frozen in {np.dtype(cfg.model.lora.base_dtype or model_cfg.param_dtype).name}"
           " (it is also the reference)." if cfg.model.lora.rank else ""),
        ""]
    if sh["sampler_note"]:
        lines += [f"Sampler: {sh['sampler_note']}.", ""]
    r = plan.resident
    lines += ["Per device, GiB (2^30 bytes):", "",
              "| stays on the devices | params | optimizer state | reference params | critic "
              "| total |", "|---|---|---|---|---|---|",
              f"| | {_gib(r['params'])} | {_gib(r['opt_state'])} | {_gib(r['ref_params'])} | "
              f"{_gib(r['critic'])} | {_gib(plan.resident_total)} |", "",
              "| program | compile s | arguments | outputs | temporaries | aliased | peak | "
              "beyond the state |", "|---|---|---|---|---|---|---|---|"]
    names = {"sampler": f"sampler ({sh['sampler_rows']} rows x {sh['sampler_slots']} slots, "
                        f"KV cache {_gib(plan.kv_cache)})",
             "logprobs": f"log-prob pass ({sh['rows']} rows"
                         + (f" in {cfg.train.logprob_microbatches} slices)"
                            if cfg.train.logprob_microbatches > 1 else ")"),
             "values": "value pass",
             "train": f"train step ({sh['minibatch']} rows)"}
    for name, p in plan.programs.items():
        lines.append(f"| {names[name]} | {p.seconds:.0f} | {_gib(p.arguments)} | "
                     f"{_gib(p.outputs)} | {_gib(p.temporaries)} | {_gib(p.aliased)} | "
                     f"{_gib(p.peak)} | {_gib(p.extra)} |")
    phases = plan.phases()
    lines += ["", "| phase | needs | " + " | ".join(f"{h} {c}" for h, c in HARDWARE.items())
              + " |", "|---|---|" + "---|" * len(HARDWARE)]

    def verdict(need: float, cap: float) -> str:
        share = need / (cap * GIB)
        return (f"{share:.0%} " + ("fits" if share <= HEADROOM else
                                   "tight" if share <= 1 else "no"))

    for phase, need in {**phases, "the step": max(phases.values())}.items():
        lines.append(f"| {phase} | {_gib(need)} | "
                     + " | ".join(verdict(need, c) for c in HARDWARE.values()) + " |")
    tips = [(h, advice(plan, cfg, model_cfg, c)) for h, c in HARDWARE.items()]
    tips = [(h, t) for h, t in tips if t]
    if tips:
        lines += ["", "To fit (estimates; check with --set): "
                  + "; ".join(f"**{h}**: {t}" for h, t in tips) + "."]
    lines += ["", "XLA:CPU's buffer assignment approximates an accelerator's: fusion, "
              "scheduling, collectives and attention kernels differ on GPU/TPU, and the "
              "runtime's own workspace is not counted; 'fits' means at most "
              f"{HEADROOM:.0%} of the device."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/<name>.py[:arg]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override, e.g. mesh.fsdp=8 (repeatable)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices to fake (default: the mesh's product, 8 when an axis is -1)")
    p.add_argument("--preset", default=None, help="the model's shape (default: see module doc)")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help=f"which to compile, of {PROGRAMS}")
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    # Before the first backend call: faked CPU devices shaped like the target mesh.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", device_count(cfg, args.devices))
    cfg, model_cfg = resolve_model(cfg, args.config, args.preset)
    print(common.machine_summary())
    t0 = time.perf_counter()
    plan = build_plan(cfg, model_cfg, tuple(args.programs.split(",")))
    print(f"compiled in {time.perf_counter() - t0:.0f} s\n")
    print(report(plan, cfg, model_cfg, args.config + "".join(f" --set {s}" for s in args.set)))


if __name__ == "__main__":
    main()
