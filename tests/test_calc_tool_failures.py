"""experiments/calc_tool_failures.py: each episode sorted by its first departure from the
demonstrated one, on transcripts written by hand."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "experiments"))
import calc_tool_failures as ctf  # noqa: E402

# 347*58 = 20126, 20126*21 = 422646
CASES = [
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20126*21</calculator>=422646\n422646<eos>", 1.0, "solved"),
    ("347*58*21=", "422646<eos>", 0.0, "no_call"),
    ("347*58*21=", "<calculator>347*5x8</calculator>=error: malformed\n1<eos>", 0.0,
     "malformed_call"),
    ("347*58*21=", "<calculator>347*85</calculator>=29495\n"
                   "<calculator>29495*21</calculator>=619395\n619395<eos>", 0.0,
     "operand_from_prompt"),
    ("347*58*21=", "<calculator>344*58</calculator>=19952\n"
                   "<calculator>19952*21</calculator>=418992\n418992<eos>", 0.0,
     "operand_from_prompt"),
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20126*12</calculator>=241512\n241512<eos>", 0.0,
     "operand_from_prompt"),
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20162*21</calculator>=423402\n423402<eos>", 0.0,
     "operand_from_result"),
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n20126<eos>", 0.0, "too_few_calls"),
    ("347*58=", "<calculator>347*58</calculator>=20126\n"
                "<calculator>20126*1</calculator>=20126\n20126<eos>", 0.0, "extra_call"),
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20126*21</calculator>=422646\n422664<eos>", 0.0,
     "answer_from_result"),
    ("347*58=", "<calculator>347*58</calculator>=20126\n", 0.0, "unfinished"),
    ("347*58=", "<calculator>347*58</calculator>=20126\n20126 done<eos>", 0.0,
     "answer_from_result"),
    # The demonstrated episode, scored 0 anyway (e.g. by another verifier): not a copy error.
    ("347*58=", "<calculator>347*58</calculator>=20126\n20126<eos>", 0.0, "other"),
    # Results padded to a field (the environment's `result_width`): the padding is not copied.
    ("347*58*21=", "<calculator>347*58</calculator>=20126    \n"
                   "<calculator>20126*21</calculator>=422646   \n422646<eos>", 0.0, "other"),
    ("347*58*21=", "<calculator>347*58</calculator>=20126    \n"
                   "<calculator>20162*21</calculator>=423402   \n423402<eos>", 0.0,
     "operand_from_result"),
    ("347*58=", "<calculator>347*58</calculator>=20126    \n20162<eos>", 0.0,
     "answer_from_result"),
]


@pytest.mark.parametrize("prompt,transcript,score,category", CASES,
                         ids=[f"{i}-{c[3]}" for i, c in enumerate(CASES)])
def test_classify(prompt, transcript, score, category):
    assert ctf.classify(prompt, transcript, score) == category


def test_summarize_counts_and_factors():
    rows = [{"prompt": p, "transcript": t, "score": s} for p, t, s, _ in CASES]
    counts, by_factors, examples = ctf.summarize(rows)
    assert sum(counts.values()) == len(CASES)
    assert counts["operand_from_prompt"] == 3 and counts["solved"] == 1
    assert by_factors == {2: (0, 5), 3: (1, 11)}
    assert [r["transcript"] for r in examples["no_call"]] == ["422646<eos>"]


@pytest.mark.parametrize("prompt,transcript,want", [
    # The demonstrated episode: every copy right.
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20126*21</calculator>=422646\n422646<eos>",
     [("prompt", 3, True), ("prompt", 2, True), ("result", 5, True), ("prompt", 2, True),
      ("answer", 6, True)]),
    # A wrong first operand; the second call copies that call's (wrong) result right, the
    # answer misses the last result.
    ("347*58*21=", "<calculator>344*58</calculator>=19952\n"
                   "<calculator>19952*21</calculator>=418992\n418929<eos>",
     [("prompt", 3, False), ("prompt", 2, True), ("result", 5, True), ("prompt", 2, True),
      ("answer", 6, False)]),
    # A miscopied result, then a miscopied right operand; no answer line: no answer copy.
    ("347*58*21=", "<calculator>347*58</calculator>=20126\n"
                   "<calculator>20162*12</calculator>=241944\n",
     [("prompt", 3, True), ("prompt", 2, True), ("result", 5, False), ("prompt", 2, False)]),
    # Padded results: judged without their padding.
    ("347*58*21=", "<calculator>347*58</calculator>=20126    \n"
                   "<calculator>20126*21</calculator>=422646   \n422664<eos>",
     [("prompt", 3, True), ("prompt", 2, True), ("result", 5, True), ("prompt", 2, True),
      ("answer", 6, False)]),
    # A malformed call ends the judging; answering without a call copies nothing.
    ("347*58=", "<calculator>347+58</calculator>=405\n405<eos>", []),
    ("347*58=", "20126<eos>", []),
    # An error result leaves the answer unjudged.
    ("347*58=", "<calculator>347*5x8</calculator>=error: malformed\n1<eos>",
     [("prompt", 3, True), ("prompt", 2, False)]),
])
def test_copies(prompt, transcript, want):
    assert ctf.copies(prompt, transcript) == want


def test_copy_misses_by_digits():
    rows = [{"prompt": "66*70=", "transcript": "<calculator>66*70</calculator>=4620\n4046<eos>",
             "score": 0.0},
            {"prompt": "69*83=", "transcript": "<calculator>69*83</calculator>=5727\n5727<eos>",
             "score": 1.0},
            {"prompt": "533*88=",
             "transcript": "<calculator>533*88</calculator>=46904\n46604<eos>", "score": 0.0}]
    assert ctf.copy_misses(rows) == {"prompt": {2: (0, 5), 3: (0, 1)},
                                     "answer": {4: (1, 2), 5: (1, 1)}}
