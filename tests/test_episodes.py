"""Multi-turn episode sampler: one-turn episodes equal `Sampler.generate`, the trained
sequence is the sampled tokens plus the observation tokens bit for bit, the trainer's
log-probs of the compact sequence equal the sampler's, turn ends (stop id, stop sequence,
turn cap, budget) and episodes of different lengths in one batch."""

import jax
import numpy as np
import pytest

from lrmjax import episodes
from lrmjax.sampling import FINISH_LENGTH, FINISH_STOP, Sampler, SamplingParams
from lrmjax.train import steps
from tests.test_sampling import CFG, PAD, _prompts, _random_params

EOS = 1
STOPS = (1, 2, 3, 4, 5, 6)  # frequent enough under the random model that turns end early


@pytest.fixture(scope="module")
def params():
    return _random_params(CFG)


def _sampler(**kw):
    args = dict(pad_id=PAD, stop_ids=STOPS, stop_sequences=(), turn_cap=6,
                observation_cap=4, max_turns=3, prompt_buckets=(8,), batch_buckets=(4, 8))
    args.update(kw)
    return episodes.EpisodeSampler(CFG, **args)


class Recorder:
    """A step_fn: answers every turn that did not hit the budget with an observation of
    k = 1 + row % 3 tokens (different lengths in one batch), except rows whose turn ended
    with token 6 (their episode ends) and after `turns` turns."""

    def __init__(self, turns=3):
        self.turns, self.calls = turns, []

    def __call__(self, ends):
        self.calls.append(ends)
        out = {}
        for e in ends:
            if _goes_on(e, self.turns):
                out[e.row] = [10 + e.row % 7] * (1 + e.row % 3)
        return out


def _goes_on(e, turns):
    return (e.ended_by != episodes.BY_BUDGET and e.tokens[-1] != 6 and e.turn + 1 < turns
            and e.total + 1 + e.row % 3 < 24)


def test_one_turn_episode_equals_generate(params):
    tokens, mask, _ = _prompts(3)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=6)
    key = jax.random.key(3)
    ref = Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), prompt_buckets=(8,),
                  batch_buckets=(4, 8)).generate(params, tokens, mask, sp, key)
    got = _sampler(stop_ids=(EOS,), max_turns=1, turn_cap=6).run(
        params, tokens, mask, sp, key, lambda ends: {})
    np.testing.assert_array_equal(got.response_tokens, ref.response_tokens)
    np.testing.assert_array_equal(got.response_mask, ref.response_mask)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=2e-5)
    np.testing.assert_array_equal(got.finish_reason, ref.finish_reason)
    assert not got.observation_mask.any()


@pytest.fixture(scope="module")
def multi(params):
    tokens, mask, seqs = _prompts(4, seed=1)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=24)
    rec = Recorder()
    roll = _sampler().run(params, tokens, mask, sp, jax.random.key(0), rec)
    return roll, rec, seqs


def test_sequence_is_sampled_tokens_plus_observations(multi):
    roll, rec, _ = multi
    for r in range(roll.response_tokens.shape[0]):
        expected, obs = [], []
        for turn_ends in rec.calls:
            for e in turn_ends:
                if e.row != r:
                    continue
                expected += list(e.tokens)
                obs += [False] * len(e.tokens)
                if _goes_on(e, rec.turns):
                    o = [10 + r % 7] * (1 + r % 3)
                    expected += o
                    obs += [True] * len(o)
        k = int(roll.lengths[r])
        assert list(roll.response_tokens[r, :k]) == expected
        assert list(roll.observation_mask[r, :k]) == obs
        assert (roll.response_tokens[r, k:] == PAD).all() and not roll.response_mask[r, k:].any()
        assert (roll.logprobs[r][roll.observation_mask[r]] == 0).all()


def test_episodes_of_different_lengths_in_one_batch(multi):
    roll, rec, _ = multi
    assert len(rec.calls) == 3  # three rounds of turns
    turns = [sum(e.row == r for ends in rec.calls for e in ends)
             for r in range(roll.lengths.shape[0])]
    assert min(turns) == 1 and max(turns) == 3
    obs = roll.observation_mask.sum(-1)
    assert len(set(obs.tolist())) >= 3  # observations of different lengths and counts


def test_turn_ends_at_stop_ids_and_cap(multi):
    _, rec, _ = multi
    kinds = set()
    for turn_ends in rec.calls:
        for e in turn_ends:
            toks = list(e.tokens)
            kinds.add(e.ended_by)
            if e.ended_by == episodes.BY_STOP_ID:
                assert toks[-1] in STOPS
            elif e.ended_by == episodes.BY_TURN_CAP:
                assert len(toks) == 6
            assert not set(toks[:-1]) & set(STOPS)
    assert {episodes.BY_STOP_ID, episodes.BY_TURN_CAP} <= kinds


def test_stop_sequence_ends_the_turn(params):
    tokens, mask, _ = _prompts(1, seed=4)
    sp = SamplingParams(temperature=0.0, n=1, max_new_tokens=6)
    free = _sampler(stop_ids=(), max_turns=1).run(params, tokens, mask, sp,
                                                  jax.random.key(0), lambda ends: {})
    greedy = list(free.response_tokens[0])
    seq = greedy[2:4]  # the greedy continuation's 3rd and 4th tokens
    first = next(i for i in range(1, 6) if greedy[i - 1:i + 1] == seq) + 1
    ended = []
    roll = _sampler(stop_ids=(), stop_sequences=(seq, [63, 62, 61]), max_turns=1).run(
        params, tokens, mask, sp, jax.random.key(0), lambda ends: ended.extend(ends) or {})
    assert int(roll.lengths[0]) == first and list(roll.response_tokens[0, :first]) == (
        greedy[:first])
    assert ended[0].ended_by == episodes.BY_STOP_SEQUENCE
    np.testing.assert_array_equal(
        episodes.stop_sequence_array([[3, 4], [5]]), [[3, 4], [-1, 5]])


def test_trainer_logprobs_equal_sampler_logprobs(params, multi):
    roll, _, _ = multi
    tokens = np.concatenate([roll.prompt_tokens, roll.response_tokens], 1)
    mask = np.concatenate([roll.prompt_mask, roll.response_mask], 1)
    lp = steps.response_logprobs(params, tokens, mask, model_cfg=CFG,
                                 prompt_len=roll.prompt_tokens.shape[1])
    model = roll.response_mask & ~roll.observation_mask
    np.testing.assert_allclose(np.asarray(lp)[model], roll.logprobs[model], atol=1e-4)


def test_budget_ends_the_episode(params):
    tokens, mask, _ = _prompts(2, seed=2)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=8)
    roll = _sampler(stop_ids=()).run(params, tokens, mask, sp, jax.random.key(1),
                                     lambda ends: {})
    # Without stops every turn runs to its cap of 6; the episode then ends (no observation).
    assert (roll.lengths == 6).all() and (roll.finish_reason == FINISH_LENGTH).all()
    rec = Recorder()

    def always(ends):
        rec.calls.append(ends)
        return {e.row: [9] for e in ends if e.total < 7}

    roll = _sampler(stop_ids=()).run(params, tokens, mask, sp, jax.random.key(1), always)
    assert (roll.lengths == 8).all()  # 6 + 1 observation + 1 more model token: budget 8
    assert (roll.finish_reason == FINISH_LENGTH).all()


def test_deterministic_and_finish_stop(params, multi):
    roll, _, _ = multi
    tokens, mask, _ = _prompts(4, seed=1)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=24)
    again = _sampler().run(params, tokens, mask, sp, jax.random.key(0), Recorder())
    for a, b in zip(jax.tree.leaves(roll), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(np.unique(roll.finish_reason)) <= {FINISH_STOP, FINISH_LENGTH}


def test_runs_under_the_transfer_guard_with_a_padded_batch(params):
    # 3 prompts fill a batch bucket of 4: the dummy row is cut on the host, not by an
    # implicit device slice (the RL loop refuses implicit transfers).
    tokens, mask, _ = _prompts(3, seed=5)
    sp = SamplingParams(temperature=1.0, n=1, max_new_tokens=24)
    key = jax.random.key(2)
    with jax.transfer_guard("disallow"):
        roll = _sampler().run(params, tokens, mask, sp, key, Recorder())
    assert roll.response_tokens.shape == (3, 24)


def test_observation_over_the_cap_is_refused(params):
    tokens, mask, _ = _prompts(1)
    sp = SamplingParams(temperature=1.0, n=1, max_new_tokens=24)
    with pytest.raises(ValueError, match="observation_cap"):
        _sampler(stop_ids=()).run(
            params, tokens, mask, sp, jax.random.key(0), lambda ends: {0: [3] * 5})


def test_rollout_is_as_wide_as_the_budget_when_slots_are_fewer(params):
    tokens, mask, _ = _prompts(2, seed=6)
    sp = SamplingParams(temperature=1.0, n=1, max_new_tokens=10)
    roll = _sampler(stop_ids=(), max_turns=1, turn_cap=4).run(  # 4 slots, budget 10
        params, tokens, mask, sp, jax.random.key(0), lambda ends: {})
    assert roll.response_tokens.shape == (2, 10) and (roll.lengths == 4).all()
    assert (roll.response_tokens[:, 4:] == PAD).all()


def test_rows_split_over_a_mesh_give_the_same_episodes(params):
    from lrmjax import parallel

    mesh = parallel.make_mesh({"data": 4, "fsdp": 1, "tensor": 1}, jax.devices()[:4])
    tokens, mask, _ = _prompts(4, seed=1)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=24)
    sharded = jax.device_put(params, parallel.replicated(mesh))
    got = _sampler(mesh=mesh).run(sharded, tokens, mask, sp, jax.random.key(0), Recorder())
    ref = _sampler().run(params, tokens, mask, sp, jax.random.key(0), Recorder())
    np.testing.assert_array_equal(got.response_tokens, ref.response_tokens)
    np.testing.assert_array_equal(got.observation_mask, ref.observation_mask)
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)


def test_finished_episodes_leave_the_batch_without_changing_any(params):
    tokens, mask, _ = _prompts(8, seed=7)
    sp = SamplingParams(temperature=1.0, n=2, max_new_tokens=24)

    def quarter(ends):  # a quarter of the episodes go on after each turn
        return {e.row: [9] * (1 + e.row % 3) for e in ends if e.row % 4 == 0 and e.total < 18}

    shrunk = _sampler(batch_buckets=(8,))
    got = shrunk.run(params, tokens, mask, sp, jax.random.key(3), quarter)
    ref = _sampler(batch_buckets=(8,), shrink=False).run(params, tokens, mask, sp,
                                                        jax.random.key(3), quarter)
    assert got.observation_mask[::4].any(-1).all() and not got.observation_mask[1::4].any()
    assert any(k[0].startswith("take/") for k in shrunk._compiled)  # it did shrink
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        if a.dtype == np.float32:
            np.testing.assert_allclose(a, b, atol=1e-5)
        else:
            np.testing.assert_array_equal(a, b)
