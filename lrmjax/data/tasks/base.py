"""The task contract: `Example`, `Task`, and answer extraction shared by the verifiers.

A task is a procedural environment: `sample(rng, n)` draws prompts with reference answers and
`verify(example, completion)` scores a model completion exactly (1.0 / 0.0). Every example
carries enough metadata (`task`, `task_kwargs`, `difficulty`, `seed`) to rebuild the task that
made it (`lrmjax.data.tasks.verify_example`), so a reward worker needs only the example.
"""

from __future__ import annotations

import abc
import dataclasses
import re
from typing import Any

import numpy as np

# Seeds are drawn below 2**63 so they fit a signed int64 and round-trip through JSON.
_SEED_BOUND = 2**63 - 1

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its reference answer.

    Attributes:
      prompt: the text shown to the model (no chat template; the trainer applies one).
      answer: the reference answer as text (what a correct completion says).
      metadata: JSON-serializable dict: task name and kwargs, difficulty, seed, a prompt id
        `uid` where one exists, and whatever the verifier needs.
    """

    prompt: str
    answer: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


def extract_answer_tag(completion: str) -> str | None:
    """Returns the content of the last `<answer>...</answer>` block, or None if there is none."""
    found = _ANSWER_TAG.findall(completion)
    return found[-1] if found else None


def last_line(text: str) -> str:
    """Returns the last non-empty line of `text` (stripped), or '' for blank text."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Task(abc.ABC):
    """A procedural environment with a generator and an exact verifier.

    Subclasses implement `example(seed)` (one example, a pure function of the seed and the
    task's settings), `verify`, `config` and `with_difficulty`. `sample` draws one seed per
    example from the caller's generator, so a batch is reproducible from the generator state
    and each example alone from its `metadata['seed']`.
    """

    name: str = ""

    @property
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor kwargs (JSON-serializable) that rebuild this task: `type(t)(**t.config)`."""

    @property
    @abc.abstractmethod
    def difficulty(self) -> int:
        """The current value of the difficulty knob."""

    @abc.abstractmethod
    def with_difficulty(self, difficulty: int) -> Task:
        """Returns a copy of this task at another difficulty."""

    @abc.abstractmethod
    def example(self, seed: int) -> Example:
        """Generates one example deterministically from `seed`."""

    @abc.abstractmethod
    def verify(self, example: Example, completion: str) -> float:
        """Scores `completion` against `example`: 1.0 if correct, else 0.0. Never raises on a
        malformed completion."""

    def max_answer_chars(self) -> int | None:
        """The most characters a reference answer (`example(seed).answer`) can have, computed
        from the task's settings, or None where they do not determine it (the default).
        Validation keeps DAPO's overlong penalty off responses this long plus EOS."""
        return None

    def sample(self, rng: np.random.Generator, n: int) -> list[Example]:
        """Draws `n` examples; deterministic given the state of `rng`."""
        if n < 0:
            raise ValueError(f"sample: n must be >= 0, got {n}")
        seeds = rng.integers(0, _SEED_BOUND, size=n, dtype=np.int64)
        return [self.example(int(s)) for s in seeds]

    def _metadata(self, seed: int, **extra: Any) -> dict[str, Any]:
        """Metadata every example of this task carries (see module docstring)."""
        return {"task": self.name, "task_kwargs": self.config, "difficulty": self.difficulty,
                "seed": seed, **extra}
