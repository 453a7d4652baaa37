"""Reward protocol, registry and weighted composition.

A reward function takes a batch of texts and returns one float per completion::

    fn(prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float]
                                                                          | RewardResult

``metadata[i]`` carries the per-example data (reference ``answer``, unit ``tests``,
``group_id``, ``response_tokens``, ...; each module documents the keys it reads). A function
that can only be judged per group (majority vote, group length penalties) sets the
attribute ``group_level = True``; :class:`~lrmjax.rewards.pool.RewardPool` then hands it
whole groups (rows sharing ``metadata["group_id"]``) instead of single rows.

Reward functions raise on malformed input (naming the row); the pool turns a raise into a
0 score, counts it and logs the first of each kind, so a bad row never crashes a run (a
reward that fails on every row of several calls in a row does stop it).

A custom reward is registered with ``@register("name")`` in the trainer process. Worker
processes get it as an object, never as a name: `get`, `combine` and `shape` resolve names
here, and a function pickles by reference, so the worker imports the module that defines
it (re-running its ``@register``). Define custom rewards at module level of an importable
module (imported by the config, say) or of the script run as ``__main__``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np


@dataclasses.dataclass
class RewardResult:
    """Scores plus named per-sample components (for metrics).

    Attributes:
      scores: [B] final reward per completion.
      components: name -> [B] values that went into `scores` (unweighted), logged as
        ``reward/<name>``.
    """

    scores: list[float]
    components: dict[str, list[float]] = dataclasses.field(default_factory=dict)


class RewardFn(Protocol):
    def __call__(self, prompts: list[str], completions: list[str],
                 metadata: list[dict]) -> list[float] | RewardResult: ...


_REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: registers a reward function under `name` (duplicates are an error)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def names() -> list[str]:
    """Sorted names of all registered reward functions."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: Any) -> RewardFn:
    """Returns the reward function registered as `name`, with keyword options bound.

    ``get("code", mode="fraction")`` is ``functools.partial(code_reward, mode="fraction")``
    (picklable, so it can go to pool workers). Unknown name -> ValueError listing names.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; valid names: {', '.join(names())}")
    fn = _REGISTRY[name]
    if not kwargs:
        return fn
    partial = functools.partial(fn, **kwargs)
    # functools.partial objects accept attributes; keep the group flag visible.
    partial.group_level = is_group_level(fn)  # type: ignore[attr-defined]
    return partial


def resolve(fn: str | RewardFn) -> RewardFn:
    """A registered name or a callable -> a callable."""
    return get(fn) if isinstance(fn, str) else fn


def is_group_level(fn: Any) -> bool:
    """True iff `fn` must see whole groups (``metadata["group_id"]``) at once."""
    return bool(getattr(fn, "group_level", False))


def fn_name(fn: str | Any) -> str:
    if isinstance(fn, str):
        return fn
    if isinstance(fn, functools.partial):
        return fn_name(fn.func)
    for name, registered in _REGISTRY.items():
        if registered is fn:
            return name
    return getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)


def as_result(out: Sequence[float] | RewardResult | np.ndarray, n: int) -> RewardResult:
    """Normalizes a reward function's return value to a RewardResult of length `n`.

    Raises ValueError for a wrong length or a non-numeric score (NaN/inf pass through: the
    pool decides what to do with them).
    """
    if isinstance(out, RewardResult):
        scores, components = out.scores, out.components
    else:
        scores, components = out, {}
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise ValueError(f"reward returned {type(scores).__name__}, expected a list of floats")
    if len(scores) != n:
        raise ValueError(f"reward returned {len(scores)} scores for {n} completions")
    for name, values in components.items():
        if len(values) != n:
            raise ValueError(f"component {name!r} has {len(values)} values for {n} completions")
    return RewardResult(
        scores=[_to_float(s) for s in scores],
        components={k: [_to_float(v) for v in vs] for k, vs in components.items()},
    )


def _to_float(x: Any) -> float:
    if isinstance(x, (bool, int, float, np.integer, np.floating, np.bool_)):
        return float(x)
    raise ValueError(f"reward score {x!r} ({type(x).__name__}) is not a number")


def check_batch(prompts: Sequence[str], completions: Sequence[str],
                metadata: Sequence[Mapping]) -> None:
    """Raises ValueError unless the three batch lists have the same length."""
    if not (len(prompts) == len(completions) == len(metadata)):
        raise ValueError(f"batch lists differ in length: {len(prompts)} prompts, "
                         f"{len(completions)} completions, {len(metadata)} metadata")


def require(metadata: Mapping, key: str, row: int, reward: str) -> Any:
    """metadata[key], or a KeyError that names the reward, the row and the key."""
    if key not in metadata:
        raise KeyError(f"reward {reward!r}: row {row} has no metadata[{key!r}] "
                       f"(keys: {sorted(metadata)})")
    return metadata[key]


class CombinedReward:
    """Weighted sum of reward functions: ``score = sum_k w_k * r_k``.

    Components hold each part's unweighted scores under its name (plus the parts' own
    components as ``<name>/<component>``). Names are resolved here, in the process that
    registered them: the parts are held as function objects, which pickle by reference
    (module and qualified name), so pool workers import each part's module, custom ones
    included, instead of looking a name up in their own registry. Group-level iff any part
    is. A part that raises gets a note naming it.
    """

    def __init__(self, weights: Mapping[str | Callable[..., Any], float]):
        if not weights:
            raise ValueError("combine() needs at least one reward")
        self.parts: list[tuple[str, Callable[..., Any], float]] = []
        for fn, w in weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ValueError(f"weight for {fn_name(fn)!r} must be a finite number, got {w!r}")
            self.parts.append((fn_name(fn), resolve(fn), float(w)))
        seen = [p[0] for p in self.parts]
        if len(set(seen)) != len(seen):
            raise ValueError(f"combine(): duplicate component names {seen}")
        self.group_level = any(is_group_level(fn) for _, fn, _ in self.parts)
        self.name = "+".join(seen)

    def __call__(self, prompts: list[str], completions: list[str],
                 metadata: list[dict]) -> RewardResult:
        check_batch(prompts, completions, metadata)
        n = len(completions)
        total = np.zeros(n, dtype=np.float64)
        components: dict[str, list[float]] = {}
        for name, fn, w in self.parts:
            try:
                res = as_result(fn(prompts, completions, metadata), n)
            except Exception as e:
                e.add_note(f"in the part {name!r} of reward {self.name!r}")
                raise
            total += w * np.asarray(res.scores, dtype=np.float64)
            components[name] = res.scores
            for sub, values in res.components.items():
                components[f"{name}/{sub}"] = values
        return RewardResult(scores=total.tolist(), components=components)


def combine(weights: Mapping[str | Callable[..., Any], float]) -> CombinedReward:
    """``combine({"math": 1.0, "format": 0.5})``: DeepSeek-R1's accuracy + format reward."""
    return CombinedReward(weights)
