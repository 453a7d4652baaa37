"""Adapter exposing any `reasoning-gym` generator as an lrmjax task.

reasoning-gym (Stojanovski et al. 2025) ships ~100 procedural datasets, each a finite indexable
`ProceduralDataset` of `size` entries determined by its `seed`, with a `score_answer(answer,
entry)` verifier. `ReasoningGymTask` draws entries by index, so an example is reproducible from
`metadata['seed']` (its index) and the task's kwargs, and verification re-fetches the original
entry rather than trusting metadata that went through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lrmjax.data.tasks.base import Example, Task, extract_answer_tag


def _factory() -> Any:
    # Imported on first use: reasoning-gym takes seconds to import, and reward workers that
    # rebuild other tasks should not pay for it.
    from reasoning_gym import factory

    return factory


def available_datasets() -> list[str]:
    """Names of all reasoning-gym datasets (valid `name` arguments), sorted."""
    return sorted(_factory().DATASETS)


def _jsonable(value: Any) -> Any:
    """A JSON round trip (tuples -> lists, unknown objects -> str) so metadata can be stored."""
    return json.loads(json.dumps(value, default=str))


class ReasoningGymTask(Task):
    """One reasoning-gym dataset as a task.

    Args:
      name: a reasoning-gym dataset name (see `available_datasets()`).
      size: how many distinct entries the dataset has; `sample` draws indices in [0, size).
      seed: the reasoning-gym dataset seed.
      difficulty: if given and the dataset has a reasoning-gym curriculum, every curriculum
        attribute is set to this level (clipped to its highest) to make the config; explicit
        `cfg` entries override it. Datasets without a curriculum reject a difficulty.
      partial_credit: return reasoning-gym's score as is (some datasets, e.g. spell_backward,
        give partial credit in (0, 1)); False (default) gives 1.0 only for a full score, so
        the verifier is exact like the other tasks'.
      **cfg: dataset config fields (e.g. `min_terms=2`), passed to `reasoning_gym.create_dataset`.
    """

    name = "reasoning_gym"

    def __init__(self, name: str, size: int = 1000, seed: int = 0, difficulty: int | None = None,
                 partial_credit: bool = False, **cfg: Any):
        if name not in _factory().DATASETS:
            raise ValueError(f"ReasoningGymTask: unknown dataset {name!r}; "
                             f"valid: {available_datasets()}")
        if size < 1:
            raise ValueError(f"ReasoningGymTask: size must be >= 1, got {size}")
        self.dataset_name = name
        self.size = int(size)
        self.seed = int(seed)
        self._difficulty = difficulty
        self.partial_credit = bool(partial_credit)
        self.cfg = dict(cfg)
        kwargs: dict[str, Any] = {}
        if difficulty is not None:
            if not _factory().has_curriculum(name):
                raise ValueError(f"ReasoningGymTask: dataset {name!r} has no reasoning-gym "
                                 "curriculum, so it has no difficulty knob")
            curriculum = _factory().create_curriculum(name)
            curriculum.set_global_level(int(difficulty))
            generated = curriculum.generate_configuration({"seed": self.seed, "size": self.size})
            kwargs = {f.name: getattr(generated, f.name) for f in dataclasses.fields(generated)}
        kwargs.update(cfg, seed=self.seed, size=self.size)
        self._dataset = _factory().create_dataset(name, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        return {"name": self.dataset_name, "size": self.size, "seed": self.seed,
                "difficulty": self._difficulty, "partial_credit": self.partial_credit,
                **_jsonable(self.cfg)}

    @property
    def difficulty(self) -> int:
        return 0 if self._difficulty is None else self._difficulty

    def with_difficulty(self, difficulty: int) -> ReasoningGymTask:
        return ReasoningGymTask(self.dataset_name, self.size, self.seed, difficulty,
                                self.partial_credit, **self.cfg)

    def example(self, seed: int) -> Example:
        """The entry at index `seed % size` (the 'seed' of a reasoning-gym example)."""
        index = int(seed) % self.size
        entry = self._dataset[index]
        return Example(prompt=entry["question"], answer=str(entry["answer"]),
                       metadata=self._metadata(index, dataset=self.dataset_name,
                                               entry_metadata=_jsonable(entry["metadata"])))

    def verify(self, example: Example, completion: str) -> float:
        """reasoning-gym's `score_answer` on the `<answer>` block if present, else the whole
        stripped completion: 1.0 for a full score, else 0.0 (or the score itself with
        `partial_credit`); an exception inside reasoning-gym scores 0."""
        if not isinstance(completion, str):
            return 0.0
        tagged = extract_answer_tag(completion)
        answer = (tagged if tagged is not None else completion).strip()
        index = example.metadata.get("seed")
        entry = self._dataset[index] if isinstance(index, int) and 0 <= index < self.size else None
        if entry is None or entry["question"] != example.prompt:
            # Not one of this task's entries (e.g. another seed): score against what it carries.
            entry = {"question": example.prompt, "answer": example.answer,
                     "metadata": example.metadata.get("entry_metadata", {})}
        try:
            score = float(self._dataset.score_answer(answer, entry))
        except Exception:  # noqa: BLE001 (third-party scorers may raise anything on bad input)
            return 0.0
        if self.partial_credit:
            return score
        return 1.0 if score >= 1.0 else 0.0
