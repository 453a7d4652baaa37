"""Tests for lrmjax.rewards.format (R1 think/answer shape)."""

import pytest

from lrmjax.rewards import get

CASES = [
    # (completion, strict, lenient)
    ("<think>a</think><answer>b</answer>", True, True),
    ("  <think>\nlong\nreasoning\n</think>\n\n<answer> 42 </answer>\n", True, True),
    ("<think></think><answer></answer>", True, True),
    ("preamble <think>a</think><answer>b</answer>", False, True),
    ("<think>a</think><answer>b</answer> trailing", False, True),
    ("<think>a</think> text between <answer>b</answer>", False, True),
    ("<answer>b</answer><think>a</think>", False, False),
    ("<think>a</think>", False, False),
    ("<answer>b</answer>", False, False),
    ("<think>a<think>b</think><answer>c</answer>", False, True),
    ("<think>a</think><answer>b</answer><answer>c</answer>", False, True),
    ("<think>a</answer><answer>b</think>", False, False),
    ("plain text", False, False),
]


@pytest.mark.parametrize("text,strict,lenient", CASES)
def test_format(text, strict, lenient):
    assert get("format")(["q"], [text], [{}]) == [float(strict)]
    assert get("format_lenient")(["q"], [text], [{}]) == [float(lenient)]


def test_batch_length_mismatch():
    with pytest.raises(ValueError, match="differ in length"):
        get("format")(["q"], ["a", "b"], [{}, {}])
