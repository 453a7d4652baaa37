"""Tests for lrmjax.data.tasks: generators, verifiers, the device reward, reasoning-gym adapter."""

import json
import re

import jax
import numpy as np
import pytest

from lrmjax.data.tasks import (
    TASKS,
    ArithmeticTask,
    CountdownTask,
    Example,
    ReasoningGymTask,
    available_datasets,
    evaluate_expression,
    get_task,
    verify_example,
)
from lrmjax.data.tasks.arithmetic_device import arithmetic_device_reward, encode_answers
from lrmjax.data.tasks.countdown import UnsafeExpression
from lrmjax.tokenizers import CharTokenizer

# ---------------------------------------------------------------------------------------------
# Registry


def test_registry_unknown_name_lists_valid():
    names = ["arithmetic", "corpus_qa", "countdown", "guess_number", "reasoning_gym",
             "scratchpad_arithmetic", "tool_arithmetic"]
    with pytest.raises(ValueError, match=".*".join(names)):
        get_task("no_such_task")
    assert set(TASKS) == set(names)


@pytest.mark.parametrize("name,kwargs", [
    ("arithmetic", {"digits": 3, "ops": ["+", "*"]}),
    ("countdown", {"num_numbers": 3}),
    ("reasoning_gym", {"name": "chain_sum", "size": 20, "seed": 3}),
    ("scratchpad_arithmetic", {"digits": 3, "max_pad": 5, "reverse_answer": True}),
])
def test_generation_is_deterministic(name, kwargs):
    task = get_task(name, **kwargs)
    a = task.sample(np.random.default_rng(7), 6)
    b = task.sample(np.random.default_rng(7), 6)
    c = task.sample(np.random.default_rng(8), 6)
    assert a == b
    assert [e.prompt for e in a] != [e.prompt for e in c]
    # Each example alone is reproducible from its seed; its task from its metadata.
    assert task.example(a[2].metadata["seed"]) == a[2]
    rebuilt = TASKS[a[0].metadata["task"]](**a[0].metadata["task_kwargs"])
    assert rebuilt.sample(np.random.default_rng(7), 6) == a
    json.dumps([e.metadata for e in a])  # Metadata must be storable.


# ---------------------------------------------------------------------------------------------
# Arithmetic

_PROMPT = re.compile(r"^(\d+)([+\-*])(\d+)=$")


def _reference(prompt: str) -> int:
    a, op, b = _PROMPT.fullmatch(prompt).groups()
    a, b = int(a), int(b)
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("reverse", [False, True])
def test_arithmetic_answers_match_independent_computation(reverse):
    task = ArithmeticTask(digits=4, ops="+-*", reverse_answer=reverse)
    for ex in task.sample(np.random.default_rng(0), 200):
        value = _reference(ex.prompt)
        assert value >= 0
        expected = str(value)[::-1] if reverse else str(value)
        assert ex.answer == expected
        assert task.verify(ex, expected) == 1.0
        assert task.verify(ex, f"  {expected}\n") == 1.0
        wrong = str(value + 1)[::-1] if reverse else str(value + 1)
        assert task.verify(ex, wrong) == 0.0


def test_arithmetic_digits_and_prompt_length():
    for digits in range(1, 11):
        task = ArithmeticTask(digits=digits, ops="+-*")
        exs = task.sample(np.random.default_rng(digits), 50)
        operands = [int(x) for e in exs for x in re.findall(r"\d+", e.prompt)]
        assert max(len(str(x)) for x in operands) <= digits
        assert all(len(e.prompt) < 24 for e in exs)
        assert all(e.metadata["difficulty"] == digits for e in exs)
    assert ArithmeticTask(digits=2).with_difficulty(5).digits == 5
    with pytest.raises(ValueError, match="digits"):
        ArithmeticTask(digits=11)
    with pytest.raises(ValueError, match="ops"):
        ArithmeticTask(ops="+/")


@pytest.mark.parametrize("kwargs, bound", [
    ({"digits": 3, "min_digits": 3, "reverse_answer": True}, 4),   # the demo: 999 + 999 = 1998
    ({"digits": 2, "ops": "+-*"}, 4),                                # 99 * 99 = 9801
    ({"digits": 4, "ops": "-"}, 4),                                  # 9999 - 0
    ({"digits": 3, "min_digits": 3, "ops": "-"}, 3),                 # 999 - 100
    ({"digits": 1, "ops": "+-"}, 2),                                 # 9 + 9 = 18
])
def test_arithmetic_max_answer_chars_is_the_longest_generated(kwargs, bound):
    # Two-digit operands: few enough values that 20,000 draws reach the extremes; the others
    # reach their longest results often (every 4-digit sum of two 3-digit numbers, ...).
    task = ArithmeticTask(**kwargs)
    exs = task.sample(np.random.default_rng(0), 20_000)
    assert task.max_answer_chars() == bound == max(len(e.answer) for e in exs)
    # In tokens too: one character is one token of the char tokenizer.
    assert max(len(CharTokenizer().encode(e.answer)) for e in exs) == bound


def test_arithmetic_verifier_is_strict():
    task = ArithmeticTask(digits=3, ops="+")
    ex = Example("120+459=", "579", {"result": 579})
    for bad in ["", "   ", "0579", "+579", "579.0", "57 9", "579a", "5.79e2", "-579", "abc",
                "579\n580", None, 579]:
        assert task.verify(ex, bad) == 0.0, bad
    rev = ArithmeticTask(digits=3, ops="+", reverse_answer=True)
    ex = Example("90+10=", "001", {"result": 100})
    assert rev.verify(ex, "001") == 1.0
    assert rev.verify(ex, "100") == 0.0
    assert rev.verify(ex, "0010") == 0.0  # "0100" un-reversed: a leading zero.


def test_device_reward_agrees_with_text_verifier():
    tok = CharTokenizer()
    rng = np.random.default_rng(0)
    task = ArithmeticTask(digits=3, ops="+-*", reverse_answer=True)
    examples = task.sample(rng, 64)
    digit_ids = [tok.token_id(c) for c in "0123456789"]
    space, newline = tok.token_id(" "), tok.token_id("\n")
    r_len = 12
    responses, masks, refs = [], [], []
    for ex in examples:
        ans = tok.encode(ex.answer)
        wrong_digit = list(ans)
        wrong_digit[0] = digit_ids[(digit_ids.index(ans[0]) + 1) % 10]
        variants = [
            ans, ans + [tok.EOS] + digit_ids[:3], [space] + ans + [newline], ans[:-1] or [space],
            wrong_digit, ans + [digit_ids[0]], [tok.PAD] + ans, ans[:1] + [space] + ans[1:],
            [], [tok.EOS] + ans, [newline, tok.BOS] + ans + [space, tok.EOS, space],
            list(rng.choice(digit_ids, size=rng.integers(1, 5))),
        ]
        for v in variants:
            v = v[:r_len]
            row = np.zeros(r_len, np.int32)
            row[:len(v)] = v
            # Random junk after the response, hidden by the mask.
            mask = np.arange(r_len) < len(v)
            row[len(v):] = rng.integers(3, tok.vocab_size, size=r_len - len(v))
            responses.append(row)
            masks.append(mask)
            refs.append(ex)
    responses, masks = np.stack(responses), np.stack(masks)
    text_rewards = np.array([task.verify(ex, tok.decode(r[m]))
                             for ex, r, m in zip(refs, responses, masks, strict=True)])
    a_tok, a_mask = encode_answers([ex.answer for ex in refs], tok)
    device = jax.jit(arithmetic_device_reward)(responses, masks, a_tok, a_mask)
    assert device.shape == (len(refs),) and device.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(device), text_rewards)
    assert 0.2 < text_rewards.mean() < 0.8  # Both outcomes are exercised.


def test_encode_answers_layout():
    tok = CharTokenizer()
    tokens, mask = encode_answers(["12", "3"], tok)
    np.testing.assert_array_equal(tokens, [[tok.token_id("1"), tok.token_id("2")],
                                           [tok.token_id("3"), tok.PAD]])
    np.testing.assert_array_equal(mask, [[True, True], [True, False]])
    with pytest.raises(ValueError, match="more than"):
        encode_answers(["123"], tok, length=2)


# ---------------------------------------------------------------------------------------------
# Countdown


def test_countdown_generator_is_solvable():
    task = CountdownTask(num_numbers=4)
    for ex in task.sample(np.random.default_rng(1), 100):
        numbers, target = ex.metadata["numbers"], ex.metadata["target"]
        assert len(numbers) == 4 and all(1 <= n <= 99 for n in numbers)
        assert 1 <= target <= 999
        assert str(numbers) in ex.prompt and str(target) in ex.prompt
        # Independent check of the reference solution: uses each number once, hits the target.
        assert sorted(int(x) for x in re.findall(r"\d+", ex.answer)) == sorted(numbers)
        assert re.fullmatch(r"[\d+\-*/() ]+", ex.answer)
        assert abs(eval(ex.answer, {"__builtins__": {}}) - target) < 1e-9  # noqa: S307
        assert task.verify(ex, f"<think>easy</think><answer>{ex.answer}</answer>") == 1.0
    assert len(CountdownTask(num_numbers=4).with_difficulty(6).example(0).metadata["numbers"]) == 6


@pytest.mark.parametrize("kwargs, bound", [
    ({"num_numbers": 3, "template": "short"}, 14),    # configs/countdown_grpo.py: "(12 + 34) * 56"
    ({"num_numbers": 4}, 21),
    ({"num_numbers": 2, "max_number": 9}, 5),
])
def test_countdown_max_answer_chars_is_the_longest_generated(kwargs, bound):
    task = CountdownTask(**kwargs)
    exs = task.sample(np.random.default_rng(0), 3000)
    assert task.max_answer_chars() == bound == max(len(e.answer) for e in exs)
    # Only "100" has 3 digits: the bound (every number 3 digits) holds but is rarely reached.
    wide = CountdownTask(num_numbers=3, max_number=100)
    assert max(len(e.answer) for e in wide.sample(np.random.default_rng(0), 300)) <= 17
    assert wide.max_answer_chars() == 17


_CD = Example("", "3 * 5 + 7", {"numbers": [3, 5, 7], "target": 22})


@pytest.mark.parametrize("completion,reward", [
    ("3 * 5 + 7", 1.0),
    ("7 + 5 * 3", 1.0),
    ("(3 * 5) + 7 = 22", 1.0),
    ("thinking...\nfirst 3*5\n3*5+7", 1.0),
    ("<answer>3*5+7</answer>", 1.0),
    ("<answer>1+1</answer> then <answer> 5*3+7 </answer>", 1.0),
    ("3 * 5 + 7 = 21", 0.0),            # Wrong stated result.
    ("3 * 5 + 7\nso the answer is 22", 0.0),  # The last line is not an expression.
    ("3 * 7 + 1", 0.0),                  # Number not given.
    ("3 * 5 + 7 + 0", 0.0),              # Extra number.
    ("3 * 5 + 7 - 3 + 3", 0.0),          # Reused number.
    ("5 * 5 - 3", 0.0),                  # Reuse and a missing number.
    ("3 * 7", 0.0),                      # Missing number.
    ("7 / (5 - 5) * 3", 0.0),            # Division by zero (and a reused number).
    ("(3 - 3) and 5", 0.0),
    ("-3 + 5 * 5", 0.0),                 # Unary minus is not allowed.
    ("3 ** 5 + 7", 0.0),
    ("15 + 7", 0.0),
    ("3 * 5 + 7.0", 0.0),
    ("0x3 * 5 + 7", 0.0),
    ("", 0.0),
    ("(3 * 5 + 7", 0.0),
    ("__import__('os').system('echo hi')", 0.0),
    ("(3).real * 5 + 7", 0.0),
    ("abs(3 * 5 + 7)", 0.0),
    (None, 0.0),
])
def test_countdown_verifier(completion, reward):
    assert CountdownTask(num_numbers=3).verify(_CD, completion) == reward


def test_countdown_exact_fractions_and_division_by_zero():
    task = CountdownTask(num_numbers=3)
    ex = Example("", "", {"numbers": [2, 3, 6], "target": 1})
    assert task.verify(ex, "2 / 6 * 3") == 1.0  # 1/3 * 3 is exactly 1.
    ex = Example("", "", {"numbers": [2, 3, 3], "target": 1})
    assert task.verify(ex, "2 / (3 - 3)") == 0.0


@pytest.mark.parametrize("expr", ["__import__('os')", "x + 1", "(1).bit_length()", "[1, 2]",
                                  "lambda: 1", "1 if 1 else 2", "1 < 2", "~1", "1 // 2", "1 % 2"])
def test_evaluate_expression_rejects_unsafe(expr):
    with pytest.raises((UnsafeExpression, SyntaxError)):
        evaluate_expression(expr)


def test_evaluate_expression_values():
    value, used = evaluate_expression("(10 - 4) / 4 * 2")
    assert value == 3 and used == [10, 4, 4, 2]


# ---------------------------------------------------------------------------------------------
# reasoning-gym adapter


def test_reasoning_gym_lists_datasets():
    names = available_datasets()
    assert {"chain_sum", "leg_counting", "spell_backward", "gcd"} <= set(names)
    with pytest.raises(ValueError, match="chain_sum"):
        ReasoningGymTask("no_such_dataset")


@pytest.mark.parametrize("name", ["chain_sum", "leg_counting", "spell_backward", "gcd"])
def test_reasoning_gym_round_trip(name):
    task = get_task("reasoning_gym", name=name, size=30, seed=5)
    examples = task.sample(np.random.default_rng(0), 5)
    for ex in examples:
        assert ex.prompt and ex.answer
        assert task.verify(ex, ex.answer) == 1.0
        assert task.verify(ex, f"<think>hm</think>\n<answer> {ex.answer} </answer>") == 1.0
        assert task.verify(ex, "<answer>definitely wrong 12345</answer>") == 0.0
        assert task.verify(ex, None) == 0.0
        # After a JSON round trip (as stored by the TFDS builder) the example still verifies.
        stored = Example(ex.prompt, ex.answer, json.loads(json.dumps(ex.metadata)))
        assert verify_example(stored, f"<answer>{ex.answer}</answer>") == 1.0


def test_reasoning_gym_answer_length_is_unknown():
    assert ReasoningGymTask("chain_sum", size=20, seed=1).max_answer_chars() is None


def test_reasoning_gym_answers_independently():
    # chain_sum's answer is the value of the expression in its question.
    task = ReasoningGymTask("chain_sum", size=20, seed=1)
    for ex in task.sample(np.random.default_rng(2), 5):
        expr = ex.prompt.split(":")[-1].rstrip("= ").strip()
        assert re.fullmatch(r"[\d+\- ]+", expr)
        assert int(ex.answer) == eval(expr, {"__builtins__": {}})  # noqa: S307
        assert task.verify(ex, str(int(ex.answer) + 1)) == 0.0


def test_reasoning_gym_partial_credit():
    ex = ReasoningGymTask("spell_backward", size=10, seed=5).example(4)
    near = ex.answer[:-1] + ("a" if ex.answer[-1] != "a" else "b")  # One letter off.
    assert ReasoningGymTask("spell_backward", size=10, seed=5).verify(ex, near) == 0.0
    partial = ReasoningGymTask("spell_backward", size=10, seed=5, partial_credit=True)
    assert 0.0 < partial.verify(ex, near) < 1.0
    assert partial.verify(ex, ex.answer) == 1.0


def test_reasoning_gym_difficulty():
    easy = ReasoningGymTask("chain_sum", size=50, seed=0, difficulty=0)
    hard = easy.with_difficulty(3)
    assert hard.difficulty == 3 and hard.config["difficulty"] == 3

    def terms(task):
        return max(len(re.findall(r"\d+", e.prompt)) for e in
                   task.sample(np.random.default_rng(0), 30))
    assert terms(easy) < terms(hard)
