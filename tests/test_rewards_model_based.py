"""lrmjax.rewards.model_based: reward-model scorer and generative judge.

Reward-model scores are checked against a manual computation: each row run alone (no padding)
through the transformer trunk, its last hidden state dotted with a known head vector in numpy.
The judge runs a hand-built "bigram" LM whose greedy continuation is known: with every block's
output projections zeroed the residual stream carries only the token embedding, so the next
token depends only on the current one, through a lookup table we write into the LM head.
"""

from __future__ import annotations

import functools
import pickle
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax.models import heads, presets, transformer
from lrmjax.rewards.model_based import (
    DEFAULT_TEMPLATE,
    REFERENCE_TEMPLATE,
    GenerativeJudge,
    RewardModelScorer,
    parse_score,
    parse_yes_no,
)
from lrmjax.rewards.pool import RewardPool
from lrmjax.tokenizers import CharTokenizer

# ----------------------------------------------------------------------------- reward model

RM_TOK = CharTokenizer()
RM_CFG = presets.get("tiny", num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                     head_dim=16, mlp_dim=64, vocab_size=RM_TOK.vocab_size, max_seq_len=64)
PROMPTS = ["2+2=", "What is 3*3? ", "x", "Say hi: ", "1", "long prompt here, "]
COMPLETIONS = ["4", "9", "yes it is", "hi", "one two three", "ok"]
META = [{} for _ in PROMPTS]


@pytest.fixture(scope="module")
def rm_params():
    # Random trunk; the head (zero-initialized) is set to a known vector and bias.
    params = jax.jit(lambda k: heads.init_head_params(RM_CFG, k))(jax.random.key(0))
    rng = np.random.default_rng(0)
    params["head"] = {"kernel": jnp.asarray(rng.normal(size=(32, 1)), jnp.float32),
                      "bias": jnp.asarray([0.25], jnp.float32)}
    return params


@functools.partial(jax.jit, static_argnums=0)
def _trunk_hidden(cfg, trunk, tokens):
    """Final hidden states [B, T, D] of RIGHT-padded rows with positions 0..T-1: causal
    attention makes a real token's state independent of the pads after it."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, _ = transformer.Transformer(cfg).apply(
        {"params": trunk}, tokens, positions, jnp.ones(tokens.shape, bool), return_hidden=True)
    return hidden


def manual_scores(params, rows: list[list[int]], width: int = 32) -> np.ndarray:
    """Last-token hidden state of each row dotted with the head, in numpy float64."""
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    hidden = np.asarray(_trunk_hidden(RM_CFG, params["trunk"], tokens), np.float64)
    last = hidden[np.arange(len(rows)), [len(r) - 1 for r in rows]]
    kernel = np.asarray(params["head"]["kernel"], np.float64)[:, 0]
    return last @ kernel + float(params["head"]["bias"][0])


def expected_raw(params, prompts, completions):
    return manual_scores(params, [[RM_TOK.bos_id] + RM_TOK.encode(p + c)
                                  for p, c in zip(prompts, completions, strict=True)])


@pytest.fixture(scope="module")
def rm_expected(rm_params):
    return expected_raw(rm_params, PROMPTS, COMPLETIONS)


@pytest.fixture(scope="module")
def scorer(rm_params):
    # batch_size 4 with 6 rows: two chunks, the second padded with dummy rows.
    return RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=4)


def test_scores_match_manual_head(scorer, rm_expected):
    res = scorer(PROMPTS, COMPLETIONS, META)
    assert len(res.scores) == len(PROMPTS)
    np.testing.assert_allclose(res.scores, rm_expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.components["rm/raw"], rm_expected, rtol=1e-4, atol=1e-5)
    assert res.components["rm/truncated"] == [0.0] * len(PROMPTS)
    # Non-trivial: random trunk + head give distinct scores.
    assert np.ptp(rm_expected) > 1e-2


@pytest.mark.parametrize("mode", ["sigmoid", "standardize"])
def test_normalizations(rm_params, rm_expected, mode):
    s = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=8, normalize=mode)
    res = s(PROMPTS, COMPLETIONS, META)
    if mode == "sigmoid":
        want = 1.0 / (1.0 + np.exp(-rm_expected))
    else:
        want = (rm_expected - rm_expected.mean()) / rm_expected.std()
    np.testing.assert_allclose(res.scores, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.components["rm/raw"], rm_expected, rtol=1e-4, atol=1e-5)
    if mode == "standardize":
        with pytest.raises(ValueError, match="needs >= 2 rows"):
            s(PROMPTS[:1], COMPLETIONS[:1], META[:1])


def test_left_padding_invariance(scorer, rm_expected):
    # Alone (bucket 16) vs beside a row that forces the 32-wide bucket and left padding.
    alone = scorer(PROMPTS[:1], COMPLETIONS[:1], META[:1]).scores
    padded = scorer([PROMPTS[0], "a much longer prompt!"], [COMPLETIONS[0], " and more"],
                    [{}, {}]).scores
    np.testing.assert_allclose(alone[0], padded[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone[0], rm_expected[0], rtol=1e-4, atol=1e-5)


def test_batch_splitting_equivalence(rm_params, scorer):
    small = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=2)
    np.testing.assert_allclose(small(PROMPTS, COMPLETIONS, META).scores,
                               scorer(PROMPTS, COMPLETIONS, META).scores, rtol=1e-5, atol=1e-6)


def test_no_recompilation_within_a_bucket(rm_params):
    lowered = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    # batch_size 3 is used by no other test, so the first call must compile (which also
    # shows that the listener sees compilations).
    s = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=3)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        s(["ab", "c"], ["d", "efg"], [{}, {}])  # width bucket 16, one chunk
        first = len(lowered)
        # Different batch size and lengths, same width bucket (16): no new program.
        res = s(["x", "yy", "zzz"], ["1", "22", "333333"], [{}, {}, {}])
        second = len(lowered) - first
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(res.scores) == 3
    assert first >= 1 and second == 0
    assert s.num_compilations == 1


def test_left_truncation_keeps_the_end(rm_params):
    s = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=16, batch_size=2)
    long_completion = "abcdefghijklmnopqrstuvwxyz0123"
    res = s(["Q: ", "Q: "], [long_completion, "short"], [{}, {}])
    ids = RM_TOK.encode("Q: " + long_completion)
    kept = [RM_TOK.bos_id] + ids[-15:]  # BOS stays, then the last max_len - 1 tokens
    want = manual_scores(rm_params, [kept, [RM_TOK.bos_id] + RM_TOK.encode("Q: short")])
    np.testing.assert_allclose(res.scores, want, rtol=1e-4, atol=1e-5)
    assert res.components["rm/truncated"] == [1.0, 0.0]
    assert s.num_truncated == 1


def test_custom_template(rm_params):
    s = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=2,
                          template="Q:{prompt}\nA:{completion}")
    res = s(["1+1"], ["2"], [{}])
    want = manual_scores(rm_params, [[RM_TOK.bos_id] + RM_TOK.encode("Q:1+1\nA:2")])
    np.testing.assert_allclose(res.scores, want, rtol=1e-4, atol=1e-5)


def test_scorer_in_process_only(scorer, rm_expected):
    with pytest.raises(TypeError, match="num_workers=0"):
        pickle.dumps(scorer)
    with pytest.raises(TypeError, match="num_workers=0"):
        RewardPool(scorer, num_workers=1)
    with RewardPool(scorer, num_workers=0) as pool:
        scores, metrics, comps = pool.score(PROMPTS[:2], COMPLETIONS[:2], META[:2])
    np.testing.assert_allclose(scores, rm_expected[:2], rtol=1e-4, atol=1e-5)
    assert metrics["reward/errors"] == 0.0 and "rm/truncated" in comps


def test_scorer_validation(rm_params):
    with pytest.raises(ValueError, match="unknown fields"):
        RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, template="{prompt}{answer}")
    with pytest.raises(ValueError, match="completion"):
        RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, template="{prompt}")
    with pytest.raises(ValueError, match="normalize"):
        RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, normalize="softmax")
    with pytest.raises(ValueError, match="max_len"):
        RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=65)
    assert RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32)([], [], []).scores == []


# ----------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text, want", [
    ("yes", 1.0), ("No.", 0.0), ("YES, it is", 1.0), ("  no, yes", 0.0),
    ("The answer: Yes!", 1.0), ("yesterday maybe", None), ("not sure", None), ("", None),
    ("nothing. no", 0.0),
])
def test_parse_yes_no(text, want):
    assert parse_yes_no(text) == want


@pytest.mark.parametrize("text, want", [
    ("Score: 7/10", 0.7), ("score:3/4", 0.75), ("SCORE 8", 0.8), ("Score: 0.5/1", 0.5),
    ("Score: 12/10", None), ("Score: 3/0", None), ("no score here", None),
    ("Final score = 10", 1.0),
])
def test_parse_score(text, want):
    got = parse_score(text)
    assert got == pytest.approx(want) if want is not None else got is None


def test_parse_score_scale():
    assert parse_score("Score: 4", scale=5) == pytest.approx(0.8)


# ----------------------------------------------------------------------------- judge

J_TOK = CharTokenizer(string.ascii_lowercase + string.ascii_uppercase + " :.,?!#\n")
J_DIM = 64
assert J_TOK.vocab_size <= J_DIM  # one-hot embeddings need D >= V
J_CFG = presets.get("tiny", num_layers=1, hidden_size=J_DIM, num_heads=1, num_kv_heads=1,
                    head_dim=8, mlp_dim=8, vocab_size=J_TOK.vocab_size, max_seq_len=128,
                    tie_embeddings=False)
# Next-token table. A response ending in '!' is judged "yes", in '?' "no", in '.' "hm"
# (unparsable); after ',' the first verdict token is a fair coin between 'y' and 'n'.
BIGRAM = {"!": "y", "y": "e", "e": "s", "?": "n", "n": "o", ".": "h", "h": "m"}
COIN = ","


@pytest.fixture(scope="module")
def judge_params():
    params = jax.jit(lambda k: transformer.init_params(J_CFG, k))(jax.random.key(2))
    layer = params["layers_0"]
    layer["attn"]["o_proj"]["kernel"] = jnp.zeros_like(layer["attn"]["o_proj"]["kernel"])
    layer["mlp"]["down_proj"]["kernel"] = jnp.zeros_like(layer["mlp"]["down_proj"]["kernel"])
    V = J_TOK.vocab_size
    # Embedding: 10 * one-hot, so the final RMSNorm (scale 1) gives sqrt(D) * one-hot = 8 e_x.
    params["embed"]["embedding"] = jnp.asarray(10.0 * np.eye(V, J_DIM), jnp.float32)
    params["final_norm"]["scale"] = jnp.ones((J_DIM,), jnp.float32)
    W = np.zeros((J_DIM, V), np.float32)
    W[:V, J_TOK.eos_id] = 50.0  # default: stop (logit 400 vs 0: greedy and sampling agree)
    for cur, nxt in BIGRAM.items():
        W[J_TOK.token_id(cur)] = 0.0
        W[J_TOK.token_id(cur), J_TOK.token_id(nxt)] = 50.0
    W[J_TOK.token_id(COIN)] = 0.0
    W[J_TOK.token_id(COIN), [J_TOK.token_id("y"), J_TOK.token_id("n")]] = 50.0
    params["lm_head"]["kernel"] = jnp.asarray(W)
    return params


TAIL = "Q: {question}\nR: {response}"  # the prompt ends with the response's last character


def test_bigram_model_is_what_we_built(judge_params):
    # Independent check of the construction: the plain forward pass's argmax follows BIGRAM.
    ids = [J_TOK.bos_id] + J_TOK.encode("ok!yes?no.hm")
    forward = jax.jit(lambda p, t: transformer.Transformer(J_CFG).apply(
        {"params": p}, t, jnp.arange(t.shape[1])[None], jnp.ones(t.shape, bool))[0])
    logits = forward(judge_params, jnp.asarray([ids]))
    got = np.asarray(logits)[0].argmax(-1)
    for i, tok in enumerate(ids[1:]):
        ch = J_TOK.decode([tok])
        want = J_TOK.token_id(BIGRAM[ch]) if ch in BIGRAM else J_TOK.eos_id
        assert got[i + 1] == want, (ch, got[i + 1], want)


def test_judge_greedy_verdicts(judge_params):
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK, template=TAIL, batch_size=2)
    completions = ["great!", "bad?", "hmm.", "ok!", "Nope?"]
    res = judge(["a", "b", "c", "d", "e"], completions, [{}] * 5)
    assert judge.last_verdicts == [["yes"], ["no"], ["hm"], ["yes"], ["no"]]
    assert res.scores == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert res.components["judge/unparsed"] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert res.components["judge/truncated"] == [0.0] * 5
    assert judge.sampler.num_compilations == 1  # three chunks of 2 rows, one program


def test_judge_truncates_long_prompts_from_the_left(judge_params):
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK, template=TAIL, max_prompt_len=16,
                            batch_size=2)
    res = judge(["a very long question that does not fit", "hi"], ["sure!", "no?"], [{}, {}])
    assert res.scores == [1.0, 0.0]  # the verdict comes from the kept end of the prompt
    assert res.components["judge/truncated"] == [1.0, 0.0]


def test_judge_custom_parser(judge_params):
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK, template=TAIL, batch_size=2,
                            parser=lambda t: {"hm": 0.5, "yes": 1.0}.get(t))
    res = judge(["a", "b"], ["x.", "y?"], [{}, {}])
    assert res.scores == [0.5, 0.0]
    assert res.components["judge/unparsed"] == [0.0, 1.0]


def test_judge_majority_of_k(judge_params):
    k = 8
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK, template=TAIL, k=k, batch_size=4,
                            seed=3)
    res = judge(["a", "b", "c"], ["maybe,", "sure!", "nah?"], [{}] * 3)
    coin = judge.last_verdicts[0]
    assert len(coin) == k and set(coin) <= {"yes", "no"}
    assert 0 < coin.count("yes") < k  # a fair coin over k draws
    assert res.scores[0] == pytest.approx(coin.count("yes") / k)
    assert res.scores[1:] == [1.0, 0.0]
    assert judge.last_verdicts[1] == ["yes"] * k and judge.last_verdicts[2] == ["no"] * k
    assert res.components["judge/unparsed"] == [0.0, 0.0, 0.0]
    # Reproducible: a fresh judge with the same seed draws the same verdicts.
    again = GenerativeJudge(J_CFG, judge_params, J_TOK, template=TAIL, k=k, batch_size=4,
                            seed=3)
    again(["a", "b", "c"], ["maybe,", "sure!", "nah?"], [{}] * 3)
    assert again.last_verdicts == judge.last_verdicts


def test_judge_rendering(judge_params):
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK)
    assert judge.render("What is 2+2?", "4", {}) == (
        "Question: What is 2+2?\nResponse: 4\nIs the response correct? Answer yes or no.\n")
    assert DEFAULT_TEMPLATE.format(question="q", response="r") == judge.render("q", "r", {})
    # metadata["question"] (the raw question) wins over the chat-formatted policy prompt.
    assert judge.render("<chat>q", "r", {"question": "q"}).startswith("Question: q\n")

    ref = GenerativeJudge(J_CFG, judge_params, J_TOK, template=REFERENCE_TEMPLATE)
    assert ref.uses_reference
    text = ref.render("Q?", "five", {"answer": 5})
    assert "Question: Q?" in text and "Reference answer: 5" in text and "Response: five" in text
    with pytest.raises(KeyError, match="row 3.*answer"):
        ref.render("Q?", "five", {}, row=3)

    jin = GenerativeJudge(J_CFG, judge_params, J_TOK, syntax="jinja",
                          template="{{ question }}|{{ response | upper }}|{{ reference }}")
    assert jin.uses_reference
    assert jin.render("q", "r", {"answer": "a"}) == "q|R|a"


def test_judge_validation(judge_params):
    with pytest.raises(ValueError, match="unknown fields"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, template="{question}{response}{gold}")
    with pytest.raises(ValueError, match="response"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, template="{question}")
    with pytest.raises(ValueError, match="unknown fields"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, syntax="jinja", template="{{ gold }}")
    with pytest.raises(ValueError, match="temperature"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, k=4, temperature=0.0)
    with pytest.raises(ValueError, match="parser"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, parser="likert")
    with pytest.raises(ValueError, match="chat template"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, chat=True)
    with pytest.raises(ValueError, match="max_prompt_len"):
        GenerativeJudge(J_CFG, judge_params, J_TOK, max_prompt_len=125)


def test_judge_in_process_only(judge_params):
    judge = GenerativeJudge(J_CFG, judge_params, J_TOK)
    with pytest.raises(TypeError, match="num_workers=0"):
        pickle.dumps(judge)


def test_scorer_on_a_mesh_matches_single_device(rm_params, rm_expected):
    from lrmjax import parallel

    mesh = parallel.make_mesh((-1, 1, 1))  # 8 faked CPU devices on the data axis
    with pytest.raises(ValueError, match="batch divisor"):
        RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=4, mesh=mesh)
    s = RewardModelScorer(RM_CFG, rm_params, RM_TOK, max_len=32, batch_size=8, mesh=mesh)
    np.testing.assert_allclose(s(PROMPTS, COMPLETIONS, META).scores, rm_expected, rtol=1e-4,
                               atol=1e-5)
