"""Tests for lrmjax.data.curriculum (reference values worked out by hand)."""

import json
import re

import numpy as np
import pytest

from lrmjax.data.curriculum import (
    AccuracyTracker,
    CurriculumDataset,
    DifficultySchedule,
    TaskStream,
    band_filter,
    sampling_weights,
)
from lrmjax.data.tasks import ArithmeticTask, Example


def _ex(uid):
    return Example(prompt=f"p{uid}", answer="a", metadata={"uid": uid})


def test_tracker_cumulative_mean():
    t = AccuracyTracker()
    t.update(["a", "a", "b"], [1.0, 0.0, 1.0])
    assert t.accuracy("a") == 0.5 and t.accuracy("b") == 1.0 and t.accuracy("c") is None
    t.update(["a"], [1.0])
    assert t.accuracy("a") == pytest.approx(2 / 3) and t.count("a") == 3
    with pytest.raises(ValueError, match="2 uids but 1"):
        t.update(["a", "b"], [1.0])
    with pytest.raises(ValueError, match="not finite"):
        t.update(["a"], [float("nan")])


def test_tracker_ema_and_threshold():
    t = AccuracyTracker(decay=0.5)
    t.update(["a", "a"], [1.0, 0.0])   # first update sets 0.5
    t.update(["a"], [1.0])             # 0.5 * 0.5 + 0.5 * 1 = 0.75
    assert t.accuracy("a") == pytest.approx(0.75)
    t = AccuracyTracker(success_threshold=0.5)
    t.update(["a", "a"], [0.7, 0.2])   # successes 1, 0
    assert t.accuracy("a") == 0.5


def test_tracker_state_round_trip():
    t = AccuracyTracker(decay=0.9)
    t.update(["a", "b", "b"], [1, 0, 1])
    t2 = AccuracyTracker(decay=0.9)
    t2.load_state_dict(json.loads(json.dumps(t.state_dict())))
    assert t2.accuracy("b") == 0.5 and t2.count("b") == 2
    with pytest.raises(ValueError, match="decay"):
        AccuracyTracker().load_state_dict(t.state_dict())


def test_band_filter_keeps_band_and_unseen():
    t = AccuracyTracker()
    t.update(["lo", "mid", "hi", "edge"], [0.1, 0.5, 0.9, 0.2])
    kept = band_filter([_ex(u) for u in ["lo", "mid", "hi", "edge", "new"]], t, 0.2, 0.8)
    assert [e.metadata["uid"] for e in kept] == ["mid", "edge", "new"]


def test_sampling_weights_by_hand():
    t = AccuracyTracker()
    t.update(["a", "b"], [0.25, 1.0])
    np.testing.assert_allclose(sampling_weights(t, ["a", "b", "c"]),
                               [0.75 / 1.75, 0.0, 1.0 / 1.75])
    np.testing.assert_allclose(sampling_weights(t, ["a", "b", "c"], floor=0.1),
                               [0.75 / 1.85, 0.1 / 1.85, 1.0 / 1.85])
    np.testing.assert_allclose(sampling_weights(t, ["b", "b"]), [0.5, 0.5])  # all solved


def test_curriculum_dataset_weighted_frequencies():
    src = [_ex(str(i)) for i in range(4)]
    data = CurriculumDataset(src, batch_size=1, seed=0, mode="weighted")
    data.tracker.update(["0", "1", "2"], [1.0, 0.5, 0.75])  # weights 0, .5, .25, 1 (unseen)
    counts = {str(i): 0 for i in range(4)}
    for _ in range(3500):
        counts[next(data)[0].metadata["uid"]] += 1
    assert counts["0"] == 0
    freq = np.array([counts[str(i)] for i in range(1, 4)]) / 3500
    np.testing.assert_allclose(freq, [0.5 / 1.75, 0.25 / 1.75, 1.0 / 1.75], atol=0.03)


def test_curriculum_dataset_band_and_fallback():
    src = [_ex(str(i)) for i in range(6)]
    data = CurriculumDataset(src, batch_size=2, seed=1, mode="uniform", band=(0.2, 0.8))
    data.update([src[0], src[1], src[2]], [0.0, 1.0, 0.5])  # 0 too hard, 1 too easy
    for _ in range(50):
        uids = {e.metadata["uid"] for e in next(data)}
        assert len(uids) == 2 and not uids & {"0", "1"}
    assert data.metrics()["curriculum/band_fallbacks"] == 0
    data.update(src[2:], [1.0, 1.0, 0.0, 0.0])  # now only prompt 2 (0.75) is in the band
    uids = {e.metadata["uid"] for e in next(data)}
    assert len(uids) == 2
    assert data.metrics()["curriculum/band_fallbacks"] == 1


def test_curriculum_dataset_resume():
    src = [_ex(str(i)) for i in range(20)]
    a = CurriculumDataset(src, batch_size=4, seed=3, band=(0.0, 0.9))
    for _ in range(3):
        batch = next(a)
        a.update(batch, [float(int(e.metadata["uid"]) % 2) for e in batch])
    state = json.loads(json.dumps(a.get_state()))
    expected = [[e.metadata["uid"] for e in next(a)] for _ in range(5)]
    b = CurriculumDataset(src, batch_size=4, seed=3, band=(0.0, 0.9))
    b.set_state(state)
    assert [[e.metadata["uid"] for e in next(b)] for _ in range(5)] == expected


def test_curriculum_dataset_shards_are_disjoint():
    src = [_ex(str(i)) for i in range(10)]
    seen = [set() for _ in range(2)]
    for shard in range(2):
        data = CurriculumDataset(src, batch_size=5, seed=0, shard_index=shard, shard_count=2)
        for _ in range(10):
            seen[shard] |= {e.metadata["uid"] for e in next(data)}
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 10


def test_linear_schedule_by_hand():
    s = DifficultySchedule(1, 4, mode="linear", steps=100)
    assert [s.difficulty(t) for t in (0, 24, 25, 49, 50, 74, 75, 99, 1000)] == \
        [1, 1, 2, 2, 3, 3, 4, 4, 4]


def test_threshold_schedule_by_hand():
    s = DifficultySchedule(2, 3, mode="threshold", threshold=0.75, min_samples=4)
    s.update([1, 1, 0])                 # 3 samples < min_samples
    assert s.difficulty(0) == 2 and s.running_accuracy() == pytest.approx(2 / 3)
    s.update([1])                       # 3/4 >= 0.75 -> level 3, counters reset
    assert s.difficulty(0) == 3 and s.running_accuracy() is None
    s.update([1, 1, 1, 1, 1])           # already at end
    assert s.difficulty(0) == 3
    s2 = DifficultySchedule(2, 3, threshold=0.75, min_samples=4)
    s2.update([0, 0])
    s3 = DifficultySchedule(2, 3, threshold=0.75, min_samples=4)
    s3.load_state_dict(json.loads(json.dumps(s2.state_dict())))
    s3.update([1, 1])                   # 2/4 < 0.75: stays
    assert s3.difficulty(0) == 2 and s3.running_accuracy() == 0.5
    with pytest.raises(ValueError, match="steps"):
        DifficultySchedule(1, 3, mode="linear")


def test_task_stream_follows_schedule_and_resumes():
    schedule = DifficultySchedule(1, 3, mode="linear", steps=6)   # 2 steps per level
    stream = TaskStream(ArithmeticTask(digits=1, ops="+"), batch_size=16, seed=0,
                        schedule=schedule)
    batches = [next(stream) for _ in range(6)]
    for step, batch in enumerate(batches):
        level = 1 + step // 2
        operands = [x for e in batch for x in re.findall(r"\d+", e.prompt)]
        assert all(e.metadata["difficulty"] == level for e in batch)
        assert max(len(x) for x in operands) <= level
    assert max(len(x) for e in batches[-1] for x in re.findall(r"\d+", e.prompt)) == 3
    uids = [e.metadata["uid"] for b in batches for e in b]
    assert len(set(uids)) == len(uids)

    fresh = TaskStream(ArithmeticTask(digits=1, ops="+"), batch_size=16, seed=0,
                       schedule=DifficultySchedule(1, 3, mode="linear", steps=6))
    _ = [next(fresh) for _ in range(2)]
    state = json.loads(json.dumps(fresh.get_state()))
    resumed = TaskStream(ArithmeticTask(digits=1, ops="+"), batch_size=16, seed=0,
                         schedule=DifficultySchedule(1, 3, mode="linear", steps=6))
    resumed.set_state(state)
    assert [next(resumed) for _ in range(4)] == batches[2:]
