"""Procedural environments: a registry of tasks, each with a generator and an exact verifier.

    task = get_task("arithmetic", digits=3, reverse_answer=True)
    examples = task.sample(np.random.default_rng(0), 8)
    rewards = [task.verify(ex, completion) for ex, completion in zip(examples, completions)]

`verify_example(example, completion)` rebuilds the task from the example's own metadata, for
reward workers that see only examples. The package imports no JAX (reward workers import it);
a task's jittable device reward lives in a module of its own
(`lrmjax.data.tasks.arithmetic_device`).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from lrmjax.data.tasks.arithmetic import ArithmeticTask
from lrmjax.data.tasks.base import Example, Task, extract_answer_tag, last_line
from lrmjax.data.tasks.corpus_qa import CorpusQATask
from lrmjax.data.tasks.countdown import CountdownTask, evaluate_expression
from lrmjax.data.tasks.guess import GuessNumberTask
from lrmjax.data.tasks.reasoning_gym import ReasoningGymTask, available_datasets
from lrmjax.data.tasks.scratchpad import ScratchpadArithmeticTask
from lrmjax.data.tasks.tool_arithmetic import ToolArithmeticTask

TASKS: dict[str, type[Task]] = {
    "arithmetic": ArithmeticTask,
    "corpus_qa": CorpusQATask,
    "countdown": CountdownTask,
    "guess_number": GuessNumberTask,
    "reasoning_gym": ReasoningGymTask,
    "scratchpad_arithmetic": ScratchpadArithmeticTask,
    "tool_arithmetic": ToolArithmeticTask,
}


def get_task(name: str, /, **kwargs: Any) -> Task:
    """Builds the task registered under `name` with constructor `kwargs` (`name` is
    positional-only, so `get_task("reasoning_gym", name="chain_sum")` works)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


@functools.lru_cache(maxsize=64)
def _cached_task(name: str, kwargs_json: str) -> Task:
    return get_task(name, **json.loads(kwargs_json))


def task_for_example(example: Example) -> Task:
    """The task (cached) that generated `example`, from its metadata `task` and `task_kwargs`."""
    meta = example.metadata
    if "task" not in meta:
        raise ValueError(f"example has no 'task' in its metadata: {sorted(meta)}")
    return _cached_task(meta["task"], json.dumps(meta.get("task_kwargs", {}), sort_keys=True))


def verify_example(example: Example, completion: str) -> float:
    """Scores `completion` with the verifier of the task that generated `example`."""
    return task_for_example(example).verify(example, completion)


__all__ = [
    "TASKS", "ArithmeticTask", "CountdownTask", "Example", "ReasoningGymTask",
    "ScratchpadArithmeticTask", "Task",
    "available_datasets", "evaluate_expression", "extract_answer_tag", "get_task", "last_line",
    "task_for_example", "verify_example",
]
