"""Questions answered by the shipped search corpus (`lrmjax/envs/corpus/facts.jsonl`).

Made from the corpus's own passages, so the `search` tool can always find the answer:
"What is the capital of Norway?" (Oslo), "What is the atomic number of Neon?" (10). (Not
"which element has the symbol Be?": BM25 drops symbols that are English stop words, so search
could not answer it.) The verifier compares the answer (the last
`<answer>...</answer>` block, else the last line) with the reference, ignoring case,
surrounding space and a final period.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example, Task, extract_answer_tag, last_line

CORPUS = pathlib.Path(__file__).resolve().parents[2] / "envs" / "corpus" / "facts.jsonl"
_CAPITAL = re.compile(r"^(?P<capital>.+) is the capital of (?P<country>.+), a country in ")
_ELEMENT = re.compile(r"^(?P<name>\w+) is a chemical element with the symbol \w+ "
                      r"and atomic number (?P<number>\d+)\.$")


@functools.lru_cache(maxsize=1)
def questions() -> tuple[tuple[str, str], ...]:
    """Every (question, answer) the corpus supports, in corpus order."""
    out = []
    with open(CORPUS, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            if m := _CAPITAL.match(text):
                out.append((f"What is the capital of {m['country']}?", m["capital"]))
            elif m := _ELEMENT.match(text):
                out.append((f"What is the atomic number of {m['name']}?", m["number"]))
    return tuple(out)


def _normal(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


class CorpusQATask(Task):
    """A uniformly drawn corpus question (one difficulty)."""

    name = "corpus_qa"

    @property
    def config(self) -> dict[str, Any]:
        return {}

    @property
    def difficulty(self) -> int:
        return 1

    def with_difficulty(self, difficulty: int) -> CorpusQATask:
        return CorpusQATask()

    def example(self, seed: int) -> Example:
        qa = questions()
        question, answer = qa[int(np.random.default_rng(seed).integers(len(qa)))]
        return Example(prompt=question, answer=answer, metadata=self._metadata(seed))

    def verify(self, example: Example, completion: str) -> float:
        if not isinstance(completion, str):
            return 0.0
        tagged = extract_answer_tag(completion)
        said = tagged if tagged is not None else last_line(completion)
        return float(_normal(said) == _normal(example.answer))
