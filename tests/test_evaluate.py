"""lrmjax.train.evaluate: unbiased pass@k, maj@k and `evaluate` with a fake sampler."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from lrmjax.sampling import Rollout, SamplingParams
from lrmjax.train import evaluate as ev


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of the k-subsets of n samples (the first c correct) with a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert ev.pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12), (
                n, c, k)


def test_pass_at_k_known_values():
    assert ev.pass_at_k(10, 0, 5) == 0.0
    assert ev.pass_at_k(10, 10, 1) == 1.0
    assert ev.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # 1 - C(2,2)/C(4,2) = 1 - 1/6
    assert ev.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="pass@5 needs at least 5 samples"):
        ev.pass_at_k(4, 1, 5)


@pytest.mark.parametrize("answers, correct, want", [
    (["5", "5", "3"], [1, 1, 0], 1.0),      # the majority is right
    (["5", "3", "3"], [1, 0, 0], 0.0),      # the majority is wrong
    (["3", "5"], [0, 1], 0.0),              # tie: the answer seen first wins
    (["5", "3"], [1, 0], 1.0),
    (["4", "5", "5", "4"], [1, 0, 0, 1], 1.0),
    ([None, None, "5"], [0, 0, 1], 1.0),    # no answer: no vote
    (["", "", "5"], [0, 0, 1], 1.0),        # an empty answer does not vote either
    ([None, None], [0, 0], 0.0),            # nobody voted
    (["5", "5"], [0.5, 0.5], 0.0),          # correct means a score above 0.5
])
def test_majority_correct_by_hand(answers, correct, want):
    assert ev.majority_correct(answers, correct) == want


# ---------------------------------------------------------------------------------- evaluate
# Three examples; each completion is a short digit string encoded as tokens d+1 (0 = pad).
ANSWERS = ["7", "9", "4"]
GREEDY = {0: ("7", 3), 1: ("8", 5), 2: (" 4", 2)}   # (completion, response length)
SAMPLED = {0: ["7", "7", "3", "7"],                 # 3 correct, majority '7' right
           1: ["1", "2", "2", "8"],                 # 0 correct, majority wrong
           2: ["4", "5", "5", "4"]}                 # 2 correct, tie '4'/'5': '4' seen first
R = 4


def _encode_text(text: str) -> list[int]:
    ids = [int(ch) + 1 if ch.isdigit() else 11 for ch in text]
    return ids + [0] * (R - len(ids))


class FakeSampler:
    """Returns fixed completions per example id (the prompt's only token)."""

    def __init__(self):
        self.calls: list[tuple[int, SamplingParams, jax.Array]] = []

    def generate(self, params, tokens, mask, sampling: SamplingParams, key) -> Rollout:
        ids = np.asarray(tokens)[:, 0]
        self.calls.append((len(ids), sampling, key))
        rows, lengths = [], []
        for i in ids:
            if sampling.greedy:
                text, length = GREEDY[int(i)]
                rows.append(_encode_text(text))
                lengths.append(length)
            else:
                for j in range(sampling.n):
                    rows.append(_encode_text(SAMPLED[int(i)][j]))
                    lengths.append(R)
        b = len(rows)
        resp = np.asarray(rows, np.int32)
        return Rollout(prompt_tokens=np.repeat(np.asarray(tokens), b // len(ids), axis=0),
                       prompt_mask=np.ones((b, 1), bool), response_tokens=resp,
                       response_mask=resp > 0, logprobs=np.zeros((b, R), np.float32),
                       lengths=np.asarray(lengths, np.int32),
                       finish_reason=np.zeros((b,), np.int32),
                       group_ids=np.repeat(np.arange(len(ids)), b // len(ids)).astype(np.int32))


def _encode(chunk):
    tokens = np.asarray([[ex["id"]] for ex in chunk], np.int32)
    return tokens, np.ones_like(tokens, bool)


def _decode(roll: Rollout) -> list[str]:
    out = []
    for row in np.asarray(roll.response_tokens):
        out.append("".join(" " if t == 11 else str(t - 1) for t in row if t > 0))
    return out


def _fake_play():
    return ev.sampler_play(FakeSampler(), _encode, _decode)


def _score(examples, completions):
    return [1.0 if c.strip() == ex["answer"] else 0.0
            for ex, c in zip(examples, completions, strict=True)]


EXAMPLES = [{"id": i, "answer": a} for i, a in enumerate(ANSWERS)]


def test_evaluate_against_hand_computed_metrics():
    sampler = FakeSampler()
    key = jax.random.key(0)
    out = ev.evaluate(ev.sampler_play(sampler, _encode, _decode), None, EXAMPLES, _score, key,
                      max_new_tokens=R, k=4, temperature=0.7, batch_size=2)
    assert set(out) == {"eval/greedy_pass@1", "eval/mean_response_length", "eval/pass@1",
                        "eval/pass@4", "eval/maj@4"}
    assert out["eval/greedy_pass@1"] == pytest.approx(2 / 3)        # examples 0 and 2
    assert out["eval/mean_response_length"] == pytest.approx(10 / 3)  # greedy (3 + 5 + 2) / 3
    assert out["eval/pass@1"] == pytest.approx(5 / 12)              # (3 + 0 + 2) / 12
    assert out["eval/pass@4"] == pytest.approx(2 / 3)               # 1 + 0 + 1
    assert out["eval/maj@4"] == pytest.approx(2 / 3)                # 1 + 0 + 1
    # Chunks of 2 and 1 examples, each decoded greedily and then with k samples.
    assert [(b, s.temperature, s.n, s.max_new_tokens) for b, s, _ in sampler.calls] == [
        (2, 0.0, 1, R), (2, 0.7, 4, R), (1, 0.0, 1, R), (1, 0.7, 4, R)]
    # The sampled calls use fresh keys (not the greedy key, not each other's).
    sampled_keys = [jax.random.key_data(k) for _, s, k in sampler.calls if not s.greedy]
    assert not np.array_equal(sampled_keys[0], sampled_keys[1])
    assert not np.array_equal(sampled_keys[0], jax.random.key_data(key))


def test_evaluate_batching_does_not_change_metrics():
    a = ev.evaluate(_fake_play(), None, EXAMPLES, _score, jax.random.key(0),
                    max_new_tokens=R, k=4, batch_size=2)
    b = ev.evaluate(_fake_play(), None, EXAMPLES, _score, jax.random.key(0),
                    max_new_tokens=R, k=4, batch_size=256)
    assert a == pytest.approx(b)


def test_evaluate_greedy_only_with_prefix():
    sampler = FakeSampler()
    out = ev.evaluate(ev.sampler_play(sampler, _encode, _decode), None, EXAMPLES, _score,
                      jax.random.key(0), max_new_tokens=R, k=0, prefix="heldout/")
    assert out == pytest.approx({"heldout/greedy_pass@1": 2 / 3,
                                 "heldout/mean_response_length": 10 / 3})
    assert all(s.greedy for _, s, _ in sampler.calls)


def test_evaluate_answer_fn_drives_majority():
    # Dropping the answer '4' leaves example 2's votes to '5' (wrong): maj@4 = (1 + 0 + 0) / 3.
    out = ev.evaluate(_fake_play(), None, EXAMPLES, _score,
                      jax.random.key(0), max_new_tokens=R, k=4,
                      answer_fn=lambda s: None if s == "4" else s)
    assert out["eval/maj@4"] == pytest.approx(1 / 3)
    assert out["eval/pass@1"] == pytest.approx(5 / 12)   # scores do not depend on answer_fn
    out = ev.evaluate(_fake_play(), None, EXAMPLES, _score,
                      jax.random.key(0), max_new_tokens=R, k=4, answer_fn=lambda s: None)
    assert out["eval/maj@4"] == 0.0   # no votes at all


class _Tagged(dict):
    """A test example: dict access for the fakes above, and Example-style metadata."""

    @property
    def metadata(self):
        return {"subset": self["subset"]}


def test_evaluate_reports_every_metric_per_subset():
    examples = [_Tagged(ex, subset=s) for ex, s in zip(EXAMPLES, ["add", "add", "cd"],
                                                       strict=True)]
    out = ev.evaluate(_fake_play(), None, examples, _score,
                      jax.random.key(0), max_new_tokens=R, k=4, batch_size=2)
    # Overall: as without subsets (test_evaluate_against_hand_computed_metrics).
    assert out["eval/greedy_pass@1"] == pytest.approx(2 / 3)
    assert out["eval/pass@1"] == pytest.approx(5 / 12)
    # 'add' = examples 0 and 1, 'cd' = example 2, each by hand from GREEDY and SAMPLED.
    assert {k: v for k, v in out.items() if k.startswith("eval/add/")} == pytest.approx({
        "eval/add/greedy_pass@1": 1 / 2, "eval/add/mean_response_length": 4.0,
        "eval/add/pass@1": 3 / 8, "eval/add/pass@4": 1 / 2, "eval/add/maj@4": 1 / 2})
    assert {k: v for k, v in out.items() if k.startswith("eval/cd/")} == pytest.approx({
        "eval/cd/greedy_pass@1": 1.0, "eval/cd/mean_response_length": 2.0,
        "eval/cd/pass@1": 1 / 2, "eval/cd/pass@4": 1.0, "eval/cd/maj@4": 1.0})


def test_evaluate_one_subset_adds_no_breakdown():
    examples = [_Tagged(ex, subset="add") for ex in EXAMPLES]
    out = ev.evaluate(_fake_play(), None, examples, _score,
                      jax.random.key(0), max_new_tokens=R, k=0)
    assert set(out) == {"eval/greedy_pass@1", "eval/mean_response_length"}
