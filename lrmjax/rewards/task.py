"""The `task` reward: score a completion with the verifier of the procedural task that made
its prompt. Reads metadata keys `prompt`, `answer` and the task's own metadata (`task`,
`task_kwargs`, ...), which the trainer passes through from each `Example`."""

from __future__ import annotations

from lrmjax.data.tasks import Example, verify_example
from lrmjax.rewards.base import register, require


@register("task")
def task_reward(prompts: list[str], completions: list[str], metadata: list[dict]) -> list[float]:
    scores = []
    rows = zip(prompts, completions, metadata, strict=True)
    for row, (prompt, completion, meta) in enumerate(rows):
        answer = require(meta, "answer", row, "task")
        require(meta, "task", row, "task")
        scores.append(verify_example(Example(prompt=prompt, answer=answer, metadata=meta),
                                     completion))
    return scores
