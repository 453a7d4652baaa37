"""Corpus questions: every question's answer is in the passage the search tool ranks first,
and the verifier accepts the answer (tagged or on the last line, any case) and nothing else."""

import json

import numpy as np

from lrmjax.data.tasks import get_task
from lrmjax.data.tasks.corpus_qa import CORPUS, questions
from lrmjax.envs.tools import make_tool


def test_questions_cover_the_corpus():
    with open(CORPUS, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    countries = sum(r["id"].startswith("country-") for r in rows)
    elements = sum(r["id"].startswith("element-") for r in rows)
    assert len(questions()) == countries + elements
    assert ("What is the capital of Norway?", "Oslo") in questions()
    assert ("What is the atomic number of Neon?", "10") in questions()


def test_search_finds_every_answer_first():
    search = make_tool("search")
    for question, answer in questions():
        top = search(query=question, k=1)
        assert answer in top, (question, top)


def test_verify():
    task = get_task("corpus_qa")
    examples = task.sample(np.random.default_rng(0), 30)
    assert len({ex.prompt for ex in examples}) > 15
    ex = next(e for e in examples if e.prompt.startswith("What is the capital"))
    assert task.verify(ex, f"<answer> {ex.answer.upper()}. </answer>") == 1.0
    assert task.verify(ex, f"I searched.\n{ex.answer}") == 1.0
    assert task.verify(ex, f"{ex.answer}\nor maybe not") == 0.0
    assert task.verify(ex, f"<answer>{ex.answer}x</answer>") == 0.0
    assert task.verify(ex, None) == 0.0
