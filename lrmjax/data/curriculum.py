"""Curricula: per-prompt accuracy tracking, accuracy-band filtering, weighted sampling, and
easy-to-hard difficulty schedules for procedural tasks.

* `AccuracyTracker`: running accuracy of each prompt (keyed by `metadata['uid']`) from its
  rewards.
* `band_filter`: keep prompts whose running accuracy lies in [low, high] (PRIME, Cui et al.
  2025, "Process Reinforcement through Implicit Rewards": online filtering to 0.2-0.8);
  unseen prompts are kept.
* `sampling_weights`: sample prompts with probability proportional to 1 - success rate (Kimi
  k1.5, 2025, Sec. 2.3.4 "curriculum sampling"); unseen prompts count as success rate 0.
* `CurriculumDataset`: batches from a prompt source using the two above.
* `DifficultySchedule` + `TaskStream`: an online procedural stream whose difficulty knob follows
  the step (linear) or advances when running accuracy at the current level passes a threshold.

Curriculum components (`AccuracyTracker`, `DifficultySchedule`) have JSON-serializable
`state_dict()` / `load_state_dict()`; the iterators (`CurriculumDataset`, `TaskStream`) have
`get_state()` / `set_state()` like `PromptIterator`, and their state embeds their components',
so a checkpoint stores the data position and the curriculum together.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from lrmjax.data.datasets import shard_indices
from lrmjax.data.tasks import Example, Task

log = logging.getLogger(__name__)


def prompt_uid(example: Example) -> str:
    """The key curricula track a prompt by: `metadata['uid']`, else the prompt text."""
    return str(example.metadata.get("uid", example.prompt))


class AccuracyTracker:
    """Running per-prompt accuracy from rewards.

    Args:
      decay: None keeps the mean over all rewards seen for a prompt; a value in [0, 1) keeps
        an exponential moving average, `acc <- decay * acc + (1 - decay) * mean(new rewards)`,
        updated once per `update` call per prompt (a prompt's first update sets it directly).
      success_threshold: if set, a reward counts as 1 when >= threshold and 0 otherwise;
        None uses the reward value itself (rewards should then lie in [0, 1]).
    """

    def __init__(self, decay: float | None = None, success_threshold: float | None = None):
        if decay is not None and not 0.0 <= decay < 1.0:
            raise ValueError(f"AccuracyTracker: decay must be in [0, 1) or None, got {decay}")
        self.decay = decay
        self.success_threshold = success_threshold
        self._acc: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def update(self, uids: Sequence[str], rewards: Sequence[float]) -> None:
        """Adds one reward per sample; a prompt with n sampled responses appears n times."""
        if len(uids) != len(rewards):
            raise ValueError(f"update: {len(uids)} uids but {len(rewards)} rewards")
        grouped: dict[str, list[float]] = {}
        for uid, r in zip(uids, rewards, strict=True):
            r = float(r)
            if not math.isfinite(r):
                raise ValueError(f"update: reward {r} for prompt {uid!r} is not finite")
            if self.success_threshold is not None:
                r = float(r >= self.success_threshold)
            grouped.setdefault(str(uid), []).append(r)
        for uid, rs in grouped.items():
            n_old = self._count.get(uid, 0)
            mean_new = sum(rs) / len(rs)
            if n_old == 0:
                self._acc[uid] = mean_new
            elif self.decay is None:
                self._acc[uid] = (self._acc[uid] * n_old + sum(rs)) / (n_old + len(rs))
            else:
                self._acc[uid] = self.decay * self._acc[uid] + (1 - self.decay) * mean_new
            self._count[uid] = n_old + len(rs)

    def accuracy(self, uid: str) -> float | None:
        """Running accuracy of a prompt, None if it has no reward yet."""
        return self._acc.get(str(uid))

    def count(self, uid: str) -> int:
        """How many rewards a prompt has had."""
        return self._count.get(str(uid), 0)

    def __len__(self) -> int:
        return len(self._acc)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "success_threshold": self.success_threshold,
                "accuracy": dict(self._acc), "count": dict(self._count)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["decay"], state["success_threshold"]) != (self.decay, self.success_threshold):
            raise ValueError("AccuracyTracker state was saved with decay/success_threshold "
                             f"{state['decay']}/{state['success_threshold']}, this tracker has "
                             f"{self.decay}/{self.success_threshold}")
        self._acc = {k: float(v) for k, v in state["accuracy"].items()}
        self._count = {k: int(v) for k, v in state["count"].items()}


def in_band(tracker: AccuracyTracker, uids: Sequence[str], low: float, high: float
            ) -> np.ndarray:
    """[N] bool: True where the prompt is unseen or low <= accuracy <= high."""
    if not low <= high:
        raise ValueError(f"accuracy band needs low <= high, got [{low}, {high}]")
    accs = [tracker.accuracy(u) for u in uids]
    return np.array([a is None or low <= a <= high for a in accs], dtype=bool)


def band_filter(examples: Sequence[Example], tracker: AccuracyTracker, low: float = 0.2,
                high: float = 0.8) -> list[Example]:
    """The examples whose prompts are unseen or have running accuracy in [low, high] (PRIME)."""
    keep = in_band(tracker, [prompt_uid(e) for e in examples], low, high)
    return [e for e, k in zip(examples, keep, strict=True) if k]


def sampling_weights(tracker: AccuracyTracker, uids: Sequence[str], floor: float = 0.0
                     ) -> np.ndarray:
    """[N] float64 sampling probabilities proportional to max(1 - success rate, floor).

    Unseen prompts have success rate 0 (weight 1), following Kimi k1.5. If every weight is 0
    (all prompts always solved, floor 0) the result is uniform rather than undefined."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"sampling_weights: floor must be in [0, 1], got {floor}")
    accs = np.array([tracker.accuracy(u) or 0.0 for u in uids], dtype=np.float64)
    w = np.maximum(1.0 - np.clip(accs, 0.0, 1.0), floor)
    total = w.sum()
    if total <= 0:
        return np.full(len(uids), 1.0 / max(len(uids), 1))
    return w / total


class CurriculumDataset:
    """Batches of prompts drawn from a random-access source under a curriculum.

    Each batch draws `batch_size` distinct rows of this host's shard (see
    `datasets.shard_indices`) without replacement, with probability proportional to
    `sampling_weights` (mode 'weighted') or uniformly (mode 'uniform'), among the rows that
    pass the accuracy band [low, high] if `band` is set. If the band leaves fewer rows than a
    batch, the whole shard is used for that batch (counted in `metrics()['band_fallbacks']`).
    Batch t uses `np.random.default_rng([seed, shard_index, t])`, so the position is just t.

    Feed rewards back with `update(examples, rewards)` (or `tracker.update(uids, rewards)`).
    """

    MODES = ("uniform", "weighted")

    def __init__(self, source: Any, batch_size: int, seed: int = 0, mode: str = "weighted",
                 band: tuple[float, float] | None = None,
                 tracker: AccuracyTracker | None = None, floor: float = 0.0,
                 shard_index: int = 0, shard_count: int = 1):
        if mode not in self.MODES:
            raise ValueError(f"CurriculumDataset: unknown mode {mode!r}; valid: {self.MODES}")
        self.rows = np.array(shard_indices(len(source), shard_index, shard_count))
        if batch_size < 1 or batch_size > len(self.rows):
            raise ValueError(f"CurriculumDataset: batch_size {batch_size} must be in "
                             f"[1, {len(self.rows)}] (the shard size)")
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.mode = mode
        self.band = band
        self.floor = floor
        self.shard_index = shard_index
        self.tracker = tracker if tracker is not None else AccuracyTracker()
        # Reads every row once for its uid; fine for prompt sets (10^5 rows read in seconds).
        self.uids = [prompt_uid(source[int(i)]) for i in self.rows]
        self.step = 0
        self.band_fallbacks = 0

    def probabilities(self) -> tuple[np.ndarray, bool]:
        """[shard size] sampling probabilities of the next batch (band applied), and whether
        the band had to be dropped because too few prompts passed it."""
        if self.mode == "weighted":
            p = sampling_weights(self.tracker, self.uids, self.floor)
        else:
            p = np.full(len(self.uids), 1.0 / len(self.uids))
        fell_back = False
        if self.band is not None:
            keep = in_band(self.tracker, self.uids, *self.band)
            if np.count_nonzero(keep & (p > 0)) >= self.batch_size:
                p = np.where(keep, p, 0.0)
            else:
                fell_back = True
        nonzero = np.count_nonzero(p)
        if nonzero < self.batch_size:
            # Too few rows with weight > 0 to draw a batch without replacement: top up with
            # a tiny uniform weight so solved prompts fill the remaining places.
            p = p + (p == 0) * 1e-12
        return p / p.sum(), fell_back

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        p, fell_back = self.probabilities()
        if fell_back:
            self.band_fallbacks += 1
            log.info("curriculum: band %s keeps fewer than %d prompts; sampling from all",
                     self.band, self.batch_size)
        rng = np.random.default_rng([self.seed, self.shard_index, self.step])
        picks = rng.choice(len(self.rows), size=self.batch_size, replace=False, p=p)
        self.step += 1
        return [self.source[int(self.rows[i])] for i in picks]

    def update(self, examples: Sequence[Example], rewards: Sequence[float]) -> None:
        """Records rewards; `examples[i]` is the prompt `rewards[i]` was earned on."""
        self.tracker.update([prompt_uid(e) for e in examples], rewards)

    def metrics(self) -> dict[str, float]:
        accs = [a for a in (self.tracker.accuracy(u) for u in self.uids) if a is not None]
        return {"curriculum/seen_fraction": len(accs) / len(self.uids),
                "curriculum/mean_accuracy": float(np.mean(accs)) if accs else 0.0,
                "curriculum/band_fallbacks": float(self.band_fallbacks)}

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step, "band_fallbacks": self.band_fallbacks,
                "tracker": self.tracker.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.band_fallbacks = int(state["band_fallbacks"])
        self.tracker.load_state_dict(state["tracker"])


class DifficultySchedule:
    """Easy-to-hard schedule over a task's difficulty knob, from `start` up to `end`.

    Modes:
      'linear': difficulty(step) = min(end, start + floor((end - start + 1) * step / steps)),
        i.e. `steps` split into equal stages, one per level; `end` from `steps` on.
      'threshold': start at `start`; `update(rewards)` accumulates rewards at the current level
        and, once at least `min_samples` are in and their mean >= `threshold`, advances one
        level (to at most `end`) and starts counting afresh.
    """

    MODES = ("linear", "threshold")

    def __init__(self, start: int, end: int, mode: str = "threshold", steps: int | None = None,
                 threshold: float = 0.8, min_samples: int = 256):
        if mode not in self.MODES:
            raise ValueError(f"DifficultySchedule: unknown mode {mode!r}; valid: {self.MODES}")
        if start > end:
            raise ValueError(f"DifficultySchedule: start {start} > end {end}")
        if mode == "linear" and (steps is None or steps < 1):
            raise ValueError("DifficultySchedule: mode 'linear' needs steps >= 1")
        if min_samples < 1:
            raise ValueError(f"DifficultySchedule: min_samples must be >= 1, got {min_samples}")
        self.start, self.end, self.mode = start, end, mode
        self.steps, self.threshold, self.min_samples = steps, threshold, min_samples
        self.level = start
        self._sum = 0.0
        self._count = 0

    def difficulty(self, step: int) -> int:
        """The difficulty for training step `step`."""
        if self.mode == "linear":
            return min(self.end, self.start + (self.end - self.start + 1) * step // self.steps)
        return self.level

    def update(self, rewards: Sequence[float]) -> None:
        """Feeds rewards earned at the current level (ignored in 'linear' mode)."""
        if self.mode != "threshold" or self.level >= self.end:
            return
        self._sum += float(np.sum(rewards))
        self._count += len(rewards)
        if self._count >= self.min_samples and self._sum / self._count >= self.threshold:
            self.level += 1
            self._sum, self._count = 0.0, 0
            log.info("curriculum: difficulty advanced to %d", self.level)

    def running_accuracy(self) -> float | None:
        """Mean reward at the current level so far (None before any)."""
        return self._sum / self._count if self._count else None

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "sum": self._sum, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = int(state["level"])
        self._sum = float(state["sum"])
        self._count = int(state["count"])


class TaskStream:
    """Endless batches sampled online from a procedural task, optionally under a schedule.

    Batch t has difficulty `schedule.difficulty(t)` and is drawn with
    `np.random.default_rng([seed, shard_index, t])`: reproducible, different per host, and
    resumable from `get_state()`. Each example's `metadata['uid']` is unique per (seed, host,
    step, position).
    """

    def __init__(self, task: Task, batch_size: int, seed: int = 0,
                 schedule: DifficultySchedule | None = None, shard_index: int = 0):
        if batch_size < 1:
            raise ValueError(f"TaskStream: batch_size must be >= 1, got {batch_size}")
        self.task = task
        self.batch_size = batch_size
        self.seed = seed
        self.schedule = schedule
        self.shard_index = shard_index
        self.step = 0
        self._tasks: dict[int, Task] = {task.difficulty: task}

    def _task_at(self, difficulty: int) -> Task:
        if difficulty not in self._tasks:
            self._tasks[difficulty] = self.task.with_difficulty(difficulty)
        return self._tasks[difficulty]

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        d = self.schedule.difficulty(self.step) if self.schedule else self.task.difficulty
        rng = np.random.default_rng([self.seed, self.shard_index, self.step])
        batch = self._task_at(d).sample(rng, self.batch_size)
        prefix = f"stream:{self.task.name}:{self.seed}:{self.shard_index}:{self.step}"
        self.step += 1
        return [Example(e.prompt, e.answer, {**e.metadata, "uid": f"{prefix}:{i}"})
                for i, e in enumerate(batch)]

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step,
                "schedule": self.schedule.state_dict() if self.schedule else None}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
