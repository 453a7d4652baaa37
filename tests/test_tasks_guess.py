"""Guess the number: the binary-search demonstration succeeds within ceil(log2(high + 1))
guesses, the environment answers it with exactly the demonstration's replies, and the
verifier reads the last guess."""

import math

import numpy as np
import pytest

from lrmjax.data.tasks import get_task
from lrmjax.data.tasks.guess import binary_search_turns
from lrmjax.envs import make_env


@pytest.mark.parametrize("high", [2, 7, 32, 100])
def test_binary_search_finds_every_secret_in_log_turns(high):
    limit = math.ceil(math.log2(high + 1))
    for secret in range(1, high + 1):
        turns = binary_search_turns(secret, high)
        guesses = [int(t[:-1]) for t, is_model in turns if is_model]
        assert guesses[-1] == secret and len(guesses) <= limit
        assert len(set(guesses)) == len(guesses)
        for (text, is_model), nxt in zip(turns[:-1], turns[1:], strict=True):
            assert is_model != nxt[1]  # guesses and replies alternate
            if is_model:
                assert nxt[0] == ("higher\n" if int(text) < secret else "lower\n")


def test_environment_replays_the_demonstration():
    task = get_task("guess_number", high=32)
    for ex in task.sample(np.random.default_rng(0), 20):
        env = make_env("guess_number", max_turns=6)
        assert env.reset(ex) == ex.prompt
        turns = ex.metadata["demonstration_turns"]
        for i in range(0, len(turns), 2):
            res = env.step(turns[i][0])
            if i + 1 < len(turns):
                assert res.observation == turns[i + 1][0] and not res.done
            else:
                assert res.done and res.reward == 1.0
        assert env.stop_strings() == ("\n",)


def test_prompts_differ_and_verify_reads_the_last_guess():
    task = get_task("guess_number", high=32)
    examples = task.sample(np.random.default_rng(1), 50)
    assert len({ex.prompt for ex in examples}) == 50
    ex = examples[0]
    secret = int(ex.answer)
    assert task.verify(ex, f"{secret}\n") == 1.0
    assert task.verify(ex, f"{secret}\n{secret % 32 + 1}\n") == 0.0
    assert task.verify(ex, "") == 0.0 and task.verify(ex, None) == 0.0
    with pytest.raises(ValueError, match="high"):
        get_task("guess_number", high=1)
