"""Tests for lrmjax.data.tfds_builders and lrmjax.data.datasets."""

import codecs
import json
import logging

import grain
import numpy as np
import pytest

from lrmjax.data import FIXTURES_DIR, datasets
from lrmjax.data.datasets import PromptDataset, make_source, shard_indices, split_counts
from lrmjax.data.tasks import Example, get_task
from lrmjax.data.tfds_builders import last_boxed, read_jsonl

GSM8K = str(FIXTURES_DIR / "gsm8k_sample.jsonl")
MATH = str(FIXTURES_DIR / "math_sample.jsonl")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    return make_source("gsm8k_jsonl", path=GSM8K, data_dir=data_dir)


def _raw(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------
# Builders


def test_gsm8k_fixture_round_trip(gsm8k, data_dir):
    raw = _raw(GSM8K)
    assert len(raw) == len(gsm8k) == 30
    assert gsm8k.stats["skipped"] == 0 and gsm8k.stats["num_rows"] == 30
    for i, row in enumerate(raw):
        ex = gsm8k[i]
        assert ex.prompt == row["question"]
        assert ex.metadata["row_index"] == i
        assert ex.metadata["uid"] == f"gsm8k:gsm8k_sample:{i}"
        assert ex.metadata["solution"] in row["answer"]
    # Final answers checked by hand against the fixture file.
    assert [gsm8k[i].answer for i in (0, 4, 14, 18, 29)] == ["15", "2880", "5184", "2645", "16.5"]
    # A second make_source reuses the built files.
    again = make_source("gsm8k_jsonl", path=GSM8K, data_dir=data_dir)
    assert again.builder.data_dir == gsm8k.builder.data_dir and again[3] == gsm8k[3]


def test_math_fixture_round_trip(data_dir):
    src = make_source("math_jsonl", path=MATH, data_dir=data_dir)
    raw = _raw(MATH)
    assert len(src) == 30
    for i, row in enumerate(raw):
        ex = src[i]
        assert ex.prompt == row["problem"]
        assert ex.metadata["level"] == row["level"] and ex.metadata["type"] == row["type"]
        assert ex.metadata["solution"] == row["solution"]
    by_hand = {0: r"\frac{5}{6}", 3: r"6\sqrt{2}", 8: r"\dfrac{3}{8}", 18: "(2, -3)",
               25: r"\frac{\sqrt{2}}{2}", 28: "2, 3"}
    for i, answer in by_hand.items():
        assert src[i].answer == answer


@pytest.mark.parametrize("text,expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
    (r"first \boxed{1} then \boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\fbox{7}", "7"),
    (r"$\boxed 5$", "5"),
    (r"\boxed{\frac{1}{2}", None),
    ("no box here", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_task_source_matches_sampling(data_dir):
    src = make_source("task", task="countdown", n=40, seed=3, task_kwargs={"num_numbers": 3},
                      data_dir=data_dir)
    direct = get_task("countdown", num_numbers=3).sample(np.random.default_rng(3), 40)
    assert len(src) == 40
    for i, ex in enumerate(direct):
        stored = src[i]
        assert (stored.prompt, stored.answer) == (ex.prompt, ex.answer)
        assert stored.metadata["numbers"] == ex.metadata["numbers"]
        assert stored.metadata["source"] == "task:countdown"
    with pytest.raises(ValueError, match="unknown task"):
        make_source("task", task="nope", n=3, data_dir=data_dir)
    with pytest.raises(ValueError, match="gsm8k_jsonl"):
        make_source("csv", path=GSM8K, data_dir=data_dir)


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bad_gsm8k_rows_are_skipped_and_counted(tmp_path, caplog):
    good = json.dumps({"question": "1+1?", "answer": "one plus one\n#### 2"})
    lines = [
        good,                                                  # 0
        "{not json",                                           # 1
        json.dumps({"answer": "#### 3"}),                      # 2 missing question
        json.dumps({"question": "q", "answer": 3}),            # 3 answer not str
        json.dumps({"question": "q", "answer": "no marker"}),  # 4
        "",                                                    # 5 blank: not a row
        json.dumps([1, 2]),                                    # 6 not an object
        json.dumps({"question": " ", "answer": "#### 1"}),     # 7 empty question
        json.dumps({"question": "2+2?", "answer": "#### 1,004"}),  # 8
    ]
    path = _write(tmp_path / "bad.jsonl", lines)
    with caplog.at_level(logging.WARNING):
        src = make_source("gsm8k_jsonl", path=path, data_dir=str(tmp_path / "tfds"))
    assert src.stats["skipped"] == 6 and src.stats["num_rows"] == 2
    assert [r for r, _ in src.stats["skipped_rows"]] == [1, 2, 3, 4, 6, 7]
    reasons = dict(src.stats["skipped_rows"])
    assert "invalid JSON" in reasons[1] and "question" in reasons[2] and "int" in reasons[3]
    assert [src[i].metadata["row_index"] for i in range(len(src))] == [0, 8]
    assert src[1].answer == "1004"
    assert "skipping row 3" in caplog.text


def test_bad_math_rows(tmp_path):
    lines = [
        json.dumps({"problem": "p", "solution": r"\boxed{\frac{1}{2}}", "level": "Level 1"}),
        json.dumps({"problem": "p", "solution": "no box"}),
        json.dumps({"problem": "p", "solution": r"\boxed{1"}),
        json.dumps({"problem": "p", "solution": r"\boxed{1}", "level": 3}),
        json.dumps({"solution": r"\boxed{1}"}),
    ]
    records, stats = read_jsonl(_write(tmp_path / "m.jsonl", lines), "math")
    assert [r["row_index"] for r in records] == [0]
    assert records[0]["answer"] == r"\frac{1}{2}"
    assert [r for r, _ in stats["skipped_rows"]] == [1, 2, 3, 4]


def _row(fmt: str, question: str) -> dict:
    if fmt == "gsm8k":
        return {"question": question, "answer": "#### 2"}
    return {"problem": question, "solution": r"\boxed{2}"}


@pytest.mark.parametrize("fmt", ["gsm8k", "math"])
def test_undecodable_rows_are_skipped_logged_and_counted(fmt, tmp_path, caplog):
    """A byte that is not UTF-8 costs its row only (logged with the file and line), as does
    a lone surrogate; rows split at '\\n' only, and a leading BOM is not part of row 0."""
    def line(question: str) -> bytes:
        return json.dumps(_row(fmt, question), ensure_ascii=False).encode("utf-8")

    rows = [
        codecs.BOM_UTF8 + line("1+1?"),                                  # 0
        line("caf\u00e9?").replace("\u00e9".encode(), b"\xe9"),          # 1 a latin-1 byte
        line("a\u2028b?"),                              # 2 U+2028 inside a string: one row
        json.dumps(_row(fmt, "\ud800")).encode(),       # 3 "\\ud800": a lone surrogate
        line("2+2?"),                                                    # 4
    ]
    path = tmp_path / f"{fmt}.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    with caplog.at_level(logging.WARNING):
        src = make_source(f"{fmt}_jsonl", path=str(path), data_dir=str(tmp_path / "tfds"))
    assert [src[i].metadata["row_index"] for i in range(len(src))] == [0, 2, 4]
    assert src[0].prompt == "1+1?" and src[1].prompt == "a\u2028b?"
    assert src.stats["skipped"] == 2
    reasons = dict(src.stats["skipped_rows"])
    assert "not UTF-8" in reasons[1] and "\\xe9" in reasons[1]
    assert "not encodable as UTF-8" in reasons[3]
    assert f"{path}: skipping row 1 (line 2): not UTF-8" in caplog.text


def test_all_bad_rows_raise_naming_the_file(tmp_path):
    path = _write(tmp_path / "allbad.jsonl", ["{", json.dumps({"question": "q"})])
    with pytest.raises(ValueError, match="allbad.jsonl"):
        make_source("gsm8k_jsonl", path=path, data_dir=str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError):
        make_source("gsm8k_jsonl", path=str(tmp_path / "missing.jsonl"),
                    data_dir=str(tmp_path / "tfds"))


# ---------------------------------------------------------------------------------------------
# PromptDataset


def _rows(batches):
    return [[e.metadata["row_index"] for e in b] for b in batches]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_shuffle_is_seeded_and_epochs_are_permutations(gsm8k):
    a = _rows(_take(iter(PromptDataset(gsm8k, batch_size=5, seed=1)), 12))
    b = _rows(_take(iter(PromptDataset(gsm8k, batch_size=5, seed=1)), 12))
    c = _rows(_take(iter(PromptDataset(gsm8k, batch_size=5, seed=2)), 12))
    assert a == b and a != c
    epoch1 = sum(a[:6], [])
    epoch2 = sum(a[6:], [])
    assert sorted(epoch1) == sorted(epoch2) == list(range(30))
    assert epoch1 != epoch2 and epoch1 != list(range(30))
    ordered = _rows(_take(iter(PromptDataset(gsm8k, batch_size=5, shuffle=False)), 6))
    assert sum(ordered, []) == list(range(30))
    assert all(isinstance(e, Example) for e in next(iter(PromptDataset(gsm8k, 5))))


def test_epoch_shuffle_draws_one_numpy_permutation_per_epoch():
    """Element i of epoch e is perm_e[i], perm_e = default_rng([seed, e]).permutation(n);
    any order of access (here epochs 0-4, then back to 1, past the two-epoch cache)."""
    n, seed = 11, 7
    ds = datasets.EpochShuffle(grain.MapDataset.source(list(range(n))), seed=seed)
    assert len(ds) == n
    want = {e: np.random.default_rng([seed, e]).permutation(n) for e in range(5)}
    for e in list(range(5)) + [1]:
        assert [ds[e * n + i] for i in range(n)] == want[e].tolist()
    assert want[0].tolist() != want[1].tolist()


def test_resume_equals_uninterrupted(gsm8k):
    data = PromptDataset(gsm8k, batch_size=4, seed=5)  # 7 batches an epoch, 2 dropped rows.
    full = _rows(_take(iter(data), 20))
    it = iter(data)
    _take(it, 9)
    state = json.loads(json.dumps(it.get_state()))
    resumed = iter(PromptDataset(gsm8k, batch_size=4, seed=5))
    resumed.set_state(state)
    assert _rows(_take(resumed, 11)) == full[9:]
    other = iter(PromptDataset(gsm8k, batch_size=3, seed=5))
    with pytest.raises(ValueError, match="batch_size"):
        other.set_state(state)


def test_sharding_partitions_data(gsm8k):
    seen = []
    for shard in range(3):
        data = PromptDataset(gsm8k, batch_size=4, seed=0, shard_index=shard, shard_count=3,
                             num_epochs=1, drop_remainder=False)
        rows = sum(_rows(list(iter(data))), [])
        assert len(rows) == 10 and len(data) == 3
        seen.append(set(rows))
    assert set.union(*seen) == set(range(30)) and sum(len(s) for s in seen) == 30
    # 31 rows over 3 hosts: every host gets 10 (equal batches keep hosts in lockstep).
    assert [len(shard_indices(31, i, 3)) for i in range(3)] == [10, 10, 10]
    with pytest.raises(ValueError, match="shard_index"):
        PromptDataset(gsm8k, batch_size=2, shard_index=3, shard_count=3)


def test_list_source_and_finite_epochs():
    src = [Example(str(i), str(i), {"row_index": i}) for i in range(7)]
    data = PromptDataset(src, batch_size=3, seed=0, num_epochs=2, drop_remainder=False)
    batches = list(iter(data))
    assert [len(b) for b in batches] == [3, 3, 1, 3, 3, 1] and len(data) == 6
    assert sorted(sum(_rows(batches[:3]), [])) == list(range(7))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        PromptDataset(src, batch_size=8)


def test_hosts_read_blocks_of_the_one_host_batches(gsm8k):
    """Host h's batch at every step is the h-th block of the batch one host reads with the
    global batch size, so a multi-host step sees exactly the single-host prompts, in order."""
    one = _rows(_take(iter(PromptDataset(gsm8k, batch_size=6, seed=4)), 8))
    hosts = [_rows(_take(iter(PromptDataset(gsm8k, batch_size=3, seed=4, shard_index=h,
                                            shard_count=2)), 8)) for h in range(2)]
    for step in range(8):
        assert hosts[0][step] + hosts[1][step] == one[step]


@pytest.mark.parametrize("total, weights, want", [
    (10, [3, 1], [8, 2]),          # 7.5 / 2.5: the tie in remainders goes to the first
    (8, [1, 1, 1], [3, 3, 2]),     # 2.67 each
    (500, [3.0, 1.0], [375, 125]),
    (7, [0.2, 0.5, 0.3], [1, 4, 2]),  # 1.4 / 3.5 / 2.1: one extra to the largest remainder
    (0, [1, 2], [0, 0]),
])
def test_split_counts_by_hand(total, weights, want):
    assert split_counts(total, weights) == want


@pytest.mark.parametrize("weights", [[], [1, 0], [1, -2]])
def test_split_counts_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="positive weights"):
        split_counts(4, weights)
