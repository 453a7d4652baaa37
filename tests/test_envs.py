"""Tests for lrmjax.envs: EnvPool (in-process and in worker processes: misbehaving
environments end their episode with a failure and never crash the pool), EpisodeBook (turns,
observations cut to the caps and the budget, rewards at the turns' last tokens, env/*
metrics, all computed by hand), and the shipped environments `tools` and `guess_number`."""

import math
import os
import pickle
import time

import numpy as np
import pytest

from lrmjax.data.tasks.base import Example
from lrmjax.envs import make_env
from lrmjax.envs import runner as runner_lib
from lrmjax.envs.base import Environment, StepResult, register_env
from lrmjax.envs.guess import GuessNumberEnv
from lrmjax.envs.pool import EnvPool
from lrmjax.envs.runner import BY_BUDGET, BY_STOP_ID, BY_STOP_SEQUENCE, BY_TURN_CAP, EpisodeBook
from lrmjax.envs.tool_env import ToolEnv

EXAMPLE = Example(prompt="p", answer="a")


# Module-level so that spawned workers can unpickle them by reference (they import this
# module: pytest puts tests/ on sys.path, which spawn hands to the workers).
class Misbehaving(Environment):
    """Step misbehaves as `mode` says; counts its steps (state that must survive the trip to
    a worker and back)."""

    max_turns = 10

    def __init__(self, mode: str = "ok"):
        self.mode, self.steps = mode, 0

    def reset(self, example):
        return {"reset_bytes": b"prompt", "reset_none": None}.get(self.mode, "P:" + example.prompt)

    def step(self, action):
        self.steps += 1
        m = self.mode
        if m == "raise":
            raise RuntimeError("env bug")
        if m == "hang":
            time.sleep(60)
        if m == "exit":
            os._exit(3)
        if m == "sysexit":
            raise SystemExit(2)
        bad = {"tuple": ("obs", 0.0, False), "none": None,
               "obs_bytes": StepResult(b"obs"), "obs_int": StepResult(5),
               "nan": StepResult("o", reward=math.nan), "inf": StepResult("o", reward=math.inf),
               "-inf": StepResult("o", reward=-math.inf),
               "reward_str": StepResult("o", reward="abc"),
               "reward_numeric_str": StepResult("o", reward="1.0"),
               "reward_none": StepResult("o", reward=None),
               "reward_list": StepResult("o", reward=[1.0]),
               "done_int": StepResult("o", done=1), "done_str": StepResult("o", done="yes"),
               "done_none": StepResult("o", done=None)}
        if m in bad:
            return bad[m]
        if m == "huge":
            return StepResult("x" * 10_000_000)
        return StepResult(f"{action}:{self.steps}", reward=np.float32(0.25), done=False)


BAD_STEPS = ["raise", "sysexit", "tuple", "none", "obs_bytes", "obs_int", "nan", "inf", "-inf",
             "reward_str", "reward_numeric_str", "reward_none", "reward_list", "done_int",
             "done_str", "done_none"]


@pytest.fixture(scope="module")
def worker_pool():
    with EnvPool(num_workers=1, timeout_s=1.0, spares=1, max_observation_chars=100) as pool:
        # Wait for the worker to start (spawn + imports) before any timing.
        assert pool.call([Misbehaving()], "step", ["warm"])[0].failure is None
        yield pool


@pytest.fixture(params=["in_process", "workers"])
def pool(request, worker_pool):
    if request.param == "workers":
        yield worker_pool
        return
    with EnvPool(num_workers=0, max_observation_chars=100) as p:
        yield p


def test_ok_step_and_state_round_trip(pool):
    env = Misbehaving()
    for k in range(1, 4):
        (out,) = pool.call([env], "step", ["a"])
        assert out.failure is None and not out.truncated
        assert out.result == StepResult(f"a:{k}", reward=0.25, done=False)
        assert type(out.result.reward) is float  # the numpy reward is made a python float
        env = out.env
        assert env.steps == k  # the count survives the trip through the worker


@pytest.mark.parametrize("mode", BAD_STEPS)
def test_bad_steps_fail_the_episode(pool, mode):
    env = Misbehaving(mode)
    outs = pool.call([env, Misbehaving()], "step", ["a", "b"])
    assert outs[0].failure == "error" and outs[0].result is None and outs[0].detail
    if pool.num_workers:  # the state sent, not the worker's (in-process: the same object)
        assert outs[0].env.steps == 0
    assert outs[1].failure is None and outs[1].result.observation == "b:1"  # its batch mate


@pytest.mark.parametrize("mode", ["reset_bytes", "reset_none"])
def test_reset_must_return_text(pool, mode):
    outs = pool.call([Misbehaving(mode), Misbehaving()], "reset", [EXAMPLE, EXAMPLE])
    assert outs[0].failure == "error" and "reset returned" in outs[0].detail
    assert outs[1].failure is None and outs[1].result.observation == "P:p"


def test_huge_observation_is_cut_and_flagged(pool):
    start = time.monotonic()
    (out,) = pool.call([Misbehaving("huge")], "step", ["a"])
    assert time.monotonic() - start < 5.0
    assert out.failure is None and out.truncated
    assert out.result.observation == "x" * 100


def test_hang_times_out_and_the_spare_takes_over(worker_pool):
    start = time.monotonic()
    outs = worker_pool.call([Misbehaving("hang")], "step", ["a"])
    elapsed = time.monotonic() - start
    assert outs[0].failure == "timeout" and "timeout_s=1" in outs[0].detail
    assert 1.0 <= elapsed < 8.0
    # The next call runs on the warm spare at once.
    start = time.monotonic()
    (out,) = worker_pool.call([Misbehaving()], "step", ["b"])
    assert out.failure is None and out.result.observation == "b:1"
    assert time.monotonic() - start < 5.0


def test_dead_worker_is_an_error(worker_pool):
    outs = worker_pool.call([Misbehaving("exit"), Misbehaving()], "step", ["a", "b"])
    assert outs[0].failure == "error" and "worker died" in outs[0].detail
    assert outs[1].failure is None and outs[1].result.observation == "b:1"


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError, match="timeout_s > 0"):
        EnvPool(num_workers=0, timeout_s=0)
    with pytest.raises(ValueError, match="method must be"):
        EnvPool(num_workers=0).call([Misbehaving()], "close", [None])


# ------------------------------------------------------------------ EpisodeBook
class Scripted(Environment):
    """'say:<text>' -> observation <text>, reward 0.5, one tool call; 'done' -> done with
    reward 1; 'raise' -> raises. Counts its steps."""

    max_turns = 3

    def __init__(self):
        self.steps = 0

    def reset(self, example):
        return "P:" + example.prompt

    def step(self, action):
        self.steps += 1
        if action == "raise":
            raise RuntimeError("scripted failure")
        if action == "done":
            return StepResult(reward=1.0, done=True, info={"tool_calls": 0})
        assert action.startswith("say:")
        return StepResult(action[4:], reward=0.5,
                          info={"tool_calls": 1, "flag": True, "note": "x", "messages": []})


class ScriptedOneTurn(Scripted):
    max_turns = 1


class BadReset(Scripted):
    def reset(self, example):
        return 5


def _ids(text):
    return np.asarray([ord(c) for c in text], np.int32)


def _decode(ids):
    return "".join(chr(int(i)) for i in ids)


def _end(row, text, ended_by, total, turn):
    from lrmjax.episodes import TurnEnd

    return TurnEnd(row=row, tokens=_ids(text), ended_by=ended_by, total=total, turn=turn)


def test_turn_end_codes_match_the_sampler():
    from lrmjax import episodes

    assert (runner_lib.BY_STOP_ID, runner_lib.BY_STOP_SEQUENCE, runner_lib.BY_TURN_CAP,
            runner_lib.BY_BUDGET) == (episodes.BY_STOP_ID, episodes.BY_STOP_SEQUENCE,
                                      episodes.BY_TURN_CAP, episodes.BY_BUDGET)
    assert len({episodes.RUNNING, BY_STOP_ID, BY_STOP_SEQUENCE, BY_TURN_CAP, BY_BUDGET}) == 5


def test_episode_book_by_hand():
    envs = [Scripted() for _ in range(6)] + [ScriptedOneTurn(), Scripted()]
    examples = [Example(prompt=f"q{r}", answer="") for r in range(8)]
    pool = EnvPool(num_workers=0)
    book = EpisodeBook(pool, envs, examples, decode=_decode,
                       encode_observation=lambda row, text, res: [ord(c) for c in
                                                                  res.observation],
                       observation_cap=4, budget=30)
    assert book.reset() == [f"P:q{r}" for r in range(8)]

    # Round 1.
    ends = [_end(0, "say:ab", BY_STOP_ID, 6, 0),           # obs "ab"
            _end(1, "say:xx", BY_TURN_CAP, 6, 0),          # cut: no step, closed
            _end(2, "say:yy", BY_BUDGET, 6, 0),            # cut: no step, closed
            _end(3, "say:abcdefgh", BY_STOP_SEQUENCE, 12, 0),  # 8 chars > cap 4
            _end(4, "say:abcdef", BY_STOP_ID, 27, 0),      # room = 30 - 27 - 1 = 2
            _end(5, "raise", BY_STOP_ID, 5, 0),            # env raises: failed
            _end(6, "say:zz", BY_STOP_ID, 6, 0),           # its one turn used: max_turns_hit
            _end(7, "say:abc", BY_STOP_ID, 29, 0)]         # room 0: ends at the budget
    out = book.step(ends)
    assert out == {0: [ord("a"), ord("b")], 3: [ord(c) for c in "abcd"],
                   4: [ord("a"), ord("b")]}
    assert [e.steps for e in envs] == [1, 0, 0, 1, 1, 1, 1, 1]
    np.testing.assert_array_equal(book.open, [1, 0, 0, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(book.failed, [0, 0, 0, 0, 0, 1, 0, 0])

    # Round 2: rows 0 and 3 answer; row 5 (failed, closed) is not stepped again.
    out = book.step([_end(0, "done", BY_STOP_ID, 12, 1),
                     _end(3, "done", BY_STOP_ID, 20, 1),
                     _end(4, "x", BY_BUDGET, 30, 1),  # row 4's last token: cut, no step
                     _end(5, "say:q", BY_STOP_ID, 9, 1)])
    assert out == {}
    assert [e.steps for e in envs] == [2, 0, 0, 2, 1, 1, 1, 1]
    assert not book.open.any()

    assert book.turns == [["say:ab", "done"], ["say:xx"], ["say:yy"], ["say:abcdefgh", "done"],
                          ["say:abcdef", "x"], ["raise", "say:q"], ["say:zz"], ["say:abc"]]
    assert book.final_texts() == ["done", "say:xx", "say:yy", "done", "x", "say:q",
                                  "say:zz", "say:abc"]
    assert book.counts == {"errors": 1.0, "timeouts": 0.0, "obs_truncated": 3.0,
                           "max_turns_hit": 1.0}

    # Step rewards at index total - 1 of the turn they answer.
    expected = np.zeros((8, 30), np.float32)
    for r, index, reward in [(0, 5, 0.5), (0, 11, 1.0), (3, 11, 0.5), (3, 19, 1.0),
                             (4, 26, 0.5), (6, 5, 0.5), (7, 28, 0.5)]:
        expected[r, index] = reward
    np.testing.assert_array_equal(book.token_rewards(30), expected)
    np.testing.assert_array_equal(book.token_rewards(20), expected[:, :20])  # 26, 28 cut
    np.testing.assert_allclose(book.total_rewards(), [1.5, 0, 0, 1.5, 0.5, 0, 0.5, 0.5])

    # Masks by hand: row r has resp[r] response tokens, of which obs[r] observation tokens.
    resp = [14, 6, 6, 24, 30, 5, 6, 29]
    obs = [2, 0, 0, 4, 2, 0, 0, 0]
    response_mask = np.zeros((8, 30), bool)
    observation_mask = np.zeros((8, 30), bool)
    for r in range(8):
        response_mask[r, :resp[r]] = True
        observation_mask[r, 6:6 + obs[r]] = True
    observation_mask[1, 20:25] = True  # outside the response: not counted
    m = book.metrics(observation_mask, response_mask)
    assert m == pytest.approx({
        "env/errors": 1.0, "env/timeouts": 0.0, "env/obs_truncated": 3.0,
        "env/max_turns_hit": 1.0,
        "env/turns": 12 / 8, "env/turns_max": 2.0,
        "env/tool_calls": 5 / 8,  # one call each in rows 0, 3, 4, 6 and 7
        "env/model_tokens": (12 + 6 + 6 + 20 + 28 + 5 + 6 + 29) / 8,
        "env/observation_tokens": 8 / 8})


def test_episode_book_failed_reset_plays_the_example_prompt():
    envs = [Scripted(), BadReset()]
    examples = [Example(prompt="a", answer=""), Example(prompt="b", answer="")]
    book = EpisodeBook(EnvPool(num_workers=0), envs, examples, decode=_decode,
                       encode_observation=lambda row, text, res: [ord(c) for c in
                                                                  res.observation],
                       observation_cap=4, budget=30)
    assert book.reset() == ["P:a", "b"]
    np.testing.assert_array_equal(book.failed, [False, True])
    assert book.counts["errors"] == 1.0
    out = book.step([_end(0, "say:o", BY_STOP_ID, 5, 0), _end(1, "say:o", BY_STOP_ID, 5, 0)])
    assert out == {0: [ord("o")]} and envs[1].steps == 0


def test_episode_book_counts_timeouts(worker_pool):
    envs = [Misbehaving("hang"), Misbehaving()]
    book = EpisodeBook(worker_pool, envs, [EXAMPLE, EXAMPLE], decode=_decode,
                       encode_observation=lambda row, text, res: [ord(c) for c in
                                                                  res.observation],
                       observation_cap=10, budget=50)
    out = book.step([_end(0, "a", BY_STOP_ID, 1, 0), _end(1, "b", BY_STOP_ID, 1, 0)])
    assert out == {1: [ord(c) for c in "b:1"]}
    assert book.counts["timeouts"] == 1.0 and book.counts["errors"] == 0.0
    np.testing.assert_array_equal(book.failed, [True, False])


# ------------------------------------------------------------------ tools
def test_tool_env_compact_calculator():
    env = make_env("tools", tools=("calculator",), fmt="compact", max_turns=3, max_calls=1,
                   tool_options={"calculator": {"max_operations": 1}})
    assert isinstance(env, ToolEnv) and env.max_turns == 3
    assert env.stop_strings() == ("</calculator>",)
    res = env.step("so <calculator>12*34</calculator>")
    assert res.observation == f"={12 * 34}\n" == "=408\n"
    assert not res.done and res.reward == 0.0
    assert res.info["tool_calls"] == 1 and res.info["tool_errors"] == 0
    res = env.step("<calculator>2*3*4</calculator>")  # two operations: refused
    assert res.observation.startswith("=error: ") and res.observation.endswith("\n")
    assert not res.done and res.info["tool_errors"] == 1
    res = env.step("<calculator>12*</calculator>")  # malformed
    assert res.observation.startswith("=error: ") and not res.done
    assert res.info == {**res.info, "tool_calls": 1, "tool_errors": 1}
    res = env.step("408")  # no call: the answer
    assert res.done and res.observation == "" and res.info["tool_calls"] == 0
    # Without the limit, three factors are one call.
    env = make_env("tools")
    assert env.step("<calculator>2*3*4</calculator>").observation == "=24\n"


def test_tool_env_result_width():
    env = make_env("tools", tools=("calculator",), fmt="compact", max_calls=1,
                   tool_options={"calculator": {"max_operations": 1}}, result_width=9)
    # Left-aligned in 9 characters whatever the length: each digit k of a result sits
    # 11 - k tokens before the line after it.
    assert env.step("<calculator>12*34</calculator>").observation == "=408" + " " * 6 + "\n"
    assert env.step("<calculator>999*999</calculator>").observation == "=998001   \n"
    assert env.step("<calculator>99999*9999</calculator>").observation == "=999890001\n"
    # Longer than the field: as it is, not cut.
    assert env.step("<calculator>99999*99999</calculator>").observation == "=9999800001\n"
    err = env.step("<calculator>2*3*4</calculator>").observation
    assert err.startswith("=error: ") and err.endswith("\n") and len(err) > 11
    assert make_env("tools").step("<calculator>2*3</calculator>").observation == "=6\n"
    for bad in (-1, True, 2.0, "9"):
        with pytest.raises(ValueError, match="result_width must be an int >= 0"):
            make_env("tools", result_width=bad)
    with pytest.raises(ValueError, match="result_width .9. applies to fmt='compact' only"):
        make_env("tools", fmt="qwen", result_width=9)


def test_tool_env_qwen_json_call():
    env = make_env("tools", fmt="qwen")
    assert env.stop_strings() == ("</tool_call>",)
    assert [t["function"]["name"] for t in env.tools()] == ["calculator"]
    res = env.step('<tool_call>\n{"name": "calculator", "arguments": {"expression": '
                   '"12*34"}}\n</tool_call>')
    assert res.observation == "\n<tool_response>\n408\n</tool_response>"
    assert not res.done and res.info["tool_calls"] == 1
    assert res.info["messages"] == [{"role": "tool", "name": "calculator", "content": "408"}]
    assert env.step("The answer is 408.").done


def test_tool_env_pickles_and_runs_in_a_worker(worker_pool):
    env = make_env("tools", max_calls=1, tool_options={"calculator": {"max_operations": 1}})
    again = pickle.loads(pickle.dumps(env))
    assert again.step("<calculator>7*6</calculator>").observation == "=42\n"
    (out,) = worker_pool.call([env], "step", ["<calculator>7*6</calculator>"])
    assert out.failure is None and out.result.observation == "=42\n"


def test_tool_env_bad_arguments():
    with pytest.raises(ValueError, match="fmt"):
        make_env("tools", fmt="xml")
    with pytest.raises(ValueError, match="tool_options"):
        make_env("tools", tool_options={"search": {}})
    with pytest.raises(ValueError, match="unknown environment"):
        make_env("nope")
    with pytest.raises(ValueError, match="bad arguments"):
        make_env("tools", colour="red")


# ------------------------------------------------------------------ guess_number
def test_guess_number():
    env = make_env("guess_number", max_turns=5)
    assert isinstance(env, GuessNumberEnv) and env.max_turns == 5
    ex = Example(prompt="guess 1-100", answer="37",
                 metadata={"secret": 37, "low": 1, "high": 100})
    assert env.reset(ex) == "guess 1-100"
    assert env.step("50") == StepResult("lower\n", info={"invalid_guesses": 0})
    assert env.step("I think 20") == StepResult("higher\n", info={"invalid_guesses": 0})
    for bad in ["", "no idea", "101", "0"]:
        assert env.step(bad) == StepResult("?\n", info={"invalid_guesses": 1})
    res = env.step("36 or 37")  # the last number counts
    assert res.done and res.reward == 1.0 and res.observation == ""
    assert env.guesses == 7
    assert pickle.loads(pickle.dumps(env)).secret == 37


# ------------------------------------------------------------------ trainer
@register_env("test_turn_length")
class TurnLength(Environment):
    """Answers every turn with '=<its length in characters>\n'; a turn ends at any digit,
    so that even an untrained model's turns end at a stop and get observations."""

    max_turns = 3

    def stop_strings(self):
        return tuple("0123456789")

    def step(self, action):
        return StepResult(f"={len(action)}\n")


def test_trainer_keeps_observations_out_of_the_targets_and_the_loss(tmp_path):
    """configs/calc_tool_grpo.py:runlocal: SFT demonstrations target only the model's
    characters, and sampled episodes mark exactly the calculator's results as observations,
    which the loss mask leaves out."""
    import jax

    from lrmjax import config as config_lib
    from lrmjax.train import inputs, rollouts, update_batch

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config_lib.from_file(os.path.join(repo, "configs", "calc_tool_grpo.py"), "runlocal")
    # An untrained model never calls the calculator: sample with an environment whose turns
    # end at any digit and whose observations are checkable from the turn alone.
    cfg.env.name, cfg.env.kwargs = "test_turn_length", {}
    inp = inputs.build_inputs(cfg, str(tmp_path))
    try:
        tok = inp.tokenizer
        examples = inp.eval_examples[:4]
        demo = inputs.demonstrations(inp, examples)
        for ex, toks, mask, target in zip(examples, demo["tokens"], demo["mask"],
                                          demo["target_mask"], strict=True):
            ids = [int(t) for t in toks[mask]]
            tgt = target[mask]
            # Characters by hand: prompt (not a target), then the segments, then EOS.
            prompt_len = len(ids) - sum(len(tok.encode(t)) for t, _ in
                                        ex.metadata["demonstration_turns"]) - 1
            expected = [0.0] * prompt_len
            for text, is_model in ex.metadata["demonstration_turns"]:
                expected += [float(is_model)] * len(tok.encode(text))
            np.testing.assert_array_equal(tgt, expected + [1.0])
            observed = tok.decode([i for i, t in zip(ids, tgt, strict=True) if t == 0][
                prompt_len:])
            assert observed == "".join(t for t, m in ex.metadata["demonstration_turns"]
                                       if not m)

        batch = rollouts.sample_and_score(inp, inp.init_params, examples[:2],
                                          jax.random.key(0), inp.train_sampling)
        roll = batch.rollout
        obs_mask = np.asarray(roll.observation_mask) & np.asarray(roll.response_mask)
        spans_seen = 0
        for r in range(obs_mask.shape[0]):
            toks = np.asarray(roll.response_tokens[r])
            length = int(np.asarray(roll.response_mask[r]).sum())
            # Each maximal run of observation tokens is the observation of the turn before it.
            m = np.concatenate([[False], obs_mask[r], [False]])
            starts = np.flatnonzero(~m[:-1] & m[1:])
            stops = np.flatnonzero(m[:-1] & ~m[1:])
            turn_start = 0
            for a, b in zip(starts, stops, strict=True):
                turn = tok.decode(toks[turn_start:a])
                expected = f"={len(turn)}\n"
                text = tok.decode(toks[a:b])
                # Whole, or cut by the budget at the end of the episode.
                assert text == expected or (b == length and expected.startswith(text)), (
                    turn, text)
                # The turn ended at a stop string or a stop id (e.g. EOS).
                last = int(toks[a - 1])
                assert last in tok.stop_ids or tok.decode([last]) in list("0123456789"), turn
                spans_seen += 1
                turn_start = b
        assert spans_seen >= 4
        rows = update_batch.device_rows(roll, batch.rewards, {}, inp.mesh,
                                        overlong_filter=False)
        loss_mask = np.asarray(rows["loss_mask"])
        np.testing.assert_array_equal(loss_mask,
                                      np.where(obs_mask, 0.0, np.asarray(roll.response_mask)))
        assert batch.reward_metrics["env/observation_tokens"] == pytest.approx(
            obs_mask.sum(-1).mean())
    finally:
        inp.close()


def test_episode_slots_beyond_the_model_are_refused_at_start(tmp_path):
    from lrmjax import config as config_lib
    from lrmjax.train import inputs

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config_lib.from_file(os.path.join(repo, "configs", "calc_tool_grpo.py"), "runlocal")
    cfg.env.turn_tokens = 60  # 16 + 3 * 60 + 2 * 12 = 220 slots > max_seq_len 192
    with pytest.raises(ValueError, match="env.turn_tokens.*max_seq_len 192"):
        inputs.build_inputs(cfg, str(tmp_path))


class _OneTurnSampler:
    """Stands in for the episode sampler: every row writes `turn` (ending in EOS) once, and
    the observations step_fn returns are kept."""

    def __init__(self, turn):
        self.turn, self.observations = turn, None

    def run(self, params, tokens, mask, sampling, key, step_fn):
        from lrmjax.episodes import TurnEnd

        rows = tokens.shape[0] * sampling.n
        ends = [TurnEnd(r, np.asarray(self.turn), BY_STOP_ID, len(self.turn), 0)
                for r in range(rows)]
        self.observations = step_fn(ends)
        return None


def test_chat_episodes_append_the_templates_delta(tmp_path):
    """configs/tool_math_qwen2_5_1_5b.py:runlocal: a turn that calls the python tool (in
    Qwen's <tool_call> JSON) and ends at EOS gets, as its observation, exactly the tokens
    that continue the chat template's render of the whole conversation."""
    import jax

    from lrmjax import config as config_lib
    from lrmjax.sampling import SamplingParams
    from lrmjax.train import inputs

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = config_lib.from_file(os.path.join(repo, "configs", "tool_math_qwen2_5_1_5b.py"),
                               "runlocal")
    cfg.env.num_workers = 0
    inp = inputs.build_inputs(cfg, str(tmp_path))
    try:
        tok = inp.tokenizer
        call = '<tool_call>\n{"name": "python", "arguments": {"code": "print(6*7)"}}\n</tool_call>'
        fake = _OneTurnSampler(tok.encode(call) + [tok.eos_id])
        inp.episode_sampler = fake
        ex = inp.eval_examples[0]
        played = inp.play(None, [ex], SamplingParams(n=2, max_new_tokens=256),
                          jax.random.key(0))
        user = cfg.data.prompt_template.format(prompt=ex.prompt)
        messages = [{"role": "user", "content": user},
                    {"role": "assistant", "content": call},
                    {"role": "tool", "content": "42"}]
        prompt = tok.apply_chat_template(messages[:1], add_generation_prompt=True)
        full = tok.apply_chat_template(messages, add_generation_prompt=True)
        assert inputs.prompt_text(cfg, tok, ex) == prompt
        assert not played.book.failed.any(), (played.book.counts, played.book.turns)
        for row in (0, 1):
            ids = tok.encode(prompt) + fake.turn + fake.observations[row]
            assert ids == tok.encode(full)  # canonical turn: the same ids as the whole render
        assert played.book.info_sums["tool_calls"].tolist() == [1, 1]
    finally:
        inp.close()
