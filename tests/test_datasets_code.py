"""Tests for the code JSONL source (lrmjax.data.tfds_builders.parse_code) and its shipped
fixtures, scored through the real `code` reward."""

import json
import logging

import pytest

from lrmjax.data import FIXTURES_DIR
from lrmjax.data.datasets import make_source
from lrmjax.rewards import get
from lrmjax.rewards.code import parse_tests

ASSERT = str(FIXTURES_DIR / "code_assert_sample.jsonl")
STDIN = str(FIXTURES_DIR / "code_stdin_sample.jsonl")

# Reference solutions written by hand, one per fixture row, in file order.
RIGHT_ASSERT = [
    "def add(a, b):\n    return a + b\n",
    "def reverse_string(s):\n    return s[::-1]\n",
    "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n"
    "        out.append('FizzBuzz' if i % 15 == 0 else 'Fizz' if i % 3 == 0 else\n"
    "                   'Buzz' if i % 5 == 0 else str(i))\n    return out\n",
    "def max_of_list(xs):\n    best = xs[0]\n    for x in xs:\n        if x > best:\n"
    "            best = x\n    return best\n",
    "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)\n",
    "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n"
    "    return t == t[::-1]\n",
]
# Each wrong in a way the row's tests catch.
WRONG_ASSERT = [
    "def add(a, b):\n    return a - b\n",
    "def reverse_string(s):\n    return s\n",
    "def fizzbuzz(n):\n    return [str(i) for i in range(1, n + 1)]\n",
    "def max_of_list(xs):\n    return xs[0]\n",
    "def count_vowels(s):\n    return sum(c in 'aeiou' for c in s)\n",
    "def is_palindrome(s):\n    return s == s[::-1]\n",
]
RIGHT_STDIN = [
    "n = int(input())\nprint(sum(map(int, input().split()[:n])))\n",
    "w = input().strip()\nprint(w[::-1])\nprint(len(w))\n",
    "n = int(input())\nprint(sum(map(int, input().split())) / n)\n",
    "for _ in range(int(input())):\n    a, b = map(int, input().split())\n    print(max(a, b))\n",
]
WRONG_STDIN = [
    "n = int(input())\nprint(sum(map(int, input().split())) - 1)\n",
    "w = input().strip()\nprint(w)\nprint(len(w))\n",
    "n = int(input())\nprint(sum(map(int, input().split())) // n)\n",
    "for _ in range(int(input())):\n    a, b = map(int, input().split())\n    print(min(a, b))\n",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _raw(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("path, n", [(ASSERT, 6), (STDIN, 4)])
def test_code_fixture_loads_with_the_reward_metadata(path, n, data_dir):
    src = make_source("code_jsonl", path=path, data_dir=data_dir)
    raw = _raw(path)
    assert len(src) == len(raw) == n and src.stats["skipped"] == 0
    for i, row in enumerate(raw):
        ex = src[i]
        assert ex.prompt == row["prompt"] and ex.answer == ""
        assert ex.metadata["tests"] == row["tests"]  # stored faithfully, lists and dicts alike
        for key in ("compare", "float_tol", "setup"):
            assert ex.metadata.get(key) == row.get(key)
        assert ex.metadata["uid"] == f"code:{path.rsplit('/', 1)[1][:-6]}:{i}"
        parse_tests(ex.metadata["tests"], i)  # the reward's own reading of the row


def test_fixtures_score_right_solutions_1_and_wrong_0(data_dir):
    """The hand-written expected values agree with hand-written reference solutions, through
    the real `code` reward on the loaded metadata (so reward.fns = {'code': 1.0} works)."""
    examples = [make_source("code_jsonl", path=p, data_dir=data_dir) for p in (ASSERT, STDIN)]
    examples = [src[i] for src in examples for i in range(len(src))]
    assert len(examples) == 10
    assert any(ex.metadata.get("compare") == "float" for ex in examples)
    fn = get("code", timeout_s=5.0, allow_unisolated=True)
    meta = [ex.metadata for ex in examples]
    prompts = [ex.prompt for ex in examples]
    fence = "Solution:\n```python\n{}```".format
    right = fn(prompts, [fence(p) for p in RIGHT_ASSERT + RIGHT_STDIN], meta)
    assert right.scores == [1.0] * 10
    wrong = fn(prompts, [fence(p) for p in WRONG_ASSERT + WRONG_STDIN], meta)
    assert wrong.scores == [0.0] * 10


def test_bad_code_rows_are_skipped_logged_and_counted(tmp_path, caplog):
    good = {"prompt": "Write f.", "tests": ["assert f(1) == 2"]}
    lines = [
        json.dumps(good).encode(),                                                  # 0
        json.dumps({**good, "tests": ["assert f(1) > 0"]}).encode(),                # 1 shape
        json.dumps({**good, "prompt": "caf\u00e9"}, ensure_ascii=False).encode()
        .replace("\u00e9".encode(), b"\xe9"),                                       # 2 latin-1
        json.dumps({"prompt": "Write g."}).encode(),                                # 3 no tests
        json.dumps({"prompt": "p", "tests": [{"input": "1\n", "output": "1\n"}],
                    "compare": "float", "float_tol": 0.01}).encode(),               # 4
        json.dumps({**good, "tests": ["assert f(1) == 2", {"input": "", "output": ""}]}
                   ).encode(),                                                      # 5 mixed
        json.dumps({**good, "compare": "fuzzy"}).encode(),                          # 6
        json.dumps({"tests": good["tests"]}).encode(),                              # 7 no prompt
        json.dumps({**good, "tests": []}).encode(),                                 # 8 empty
        json.dumps({**good, "setup": "x = '\ud800'"}).encode(),                     # 9 surrogate
    ]
    path = tmp_path / "code.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING):
        src = make_source("code_jsonl", path=str(path), data_dir=str(tmp_path / "tfds"))
    assert [src[i].metadata["row_index"] for i in range(len(src))] == [0, 4]
    assert src[0].metadata["tests"] == ["assert f(1) == 2"]
    assert src[1].metadata["tests"] == [{"input": "1\n", "output": "1\n"}]
    assert (src[1].metadata["compare"], src[1].metadata["float_tol"]) == ("float", 0.01)
    assert src.stats["skipped"] == 8
    reasons = dict(src.stats["skipped_rows"])
    assert sorted(reasons) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert "'tests'[0]" in reasons[1] and "accepted" in reasons[1]
    assert "not UTF-8" in reasons[2]
    assert "missing 'tests'" in reasons[3]
    assert "all assertion strings" in reasons[5] and "compare" in reasons[6]
    assert "prompt" in reasons[7] and "non-empty list" in reasons[8]
    assert "'setup'" in reasons[9] and "not encodable as UTF-8" in reasons[9]
    for row in (1, 2, 3):
        assert f"{path}: skipping row {row} (line {row + 1})" in caplog.text


def test_code_jsonl_flows_through_the_trainer_inputs(tmp_path):
    from lrmjax import config as config_lib
    from lrmjax.train import inputs

    cfg = config_lib.base_config("grpo")
    cfg.data.source, cfg.data.path, cfg.data.eval_path = "code_jsonl", ASSERT, STDIN
    cfg.reward.fns = {"code": 1.0}
    cfg.eval.size = 3
    config_lib.validate(cfg)
    train, held_out, task = inputs._examples(cfg, str(tmp_path))
    assert len(train) == 6 and task is None
    assert [ex.metadata["tests"] for ex in held_out] == [r["tests"] for r in _raw(STDIN)[:3]]
