"""Experiment configuration: defaults for every group, and validation that names the bad key.

An experiment file under `configs/` starts from `base_config(algorithm)`, changes what it needs
and returns the ConfigDict. `main.py` locks it (so `--config.rl.kl_coef=0` can only set keys that
exist) and calls `validate` before anything runs. The config is never mutated at run time;
derived values live in the trainer's own objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from lrmjax.models import presets
from lrmjax.rl import algorithms

_TYPES = {"float32", "bfloat16", "float16"}
# Estimators whose baseline does not come from the other responses to the same prompt; every
# other estimator in the registry compares responses within a group and needs n >= 2.
_BATCH_LEVEL_ESTIMATORS = frozenset({"gae", "reinforce_pp", "remax"})


def base_config(algorithm: str = "grpo") -> ml_collections.ConfigDict:
    """Defaults for every config group, with the RL knobs of `algorithm`'s preset."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"          # a name in lrmjax.models.presets.PRESETS
    c.model.hf_path = ""             # a local HF checkpoint dir; overrides `preset` when set
    c.model.dtype = "float32"        # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = "float32"
    c.model.remat = False
    c.model.scan_layers = False
    # ModelConfig fields to replace in the preset, e.g. {'num_layers': 2}. vocab_size -1 means
    # "the tokenizer's vocabulary size".
    c.model.overrides = ml_collections.ConfigDict({"vocab_size": -1})

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "char"        # 'char' (procedural tasks) or 'hf' (tokenizer.json)
    c.tokenizer.path = ""            # for 'hf'; defaults to model.hf_path
    c.tokenizer.chat_template = False  # wrap prompts with the tokenizer's chat template

    c.data = ml_collections.ConfigDict()
    c.data.source = "task"           # 'task', 'task_mixture', 'gsm8k_jsonl' or 'math_jsonl'
    c.data.task = "arithmetic"       # for source 'task': a name in lrmjax.data.tasks
    c.data.task_kwargs = ml_collections.ConfigDict()
    # For source 'task_mixture': {label: {'task': name (default: the label), 'weight': share
    # of the train and held-out sets (default 1), 'kwargs': {...}}}. Evaluation reports every
    # metric per label too (eval/<label>/...).
    c.data.mixture = ml_collections.ConfigDict()
    c.data.path = ""                 # for the JSONL sources
    c.data.eval_path = ""
    # For the JSONL sources, several held-out sets instead of eval_path: {label: {'path':
    # file, 'source': 'gsm8k_jsonl' | 'math_jsonl' (default: data.source)}}, the first
    # eval.size rows of each; evaluation reports every metric per label (eval/<label>/...).
    c.data.eval_sets = ml_collections.ConfigDict()
    c.data.prompt_template = "{prompt}"  # applied to each Example.prompt
    c.data.train_size = 100_000      # examples generated for a procedural train set
    c.data.eval_size = 500           # held-out examples (a disjoint seed)
    c.data.eval_seed = 1_000_003
    c.data.curriculum = "none"       # 'none', 'band' (PRIME), 'weighted' (Kimi k1.5)
    c.data.band_low = 0.0
    c.data.band_high = 1.0

    c.sampling = ml_collections.ConfigDict()
    c.sampling.n = 8                 # responses per prompt (the group size)
    c.sampling.temperature = 1.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0
    c.sampling.min_p = 0.0
    c.sampling.max_new_tokens = 16
    c.sampling.max_prompt_len = 32

    c.rl = algorithms.get(algorithm)
    # Presets are written for long responses (DAPO's overlong buffer is 4096 tokens); keep
    # the soft overlong ramp inside the default response budget.
    if c.rl.overlong_buffer_len > c.sampling.max_new_tokens:
        c.rl.overlong_buffer_len = c.sampling.max_new_tokens // 2
    c.algorithm = algorithm

    c.reward = ml_collections.ConfigDict()
    # Reward functions and weights. 'task' scores with the procedural task's own verifier.
    c.reward.fns = ml_collections.ConfigDict({"task": 1.0})
    # Process (step-level) rewards and weights (lrmjax.rewards.process), added per token on
    # top of the outcome reward; they need a token-level rl.adv_estimator.
    c.reward.process_fns = ml_collections.ConfigDict()
    c.reward.num_workers = 0         # 0 = in-process (no timeouts); >0 = worker processes
    c.reward.timeout_s = 10.0
    # The `code` reward's sandbox (lrmjax/rewards/sandbox.py) isolates programs only as root
    # with util-linux unshare/setpriv; elsewhere the run refuses to start, naming what is
    # missing, unless allow_unisolated (then programs run as plain child processes with this
    # process's uid and network, a warning is logged and reward/sandbox_isolated reads 0).
    c.reward.sandbox = ml_collections.ConfigDict()
    c.reward.sandbox.allow_unisolated = False
    # A control experiment: permute the rewards across the batch before computing advantages,
    # so they carry no information about the responses (learning should then stall).
    c.reward.shuffle_control = False

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6
    c.optim.schedule = "constant"    # 'constant' or 'cosine' (both after linear warmup)
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0
    c.optim.critic_lr = 1e-5
    c.optim.critic_warmup_steps = 0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 0                  # 0 = no supervised warm start
    c.sft.batch_size = 64
    c.sft.lr = 1e-3
    c.sft.warmup_steps = 20
    c.sft.eval_every = 50
    c.sft.target_accuracy = 1.0      # stop once held-out greedy accuracy reaches this
    c.sft.eval_size = 200            # held-out examples checked every sft.eval_every steps

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.batch_prompts = 16       # prompts per RL step (x sampling.n responses)
    c.train.ppo_epochs = 1
    c.train.minibatches = 1          # optimizer steps per epoch
    c.train.microbatches = 1         # gradient accumulation inside one optimizer step
    # Each group's prompt runs once, not n times, in the reference/old logprob passes and (with
    # one minibatch) the update: exact, and n-1 of n prompt token-passes fewer.
    c.train.shared_prompt_forward = True
    c.train.max_refill_rounds = 4    # dynamic sampling: extra sampling rounds per step
    c.train.max_nonfinite = 5        # consecutive skipped (non-finite) updates before stopping
    c.train.log_every = 10
    c.train.rollout_log_every = 50
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.export_hf = True         # save_pretrained at the end when the model is HF-compatible
    c.train.progress = True          # console progress bar
    c.train.peak_tflops = 0.44       # per device, for perf/mfu (2-core CPU fp32 matmul: ~0.44)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 100               # 0 = only before and after training
    c.eval.size = 500
    c.eval.k = 4                     # samples per prompt for pass@k / maj@k (0 = greedy only)
    c.eval.temperature = 1.0
    c.eval.batch_size = 256

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # CPU only: XLA devices to split the host into (set by `lrmjax.main` before jax starts),
    # so that the sharded code paths run on a CPU as they would on a device mesh. Which count
    # is fastest depends on the model (experiments/benchmarks/HISTORY.md, "Sampler throughput").
    c.mesh.cpu_devices = 8
    # CPU hosts: glibc malloc keeps XLA's per-call buffers instead of unmapping them after every
    # call and page-faulting them back in (see lrmjax/host.py).
    c.mesh.cpu_retain_freed_memory = True
    # Multi-host: call jax.distributed.initialize(). Empty address / -1 let JAX detect the
    # cluster (TPU pods, SLURM, ...); on CPU hosts set all three.
    c.mesh.distributed = False
    c.mesh.coordinator_address = ""
    c.mesh.num_processes = -1
    c.mesh.process_id = -1
    return c


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path`: lets one config build on another."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lrmjax_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load a config from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# Groups whose keys are free-form: model overrides (checked against ModelConfig), the reward
# weights (checked against the reward registry), task kwargs (checked by the task).
FREE_FORM_GROUPS = frozenset({"model.overrides", "reward.fns", "reward.process_fns",
                              "data.task_kwargs",
                              "data.mixture", "data.eval_sets"})


def _group_entry(entry: Any, where: str, valid: tuple[str, ...], example: str
                 ) -> dict[str, Any]:
    """One entry of a free-form group of groups as a dict; raises ValueError naming it
    (`where`) if it is not a group or has a key outside `valid`."""
    if not isinstance(entry, Mapping | ml_collections.ConfigDict):
        raise ValueError(f"{where} must be a group like {example}, got {entry!r}")
    entry = dict(entry)
    unknown = set(entry) - set(valid)
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; valid: "
                         f"{', '.join(repr(k) for k in valid)}")
    return entry


def mixture_components(mixture: Any) -> list[tuple[str, str, float, dict[str, Any]]]:
    """The entries of config 'data.mixture' as (label, task name, weight, task kwargs), sorted
    by label. Raises ValueError naming the entry for an empty mixture, an unknown key, an
    unknown task or a weight that is not positive."""
    from lrmjax.data import tasks as tasks_lib

    if not mixture:
        raise ValueError("config 'data.source' = 'task_mixture' needs 'data.mixture': "
                         "{label: {'task': name, 'weight': w, 'kwargs': {...}}}")
    out = []
    for label in sorted(mixture.keys()):
        where = f"config 'data.mixture.{label}'"
        entry = _group_entry(mixture[label], where, ("task", "weight", "kwargs"),
                             "{'task': 'arithmetic', 'weight': 1, 'kwargs': {}}")
        name = entry.get("task", label)
        if name not in tasks_lib.TASKS:
            raise ValueError(f"{where}: unknown task {name!r}; valid: {sorted(tasks_lib.TASKS)}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise ValueError(f"config 'data.mixture.{label}.weight' must be a positive number, "
                             f"got {weight!r}")
        kwargs = entry.get("kwargs") or {}
        kwargs = kwargs.to_dict() if isinstance(kwargs, ml_collections.ConfigDict) else dict(kwargs)
        out.append((str(label), name, float(weight), kwargs))
    return out


def eval_set_entries(data: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """The entries of config 'data.eval_sets' as (label, source kind, path), sorted by label.
    Raises ValueError naming the entry: eval sets need a JSONL training source, exclude
    'data.eval_path', and each needs a 'path' and a JSONL 'source'."""
    jsonl = ("gsm8k_jsonl", "math_jsonl")
    if data.source not in jsonl:
        raise ValueError(f"config 'data.eval_sets' needs a JSONL 'data.source' {jsonl}, got "
                         f"{data.source!r} (a task run evaluates on its own held-out problems)")
    if data.eval_path:
        raise ValueError("config 'data.eval_sets' and 'data.eval_path' exclude each other: "
                         "put the eval_path file in eval_sets under a label")
    out = []
    for label in sorted(data.eval_sets.keys()):
        where = f"config 'data.eval_sets.{label}'"
        entry = _group_entry(data.eval_sets[label], where, ("path", "source"),
                             "{'path': 'test.jsonl'}")
        if not entry.get("path"):
            raise ValueError(f"{where} needs a 'path' (a JSONL file)")
        kind = entry.get("source", data.source)
        if kind not in jsonl:
            raise ValueError(f"config 'data.eval_sets.{label}.source' must be one of {jsonl}, "
                             f"got {kind!r}")
        out.append((str(label), kind, str(entry["path"])))
    return out


def set_by_path(cfg: ml_collections.ConfigDict, path: str, text: str) -> None:
    """Sets `cfg.<path>` from command-line text, parsed as a Python literal (a bare word stays a
    string), the way `--config.key=value` does for `main.py`. Unknown paths raise ValueError."""
    import ast

    *groups, key = path.split(".")
    node = cfg
    for i, name in enumerate(groups):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ValueError(f"Unknown config key {'.'.join(groups[:i + 1])!r}")
        node = node[name]
    free = ".".join(groups) in FREE_FORM_GROUPS  # e.g. model.overrides.tie_embeddings
    if not isinstance(node, ml_collections.ConfigDict) or (key not in node and not free):
        raise ValueError(f"Unknown config key {path!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key in node and isinstance(node[key], float) and is_int:
        value = float(value)
    node[key] = value


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> presets.ModelConfig:
    """The ModelConfig a run uses (for presets; HF checkpoints bring their own)."""
    import jax.numpy as jnp

    overrides = dict(cfg.model.overrides)
    if overrides.get("vocab_size", -1) == -1:
        overrides["vocab_size"] = vocab_size
    return presets.get(cfg.model.preset, dtype=jnp.dtype(cfg.model.dtype),
                       param_dtype=jnp.dtype(cfg.model.param_dtype), remat=cfg.model.remat,
                       scan_layers=cfg.model.scan_layers, **overrides)


def _check_keys(cfg: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
                prefix: str, free: frozenset[str]) -> None:
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if key not in defaults:
            raise ValueError(f"Unknown config key {path!r}; valid keys under "
                             f"{prefix or 'the root'}: {sorted(defaults.keys())}")
        value, default = cfg[key], defaults[key]
        if path in free:
            continue
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"Config key {path!r} must be a group, got {value!r}")
            _check_keys(value, default, path + ".", free)
        elif default is not None and value is not None and not _same_type(value, default):
            raise ValueError(f"Config key {path!r} must be {type(default).__name__}, got "
                             f"{value!r} ({type(value).__name__})")


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
    """Raises ValueError naming the first bad key: unknown key, wrong type, bad sizes.
    `num_devices` / `num_processes` (known once JAX has started) add the mesh checks."""
    defaults = base_config(cfg.get("algorithm", "grpo"))
    _check_keys(cfg, defaults, "", FREE_FORM_GROUPS)

    fields = {f.name for f in dataclasses.fields(presets.ModelConfig)}
    bad = set(cfg.model.overrides.keys()) - fields
    if bad:
        raise ValueError(f"Unknown key(s) {sorted(bad)} in config 'model.overrides'; valid: "
                         f"{sorted(fields)}")
    if not cfg.model.hf_path and cfg.model.preset not in presets.PRESETS:
        raise ValueError(f"config 'model.preset' {cfg.model.preset!r} is not a preset (valid: "
                         f"{sorted(presets.PRESETS)}) and 'model.hf_path' is not set: name a "
                         "preset or a local HF checkpoint directory")
    for key in ("dtype", "param_dtype"):
        if cfg.model[key] not in _TYPES:
            raise ValueError(f"config 'model.{key}' must be one of {sorted(_TYPES)}, got "
                             f"{cfg.model[key]!r}")
    if cfg.tokenizer.kind not in ("char", "hf"):
        raise ValueError(f"config 'tokenizer.kind' must be 'char' or 'hf', got "
                         f"{cfg.tokenizer.kind!r}")
    if cfg.data.source not in ("task", "task_mixture", "gsm8k_jsonl", "math_jsonl"):
        raise ValueError(f"config 'data.source' {cfg.data.source!r} must be one of 'task', "
                         "'task_mixture', 'gsm8k_jsonl', 'math_jsonl'")
    if cfg.data.source == "task_mixture":
        mixture_components(cfg.data.mixture)  # raises naming the bad entry
    if cfg.data.eval_sets:
        eval_set_entries(cfg.data)  # raises naming the bad entry
    if cfg.reward.process_fns:
        from lrmjax.rewards import process as process_lib
        from lrmjax.rl import advantages

        for name, weight in cfg.reward.process_fns.items():
            if name not in process_lib.registered_process():
                raise ValueError(f"config 'reward.process_fns.{name}': unknown process reward; "
                                 f"registered: {process_lib.registered_process()}")
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ValueError(f"config 'reward.process_fns.{name}' must be a number (the "
                                 f"weight), got {weight!r}")
        if cfg.rl.adv_estimator not in advantages.TOKEN_REWARD_ESTIMATORS:
            raise ValueError(
                f"config 'reward.process_fns' needs a token-level 'rl.adv_estimator' "
                f"{sorted(advantages.TOKEN_REWARD_ESTIMATORS)}, got {cfg.rl.adv_estimator!r} "
                "(its advantages take outcome rewards only)")
    if cfg.data.curriculum not in ("none", "band", "weighted"):
        raise ValueError(f"config 'data.curriculum' {cfg.data.curriculum!r} must be one of "
                         "'none', 'band', 'weighted'")
    if cfg.optim.schedule not in ("constant", "cosine"):
        raise ValueError(f"config 'optim.schedule' {cfg.optim.schedule!r} must be 'constant' or "
                         "'cosine'")

    for key in ("sampling.n", "sampling.max_new_tokens", "sampling.max_prompt_len",
                "train.batch_prompts", "train.ppo_epochs", "train.minibatches",
                "train.microbatches", "sft.batch_size", "eval.batch_size"):
        group, name = key.split(".")
        if cfg[group][name] <= 0:
            raise ValueError(f"config '{key}' must be positive, got {cfg[group][name]}")
    n = cfg.sampling.n
    batch = cfg.train.batch_prompts * n
    per_update = cfg.train.minibatches * cfg.train.microbatches
    if batch % per_update:
        raise ValueError(f"config 'train.batch_prompts' x 'sampling.n' = {batch} responses is not "
                         f"divisible by train.minibatches x train.microbatches = {per_update}")
    if cfg.rl.adv_estimator not in _BATCH_LEVEL_ESTIMATORS and n < 2:
        raise ValueError(f"config 'sampling.n' = {n}: the {cfg.rl.adv_estimator!r} advantage "
                         "needs at least 2 responses per prompt")
    if cfg.rl.overlong_buffer_len > cfg.sampling.max_new_tokens:
        raise ValueError(f"config 'rl.overlong_buffer_len' = {cfg.rl.overlong_buffer_len} exceeds "
                         f"'sampling.max_new_tokens' = {cfg.sampling.max_new_tokens}: the soft "
                         "overlong penalty ramp must fit inside the response budget")
    if num_devices is not None:
        from lrmjax import parallel

        dims = parallel.mesh_shape(
            {"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor},
            num_devices)
        shards = dims[0] * dims[1]
        if (batch // per_update) % shards:
            raise ValueError(f"a microbatch of {batch // per_update} responses does not divide "
                             f"over the {shards} batch shards of mesh "
                             f"{dict(zip(parallel.MESH_AXES, dims, strict=True))} "
                             "(config 'train.batch_prompts')")
    hosts = num_processes or (max(cfg.mesh.num_processes, 1) if cfg.mesh.distributed else 1)
    for key in ("train.batch_prompts", "sft.batch_size", "sft.eval_size", "eval.size",
                "eval.batch_size"):
        group, name = key.split(".")
        if hosts > 1 and cfg[group][name] % hosts:
            raise ValueError(f"config '{key}' = {cfg[group][name]} does not split over the "
                             f"{hosts} hosts (mesh.num_processes): each host takes an equal "
                             "share")
    try:
        algorithms.validate(cfg.rl)
    except ValueError as e:
        raise ValueError(f"config 'rl' (algorithm {cfg.algorithm!r}): {e}") from e
