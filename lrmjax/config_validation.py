"""Validation of an experiment config: every refusal is a ValueError that names the key.

`lrmjax.config.validate` is the entry point (`main.py` calls it before anything runs). It
checks, in order: unknown keys and wrong types against `base_config`'s defaults; the valid
range of every number (`RANGES`, one entry per int/float key of the defaults: a key added to
`base_config` without one makes every validation fail, so the table cannot drift); the model
(override fields, their types, a preset that builds, a response budget that fits its length);
the reward functions (registered names, numeric weights); the data source; sizes that must
divide each other, the mesh or the hosts; DAPO's overlong penalty kept off the task's longest
answer (`check_overlong_buffer`); and the algorithm knobs
(`lrmjax.rl.algorithms.validate`). The readers of the free-form groups `data.mixture` and
`data.eval_sets` live here too (`lrmjax.config` re-exports them)."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_collections

from lrmjax.models import presets, transformer
from lrmjax.rl import algorithms

_TYPES = {"float32", "bfloat16", "float16"}
# Estimators whose baseline does not come from the other responses to the same prompt; every
# other estimator in the registry compares responses within a group and needs n >= 2.
_BATCH_LEVEL_ESTIMATORS = frozenset({"gae", "reinforce_pp", "remax"})
# ModelConfig fields with a config key of their own: an override would collide with it.
_OWN_MODEL_KEYS = {"dtype": "model.dtype", "param_dtype": "model.param_dtype",
                   "remat": "model.remat", "scan_layers": "model.scan_layers",
                   "lora_rank": "model.lora.rank", "lora_alpha": "model.lora.alpha",
                   "lora_targets": "model.lora.targets"}


# Groups whose keys are free-form: model overrides (checked against ModelConfig), the reward
# weights (checked against the reward registry), task kwargs (checked by the task).
FREE_FORM_GROUPS = frozenset({"model.overrides", "reward.fns", "reward.process_fns",
                              "data.task_kwargs", "sft.task_kwargs", "env.kwargs",
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


# The JSONL kinds of `lrmjax.data.datasets.SOURCES` (tests/test_config.py checks they agree).
JSONL_SOURCES = ("gsm8k_jsonl", "math_jsonl", "code_jsonl")


def eval_set_entries(data: ml_collections.ConfigDict) -> list[tuple[str, str, str]]:
    """The entries of config 'data.eval_sets' as (label, source kind, path), sorted by label.
    Raises ValueError naming the entry: eval sets need a JSONL training source, exclude
    'data.eval_path', and each needs a 'path' and a JSONL 'source'."""
    jsonl = JSONL_SOURCES
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


@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a number: `low <= v <= high` (strict with `low_open` / `high_open`;
    None = unbounded), or one of the sentinels `also` (e.g. -1 = 'fill' / 'detect'). NaN and
    infinities are never valid."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple[int, ...] = ()

    def __contains__(self, v: float) -> bool:
        if v in self.also:
            return True
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        elif self.low == 0:
            text = "positive" if self.low_open else "non-negative"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        return text + "".join(f" or {a}" for a in self.also)


_POSITIVE = Range(0, low_open=True)      # a timeout, an epsilon
_COUNT = _POSITIVE                       # an int: a size, an interval, a count >= 1
_NON_NEGATIVE = Range(0)                 # steps or rounds that may be none
_FRACTION = Range(0, 1)                  # a probability or ratio
_BETA = Range(0, 1, high_open=True)      # Adam's moment decay
_RATE = _NON_NEGATIVE                    # a learning rate: 0 is the no-learning control
_AXIS = Range(1, also=(-1,))             # a mesh axis: -1 fills the devices left

# The valid range of every int/float key of `base_config` outside the free-form groups and
# `rl` (whose knobs `algorithms.validate` checks against its own registries).
RANGES: dict[str, Range] = {
    "seed": _NON_NEGATIVE,               # numpy's default_rng refuses a negative seed
    "model.lora.rank": Range(0, 128),     # 0 = full fine-tuning
    "model.lora.alpha": _POSITIVE,
    "data.train_size": _COUNT,
    "data.eval_size": _COUNT,
    "data.eval_seed": _NON_NEGATIVE,
    "data.band_low": _FRACTION,
    "data.band_high": _FRACTION,
    "sampling.n": _COUNT,
    "sampling.temperature": _NON_NEGATIVE,  # 0 = greedy
    "sampling.top_k": _NON_NEGATIVE,        # 0 = off
    "sampling.top_p": Range(0, 1, low_open=True),
    "sampling.min_p": Range(0, 1, high_open=True),
    "sampling.max_new_tokens": _COUNT,
    "sampling.max_prompt_len": _COUNT,
    "reward.num_workers": _NON_NEGATIVE,   # 0 = in-process
    "reward.timeout_s": _POSITIVE,
    "reward.max_failing_calls": _NON_NEGATIVE,  # 0 = never stop
    "reward.random_p": _FRACTION,  # 0 = off
    "optim.lr": _RATE,
    "optim.warmup_steps": _NON_NEGATIVE,
    "optim.min_lr_ratio": _FRACTION,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.b1": _BETA,
    "optim.b2": _BETA,
    "optim.eps": _POSITIVE,
    "optim.grad_clip": _NON_NEGATIVE,      # 0 = no clipping
    "optim.critic_lr": _RATE,
    "optim.critic_warmup_steps": _NON_NEGATIVE,
    "sft.steps": _NON_NEGATIVE,            # 0 = no warm start
    "sft.batch_size": _COUNT,
    "sft.lr": _RATE,
    "sft.warmup_steps": _NON_NEGATIVE,
    "sft.eval_every": _COUNT,
    "sft.target_accuracy": _FRACTION,
    "sft.eval_size": _COUNT,
    "train.steps": _COUNT,
    "train.batch_prompts": _COUNT,
    "train.ppo_epochs": _COUNT,
    "train.minibatches": _COUNT,
    "train.microbatches": _COUNT,
    "train.logprob_microbatches": _COUNT,
    "train.logits_chunk_mb": _NON_NEGATIVE,  # 0 = one pass
    "train.pack_tokens": _NON_NEGATIVE,    # 0 = padded rows
    "train.max_refill_rounds": _NON_NEGATIVE,
    "train.max_nonfinite": _COUNT,
    "train.log_every": _COUNT,
    "train.rollout_log_every": _COUNT,
    "train.checkpoint_every": _COUNT,
    "train.keep_checkpoints": _COUNT,      # 0 would keep no checkpoint to resume from
    "train.peak_tflops": _POSITIVE,
    "eval.every": _NON_NEGATIVE,           # 0 = only before and after training
    "eval.size": _COUNT,
    "eval.k": _NON_NEGATIVE,               # 0 = greedy only
    "eval.temperature": _NON_NEGATIVE,
    "eval.batch_size": _COUNT,
    "env.turn_tokens": _NON_NEGATIVE,      # 0 = the episode budget
    "env.observation_tokens": _COUNT,
    "env.num_workers": _NON_NEGATIVE,      # 0 = in-process
    "env.timeout_s": _POSITIVE,
    "env.max_observation_chars": _COUNT,
    "mesh.data": _AXIS,
    "mesh.fsdp": _AXIS,
    "mesh.tensor": _AXIS,
    "mesh.cpu_devices": _COUNT,
    "mesh.num_processes": Range(1, also=(-1,)),   # -1 = let JAX detect it
    "mesh.process_id": Range(0, also=(-1,)),
}


def numeric_keys(defaults: ml_collections.ConfigDict, prefix: str = ""
                 ) -> Iterator[tuple[str, int | float]]:
    """(path, value) of every int/float key of `defaults` (bools excluded) outside the
    free-form groups and `rl`: the keys `RANGES` must cover."""
    for key, value in defaults.items():
        path = f"{prefix}{key}"
        if path in FREE_FORM_GROUPS or path == "rl":
            continue
        if isinstance(value, ml_collections.ConfigDict):
            yield from numeric_keys(value, path + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield path, value


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
    node = cfg
    for name in path.split("."):
        node = node[name]
    return node


def check_ranges(cfg: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
    """Every number of `cfg` inside its `RANGES` entry, looked up from the defaults' keys."""
    for path, _ in numeric_keys(defaults):
        if path not in RANGES:
            raise KeyError(f"config key {path!r} has no entry in "
                           "lrmjax.config_validation.RANGES: give it its valid range")
        value = _get(cfg, path)
        if not isinstance(value, int | float) or value not in RANGES[path]:  # None too
            raise ValueError(f"config '{path}' must be {RANGES[path]}, got {value!r}")
    if cfg.data.band_low > cfg.data.band_high:
        raise ValueError(f"config 'data.band_low' = {cfg.data.band_low} exceeds 'data.band_high'"
                         f" = {cfg.data.band_high}")


def check_response_budget(max_seq_len: int, sampling: ml_collections.ConfigDict,
                          model: str) -> None:
    """Raises ValueError unless a prompt of `sampling.max_prompt_len` tokens and a response of
    `sampling.max_new_tokens` fit the model's `max_seq_len` (`model` says where it is from)."""
    room = max_seq_len - sampling.max_prompt_len
    if sampling.max_new_tokens > room:
        raise ValueError(
            f"config 'sampling.max_new_tokens' = {sampling.max_new_tokens} does not fit {model}:"
            f" max_seq_len {max_seq_len} - 'sampling.max_prompt_len' {sampling.max_prompt_len}"
            f" leaves {room} tokens for a response")


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    return isinstance(value, hint)


def check_model(cfg: ml_collections.ConfigDict) -> None:
    """`model.overrides`: ModelConfig fields only, of the field's type, none with a config key
    of its own, none with an HF checkpoint (its config.json defines the model); a preset that
    builds with them; and a response budget that fits the preset's length."""
    overrides = dict(cfg.model.overrides)
    fields = {f.name for f in dataclasses.fields(presets.ModelConfig)}
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"Unknown key(s) {sorted(bad)} in config 'model.overrides'; valid: "
                         f"{sorted(fields)}")
    for name in sorted(set(overrides) & set(_OWN_MODEL_KEYS)):
        raise ValueError(f"config 'model.overrides.{name}': set config '{_OWN_MODEL_KEYS[name]}'"
                         " instead")
    hints = typing.get_type_hints(presets.ModelConfig)
    for name, value in sorted(overrides.items()):
        hint = hints[name]
        if hint in (int, float, bool, str) and not _type_ok(value, hint):
            raise ValueError(f"config 'model.overrides.{name}' must be {hint.__name__} (a "
                             f"ModelConfig field), got {value!r} ({type(value).__name__})")
    if cfg.model.hf_path:
        extra = {k: v for k, v in overrides.items() if (k, v) != ("vocab_size", -1)}
        if extra:
            raise ValueError(f"config 'model.overrides' {extra} would be ignored: the "
                             "'model.hf_path' checkpoint's config.json defines the model")
        return  # its length is known once it is loaded (`train.inputs.build_inputs`)
    if cfg.model.preset not in presets.PRESETS:
        raise ValueError(f"config 'model.preset' {cfg.model.preset!r} is not a preset (valid: "
                         f"{sorted(presets.PRESETS)}) and 'model.hf_path' is not set: name a "
                         "preset or a local HF checkpoint directory")
    if overrides.get("vocab_size", -1) == -1:  # the tokenizer's size, known later
        overrides["vocab_size"] = presets.PRESETS[cfg.model.preset].vocab_size
    try:
        model_cfg = presets.get(cfg.model.preset, **overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config 'model.overrides' {dict(cfg.model.overrides)} on preset "
                         f"{cfg.model.preset!r}: {e}") from e
    check_response_budget(model_cfg.max_seq_len, cfg.sampling,
                          f"model preset {cfg.model.preset!r} (with 'model.overrides')")


def check_lora(cfg: ml_collections.ConfigDict) -> None:
    """`model.lora`: targets are names of `presets.LORA_TARGETS`, at least one, none twice;
    base_dtype a dtype name or ''; the switches that only mean something under LoRA are off
    without it (rank and alpha are checked by `RANGES`)."""
    lo = cfg.model.lora
    targets = list(lo.targets)
    valid = list(presets.LORA_TARGETS)
    unknown = [t for t in targets if t not in presets.LORA_TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        why = (f"unknown name(s) {unknown}" if unknown else "it is empty" if not targets
               else "a name appears twice")
        raise ValueError(f"config 'model.lora.targets' = {tuple(targets)}: {why}; valid names: "
                         f"{valid}")
    if lo.base_dtype not in ("", *_TYPES):
        raise ValueError(f"config 'model.lora.base_dtype' must be '' (= model.param_dtype) or "
                         f"one of {sorted(_TYPES)}, got {lo.base_dtype!r}")
    if not lo.rank:
        for key, off in (("merge_for_sampling", False), ("base_dtype", "")):
            if lo[key] != off:
                raise ValueError(f"config 'model.lora.{key}' = {lo[key]!r} needs LoRA: set "
                                 "'model.lora.rank' > 0")


def _check_weights(group: ml_collections.ConfigDict, path: str, registered: list[str],
                   kind: str) -> None:
    for name, weight in group.items():
        if name not in registered:
            raise ValueError(f"config '{path}.{name}': unknown {kind}; registered: {registered}")
        if (isinstance(weight, bool) or not isinstance(weight, int | float)
                or not math.isfinite(weight)):
            raise ValueError(f"config '{path}.{name}' must be a finite number (the weight), "
                             f"got {weight!r}")


def check_rewards(cfg: ml_collections.ConfigDict) -> None:
    """Reward names registered, weights finite numbers, process rewards with a token-level
    advantage estimator."""
    from lrmjax import rewards
    from lrmjax.rewards import process as process_lib
    from lrmjax.rl import advantages

    if not cfg.reward.fns and cfg.env.name == "none":
        raise ValueError("config 'reward.fns' is empty: name at least one reward function, "
                         "e.g. {'task': 1.0} (only an environment's own rewards can stand "
                         "alone)")
    _check_weights(cfg.reward.fns, "reward.fns", rewards.names(), "reward")
    if cfg.reward.process_fns:
        _check_weights(cfg.reward.process_fns, "reward.process_fns",
                       process_lib.registered_process(), "process reward")
        if cfg.rl.adv_estimator not in advantages.TOKEN_REWARD_ESTIMATORS:
            raise ValueError(
                f"config 'reward.process_fns' needs a token-level 'rl.adv_estimator' "
                f"{sorted(advantages.TOKEN_REWARD_ESTIMATORS)}, got {cfg.rl.adv_estimator!r} "
                "(its advantages take outcome rewards only)")


def check_env(cfg: ml_collections.ConfigDict) -> None:
    """A registered environment that builds from 'env.kwargs', a shipped chat template, a
    turn cap within the episode budget."""
    if cfg.env.name == "none":
        return
    from lrmjax import envs as envs_lib
    from lrmjax.envs import chat

    try:
        envs_lib.make_env(cfg.env.name, **cfg.env.kwargs.to_dict())  # builds, or names why
    except ValueError as e:
        raise ValueError(f"config 'env.name'/'env.kwargs': {e}") from e
    if cfg.env.chat_template and cfg.env.chat_template not in chat.template_names():
        raise ValueError(f"config 'env.chat_template' {cfg.env.chat_template!r} is not a "
                         f"shipped template; valid: {list(chat.template_names())} or ''")
    turn = cfg.env.turn_tokens or cfg.sampling.max_new_tokens
    if turn > cfg.sampling.max_new_tokens:
        raise ValueError(f"config 'env.turn_tokens' = {turn} exceeds the episode budget "
                         f"'sampling.max_new_tokens' = {cfg.sampling.max_new_tokens}")
    _check_result_width(cfg)


def _check_result_width(cfg: ml_collections.ConfigDict) -> None:
    """`tool_arithmetic`'s demonstrations write the calculator's results as the `tools`
    environment does: their 'result_width' must be the environment's, or the warm start would
    imitate observations the episodes never show."""
    if cfg.env.name != "tools":
        return
    env_width = cfg.env.kwargs.to_dict().get("result_width", 0)
    sets = []
    if cfg.data.source == "task" and cfg.data.task == "tool_arithmetic":
        sets.append(("data.task_kwargs", cfg.data.task_kwargs.to_dict()))
        if cfg.sft.steps:
            sets.append(("sft.task_kwargs", warm_start_task_kwargs(cfg)))
    elif cfg.data.source == "task_mixture":
        sets += [(f"data.mixture.{label}.kwargs", kwargs)
                 for label, name, _, kwargs in mixture_components(cfg.data.mixture)
                 if name == "tool_arithmetic"]
    for where, kwargs in sets:
        width = kwargs.get("result_width", 0)
        if width != env_width:
            raise ValueError(f"config '{where}' result_width = {width} but 'env.kwargs' "
                             f"result_width = {env_width}: tool_arithmetic's demonstrations "
                             "must write the calculator's results as the environment does")


def check_keys(cfg: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict,
               prefix: str = "") -> None:
    """Every key of `cfg` is a key of `defaults`, of the default's type (free-form groups are
    checked by their own functions)."""
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if key not in defaults:
            raise ValueError(f"Unknown config key {path!r}; valid keys under "
                             f"{prefix or 'the root'}: {sorted(defaults.keys())}")
        value, default = cfg[key], defaults[key]
        if path in FREE_FORM_GROUPS:
            continue
        if isinstance(default, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(f"Config key {path!r} must be a group, got {value!r}")
            check_keys(value, default, path + ".")
        elif default is not None and value is not None and not _same_type(value, default):
            raise ValueError(f"Config key {path!r} must be {type(default).__name__}, got "
                             f"{value!r} ({type(value).__name__})")


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    return isinstance(value, type(default))


def _check_choices(cfg: ml_collections.ConfigDict) -> None:
    for key in ("dtype", "param_dtype"):
        if cfg.model[key] not in _TYPES:
            raise ValueError(f"config 'model.{key}' must be one of {sorted(_TYPES)}, got "
                             f"{cfg.model[key]!r}")
    if cfg.model.remat not in transformer.REMAT_POLICIES:
        raise ValueError(f"config 'model.remat' must be one of {sorted(transformer.REMAT_POLICIES)}"
                         f", got {cfg.model.remat!r}")
    if cfg.tokenizer.kind not in ("char", "hf"):
        raise ValueError(f"config 'tokenizer.kind' must be 'char' or 'hf', got "
                         f"{cfg.tokenizer.kind!r}")
    if cfg.data.source not in ("task", "task_mixture", *JSONL_SOURCES):
        raise ValueError(f"config 'data.source' {cfg.data.source!r} must be one of "
                         f"{('task', 'task_mixture', *JSONL_SOURCES)}")
    if cfg.data.curriculum not in ("none", "band", "weighted"):
        raise ValueError(f"config 'data.curriculum' {cfg.data.curriculum!r} must be one of "
                         "'none', 'band', 'weighted'")
    if cfg.optim.schedule not in ("constant", "cosine"):
        raise ValueError(f"config 'optim.schedule' {cfg.optim.schedule!r} must be 'constant' or "
                         "'cosine'")


def _check_data(cfg: ml_collections.ConfigDict) -> None:
    """The procedural tasks build with their kwargs (as the trainer builds them later, after
    the model); the mixture and eval-set entries are well-formed."""
    from lrmjax.data import tasks as tasks_lib

    d = cfg.data
    tasks = []
    if d.source == "task":
        if d.task not in tasks_lib.TASKS:
            raise ValueError(f"config 'data.task': unknown task {d.task!r}; valid: "
                             f"{sorted(tasks_lib.TASKS)}")
        tasks.append(("data.task_kwargs", d.task, d.task_kwargs.to_dict()))
        if cfg.sft.task_kwargs:
            tasks.append(("sft.task_kwargs", d.task, warm_start_task_kwargs(cfg)))
    elif cfg.sft.task_kwargs:
        raise ValueError(f"config 'sft.task_kwargs' needs data.source 'task' (a procedural "
                         f"task to draw demonstrations from), got {d.source!r}")
    if cfg.sft.from_workdir and not cfg.sft.steps:
        raise ValueError("config 'sft.from_workdir' needs a warm start ('sft.steps' > 0, as the "
                         "run it names had)")
    if d.source == "task_mixture":  # raises naming the bad entry
        tasks += [(f"data.mixture.{label}", name, kwargs)
                  for label, name, _, kwargs in mixture_components(d.mixture)]
    for where, name, kwargs in tasks:
        try:
            tasks_lib.get_task(name, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config '{where}' (task {name!r}): {e}") from e
    if d.eval_sets:
        eval_set_entries(d)  # raises naming the bad entry


def warm_start_task_kwargs(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The kwargs of the task the warm start's demonstrations come from: 'data.task_kwargs'
    with 'sft.task_kwargs' over them."""
    return {**cfg.data.task_kwargs.to_dict(), **cfg.sft.task_kwargs.to_dict()}


def longest_answer(cfg: ml_collections.ConfigDict) -> tuple[int, str] | None:
    """(tokens, which task) of the longest reference answer the configured procedural task can
    generate (`Task.max_answer_chars`), EOS not counted; for a mixture, the longest over its
    entries that know theirs. None where no task knows it, for the JSONL sources, and for an
    HF tokenizer (one token per character holds only for the char tokenizer)."""
    from lrmjax.data import tasks as tasks_lib

    d = cfg.data
    if cfg.tokenizer.kind != "char" or d.source not in ("task", "task_mixture"):
        return None
    if d.source == "task":
        entries = [("data.task", d.task, d.task_kwargs.to_dict())]
    else:
        entries = [(f"data.mixture.{label}", name, kwargs)
                   for label, name, _, kwargs in mixture_components(d.mixture)]
    found = []
    for where, name, kwargs in entries:
        chars = tasks_lib.get_task(name, **kwargs).max_answer_chars()
        if chars is not None:
            found.append((chars, f"the task of config '{where}' ({name!r})"))
    return max(found) if found else None


def check_overlong_buffer(cfg: ml_collections.ConfigDict) -> None:
    """DAPO's soft overlong penalty (`rl.overlong_buffer_len` > 0) starts past
    `sampling.max_new_tokens - rl.overlong_buffer_len` tokens: that must leave room for the
    task's longest answer and EOS (`longest_answer`), or it punishes correct answers."""
    buffer, budget = cfg.rl.overlong_buffer_len, cfg.sampling.max_new_tokens
    if buffer > budget:
        raise ValueError(f"config 'rl.overlong_buffer_len' = {buffer} exceeds "
                         f"'sampling.max_new_tokens' = {budget}: the soft overlong penalty ramp "
                         "must fit inside the response budget")
    found = longest_answer(cfg) if buffer > 0 else None
    if found is None:
        return
    chars, where = found
    if budget - buffer < chars + 1:
        raise ValueError(
            f"config 'rl.overlong_buffer_len' = {buffer} with 'sampling.max_new_tokens' = "
            f"{budget} penalizes responses of {budget - buffer + 1} tokens or more, but "
            f"{where} has answers of up to {chars} tokens + EOS = {chars + 1}: correct "
            f"answers would be penalized. Need 'sampling.max_new_tokens' - "
            f"'rl.overlong_buffer_len' >= {chars + 1} (raise the budget or shrink the buffer)")


def _check_sizes(cfg: ml_collections.ConfigDict, num_devices: int | None,
                 num_processes: int | None) -> None:
    n = cfg.sampling.n
    batch = cfg.train.batch_prompts * n
    per_update = cfg.train.minibatches * cfg.train.microbatches
    if batch % per_update:
        raise ValueError(f"config 'train.batch_prompts' x 'sampling.n' = {batch} responses is not "
                         f"divisible by train.minibatches x train.microbatches = {per_update}")
    longest = cfg.sampling.max_prompt_len + cfg.sampling.max_new_tokens
    if 0 < cfg.train.pack_tokens < longest:
        raise ValueError(f"config 'train.pack_tokens' = {cfg.train.pack_tokens} is shorter than "
                         f"a whole sequence: sampling.max_prompt_len + sampling.max_new_tokens "
                         f"= {longest}")
    if cfg.rl.adv_estimator not in _BATCH_LEVEL_ESTIMATORS and n < 2:
        raise ValueError(f"config 'sampling.n' = {n}: the {cfg.rl.adv_estimator!r} advantage "
                         "needs at least 2 responses per prompt")
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
        chunks = cfg.train.logprob_microbatches
        if batch % (chunks * shards):
            raise ValueError(f"config 'train.logprob_microbatches' = {chunks}: the "
                             f"{batch} responses of a step do not split into {chunks} "
                             f"slices over the {shards} batch shards")
    hosts = num_processes or (max(cfg.mesh.num_processes, 1) if cfg.mesh.distributed else 1)
    for key in ("train.batch_prompts", "sft.batch_size", "sft.eval_size", "eval.size",
                "eval.batch_size"):
        value = _get(cfg, key)
        if hosts > 1 and value % hosts:
            raise ValueError(f"config '{key}' = {value} does not split over the {hosts} hosts "
                             "(mesh.num_processes): each host takes an equal share")


def validate(cfg: ml_collections.ConfigDict,
             base_config: Callable[[str], ml_collections.ConfigDict],
             num_devices: int | None = None, num_processes: int | None = None) -> None:
    """Raises ValueError naming the first bad key (see the module docstring); the defaults
    are `base_config(cfg.algorithm)` (`lrmjax.config.base_config`, passed in: that module
    imports this one). `num_devices` / `num_processes` (known once JAX has started) add the
    mesh checks."""
    algorithm = cfg.get("algorithm", "grpo")
    if algorithm not in algorithms.PRESETS:
        raise ValueError(f"config 'algorithm' {algorithm!r} is not an algorithm preset; "
                         f"valid: {sorted(algorithms.PRESETS)}")
    defaults = base_config(algorithm)
    check_keys(cfg, defaults)
    check_ranges(cfg, defaults)
    _check_choices(cfg)
    check_model(cfg)
    check_lora(cfg)
    check_rewards(cfg)
    check_env(cfg)
    _check_data(cfg)
    _check_sizes(cfg, num_devices, num_processes)
    check_overlong_buffer(cfg)
    try:
        algorithms.validate(cfg.rl)
    except ValueError as e:
        raise ValueError(f"config 'rl' (algorithm {cfg.algorithm!r}): {e}") from e
