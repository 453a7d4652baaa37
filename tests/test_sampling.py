"""Sampler: greedy == step-by-step argmax of full forwards, padding/sharding/n-sharing
invariance, truncated-distribution statistics, stopping, bucketing and errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax import parallel, sampling
from lrmjax.models import presets, sharding, transformer
from lrmjax.sampling import Sampler, SamplingParams

CFG = presets.ModelConfig(vocab_size=64, hidden_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=96, qkv_bias=True,
                          max_seq_len=48)
PAD, EOS = 0, 1


def _random_params(cfg, seed=0):
    """Random params from the shapes (numpy, no compile); large enough weights that the
    next-token distribution is far from uniform."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            return (1 + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
        return (rng.normal(size=x.shape) * 0.3).astype(np.float32)

    return jax.tree.map(jnp.asarray,
                        jax.tree_util.tree_map_with_path(draw, transformer.param_shapes(cfg)))


@pytest.fixture(scope="module")
def params():
    return _random_params(CFG)


@pytest.fixture(scope="module")
def sampler():
    return Sampler(CFG, pad_id=PAD, stop_ids=(), prompt_buckets=(8, 16), batch_buckets=(4, 8))


def _prompts(rows, seed=0, longest=8):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, longest + 1, rows)
    lengths[0] = longest
    seqs = [list(rng.integers(2, CFG.vocab_size, n)) for n in lengths]
    tokens = np.zeros((rows, longest), np.int32)
    mask = np.zeros((rows, longest), bool)
    for i, s in enumerate(seqs):
        tokens[i, longest - len(s):] = s
        mask[i, longest - len(s):] = True
    return tokens, mask, seqs


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, tokens):
    """Full forward of one unpadded sequence [1, T] -> last logits [V]."""
    T = tokens.shape[1]
    out, _ = transformer.Transformer(cfg).apply(
        {"params": params}, tokens, jnp.arange(T)[None], jnp.ones((1, T), bool))
    return out[0, -1]


GREEDY = SamplingParams(temperature=0.0, max_new_tokens=6)
HOT = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=6)


@pytest.fixture(scope="module")
def greedy_run(sampler, params):
    tokens, mask, seqs = _prompts(3)
    return seqs, sampler.generate(params, tokens, mask, GREEDY, jax.random.key(0))


def test_greedy_equals_argmax_of_full_forwards(params, greedy_run):
    seqs, roll = greedy_run
    for i, seq in enumerate(seqs):
        seq = list(seq)
        want, want_lp = [], []
        for _ in range(GREEDY.max_new_tokens):
            logits = np.asarray(_logits(CFG, params, jnp.asarray([seq], jnp.int32)),
                                np.float64)
            tok = int(np.argmax(logits))
            lse = np.log(np.sum(np.exp(logits - logits.max()))) + logits.max()
            want.append(tok)
            want_lp.append(logits[tok] - lse)
            seq.append(tok)
        np.testing.assert_array_equal(np.asarray(roll.response_tokens[i]), want)
        np.testing.assert_allclose(np.asarray(roll.logprobs[i]), want_lp, atol=1e-4)
    assert np.asarray(roll.response_mask).all()
    np.testing.assert_array_equal(roll.lengths, [6, 6, 6])
    np.testing.assert_array_equal(roll.finish_reason, [sampling.FINISH_LENGTH] * 3)
    np.testing.assert_array_equal(roll.group_ids, [0, 1, 2])
    toks, mask = roll.tokens()
    assert toks.shape == (3, 8 + 6) and mask.shape == (3, 14)
    np.testing.assert_array_equal(toks[:, 8:], roll.response_tokens)


@pytest.mark.parametrize("sp", [
    SamplingParams(temperature=0.7, max_new_tokens=5),          # the shared max/mass path
    SamplingParams(temperature=1.3, top_k=5, max_new_tokens=5),  # truncated: a separate lse
], ids=["T0.7", "T1.3-k5"])
def test_sampled_logprobs_are_the_tempered_untruncated_log_softmax(sampler, params, sp):
    """Rollout.logprobs = log_softmax(logits / T)[token] of a full forward over the sequence
    so far, without truncation: the distribution the trainer's forward scores."""
    tokens, mask, seqs = _prompts(3, seed=6)
    roll = sampler.generate(params, tokens, mask, sp, jax.random.key(8))
    for i, seq in enumerate(seqs):
        seq, want = list(seq), []
        for tok in np.asarray(roll.response_tokens[i]):
            z = np.asarray(_logits(CFG, params, jnp.asarray([seq], jnp.int32)),
                           np.float64) / sp.temperature
            want.append(z[tok] - z.max() - np.log(np.exp(z - z.max()).sum()))
            if sp.top_k:  # the draw itself came from the truncated distribution
                assert (z > z[tok]).sum() < sp.top_k
            seq.append(int(tok))
        np.testing.assert_allclose(np.asarray(roll.logprobs[i]), want, atol=1e-4)


@pytest.mark.parametrize("stop_ids", [(), (EOS,)], ids=["no-stop", "eos"])
def test_two_phase_decode_equals_one_loop(params, stop_ids, monkeypatch):
    """Responses of >= DECODE_PHASE_MIN tokens decode in two loops (the first over a shorter
    cache, then `KVCache.grow`): the same tokens and log-probs as one loop over the whole
    cache, also when rows stop in the first phase."""
    sp = SamplingParams(temperature=1.0, max_new_tokens=36, n=2)
    tokens, mask, _ = _prompts(3, seed=9)

    def run():
        s = Sampler(CFG, pad_id=PAD, stop_ids=stop_ids, prompt_buckets=(8,),
                    batch_buckets=(4,))
        return s.generate(params, tokens, mask, sp, jax.random.key(2))

    assert sampling._decode_phase_ends(36) == (18, 36)
    phased = run()
    monkeypatch.setattr(sampling, "DECODE_PHASE_MIN", 10**9)
    single = run()
    np.testing.assert_array_equal(phased.response_tokens, single.response_tokens)
    np.testing.assert_array_equal(phased.lengths, single.lengths)
    np.testing.assert_array_equal(phased.finish_reason, single.finish_reason)
    np.testing.assert_allclose(phased.logprobs, single.logprobs, atol=1e-5)
    if stop_ids:  # some rows stop, one of them inside the first phase
        assert (np.asarray(phased.lengths) < 18).any()


def test_extra_left_padding_does_not_change_samples(sampler, params):
    tokens, mask, _ = _prompts(3, seed=1)
    wide = np.concatenate([np.full((3, 7), PAD, np.int32), tokens], axis=1)
    wide_mask = np.concatenate([np.zeros((3, 7), bool), mask], axis=1)
    a = sampler.generate(params, tokens, mask, HOT, jax.random.key(3))
    # A longer prompt in the batch forces the 16-column bucket: 8+ more pad columns.
    longer = np.concatenate([wide, np.arange(2, 17, dtype=np.int32)[None]], axis=0)
    longer_mask = np.concatenate([wide_mask, np.ones((1, 15), bool)], axis=0)
    b = sampler.generate(params, longer, longer_mask, HOT, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(b.response_tokens[:3]), a.response_tokens)
    np.testing.assert_allclose(np.asarray(b.logprobs[:3]), a.logprobs, atol=1e-5)
    np.testing.assert_array_equal(b.prompt_tokens[:3], wide)


def test_n_per_prompt_equals_repeated_prompts(sampler, params):
    tokens, mask, _ = _prompts(2, seed=2)
    shared = sampler.generate(params, tokens, mask, HOT.__class__(**{**HOT.__dict__, "n": 3}),
                              jax.random.key(5))
    repeated = sampler.generate(params, np.repeat(tokens, 3, 0), np.repeat(mask, 3, 0), HOT,
                                jax.random.key(5))
    np.testing.assert_array_equal(shared.response_tokens, repeated.response_tokens)
    np.testing.assert_allclose(shared.logprobs, repeated.logprobs, atol=1e-5)
    np.testing.assert_array_equal(shared.group_ids, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(shared.prompt_tokens, np.repeat(tokens, 3, 0))
    # The 3 samples of a prompt are not all the same (they use different keys).
    assert len({tuple(r) for r in np.asarray(shared.response_tokens[:3])}) > 1


def test_deterministic_per_key(sampler, params):
    tokens, mask, _ = _prompts(4, seed=3)
    a = sampler.generate(params, tokens, mask, HOT, jax.random.key(7))
    b = sampler.generate(params, tokens, mask, HOT, jax.random.key(7))
    c = sampler.generate(params, tokens, mask, HOT, jax.random.key(8))
    np.testing.assert_array_equal(a.response_tokens, b.response_tokens)
    assert (np.asarray(a.response_tokens) != np.asarray(c.response_tokens)).any()


def test_stop_token_ends_the_response(params, greedy_run):
    _, free = greedy_run
    free_tokens = np.asarray(free.response_tokens)
    stop = int(free_tokens[0, 2])  # row 0 emits it at step 2 (or earlier)
    stopper = Sampler(CFG, pad_id=PAD, stop_ids=(EOS, stop), prompt_buckets=(8,),
                      batch_buckets=(4,))
    tokens, mask, _ = _prompts(3)
    roll = stopper.generate(params, tokens, mask, GREEDY, jax.random.key(0))
    for i in range(3):
        hits = np.flatnonzero(np.isin(free_tokens[i], [EOS, stop]))
        length = hits[0] + 1 if len(hits) else GREEDY.max_new_tokens
        assert int(roll.lengths[i]) == length
        np.testing.assert_array_equal(roll.response_tokens[i, :length], free_tokens[i, :length])
        assert (np.asarray(roll.response_tokens[i, length:]) == PAD).all()
        np.testing.assert_array_equal(roll.response_mask[i], np.arange(6) < length)
        assert (np.asarray(roll.logprobs[i, length:]) == 0).all()
        assert int(roll.finish_reason[i]) == (sampling.FINISH_STOP if len(hits)
                                              else sampling.FINISH_LENGTH)
    assert int(roll.lengths[0]) <= 3 and int(roll.finish_reason[0]) == sampling.FINISH_STOP


@pytest.mark.parametrize("every", [2, 4, 8])
def test_sparse_stop_checks_give_the_same_rollout(params, every):
    """Testing for "all stopped" every k steps only runs extra pad steps: the rollout is the
    one a test every step gives, with every row stopping early (stop ids = each row's second
    sampled token) and with none stopping (no stop ids)."""
    tokens, mask, _ = _prompts(4, seed=5)
    key = jax.random.key(3)
    free = Sampler(CFG, pad_id=PAD, stop_ids=(), prompt_buckets=(8,), batch_buckets=(4,))
    stops = tuple(int(t) for t in np.unique(np.asarray(
        free.generate(params, tokens, mask, HOT, key).response_tokens)[:, 1]))
    for stop_ids in (stops, ()):
        runs = [Sampler(CFG, pad_id=PAD, stop_ids=stop_ids, prompt_buckets=(8,),
                        batch_buckets=(4,), stop_check_every=k).generate(
                            params, tokens, mask, HOT, key) for k in (1, every)]
        for field in ("response_tokens", "response_mask", "lengths", "finish_reason"):
            np.testing.assert_array_equal(getattr(runs[0], field), getattr(runs[1], field))
        np.testing.assert_array_equal(runs[0].logprobs, runs[1].logprobs)
        if stop_ids:
            assert (np.asarray(runs[0].lengths) <= 2).all()


def test_stop_check_default_follows_the_batch_sharding():
    assert Sampler(CFG, pad_id=PAD, stop_ids=(EOS,)).stop_check_every == 1
    two, one = (parallel.make_mesh((k, 1, 1), jax.devices()[:k]) for k in (2, 1))
    split = Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), mesh=two)
    assert split.stop_check_every == sampling.SHARDED_STOP_CHECK
    assert Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), mesh=one).stop_check_every == 1
    with pytest.raises(ValueError, match="stop_check_every"):
        Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), stop_check_every=0)


def test_bucketing_avoids_recompiles(params):
    s = Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), prompt_buckets=(8, 16),
                batch_buckets=(4, 8))
    sp = SamplingParams(temperature=0.0, max_new_tokens=2)
    for rows, longest in [(1, 3), (3, 8), (4, 5), (2, 7)]:  # all in buckets (4, 8)
        tokens, mask, _ = _prompts(rows, seed=rows, longest=longest)
        out = s.generate(params, tokens, mask, sp, jax.random.key(0))
        assert out.response_tokens.shape == (rows, 2)
    assert s.num_compilations == 1
    tokens, mask, _ = _prompts(5, longest=8)  # batch bucket 8
    s.generate(params, tokens, mask, sp, jax.random.key(0))
    assert s.num_compilations == 2


def test_bad_inputs_are_clear_errors(sampler, params):
    tokens, mask, _ = _prompts(2, longest=16)
    long_params = SamplingParams(max_new_tokens=40)  # 48 - 40 = 8 < 16
    with pytest.raises(ValueError, match=r"16 tokens.*limit 8.*max_seq_len 48"):
        sampler.generate(params, tokens, mask, long_params, jax.random.key(0))
    tokens, mask, _ = _prompts(2, longest=20)  # largest bucket is 16
    with pytest.raises(ValueError, match=r"20 tokens.*limit 16.*bucket 16"):
        sampler.generate(params, tokens, mask, GREEDY, jax.random.key(0))
    tokens, mask, _ = _prompts(2)
    with pytest.raises(ValueError, match="left padded"):
        sampler.generate(params, tokens, mask[:, ::-1], GREEDY, jax.random.key(0))
    mask[1] = False
    with pytest.raises(ValueError, match="empty"):
        sampler.generate(params, tokens, mask, GREEDY, jax.random.key(0))
    for bad in [dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(min_p=1.0),
                dict(max_new_tokens=0), dict(n=0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="multiples"):
        Sampler(CFG, pad_id=PAD, stop_ids=(), mesh=parallel.make_mesh((2, 2, 2)),
                batch_buckets=(2, 4))


def test_sharded_sampler_equals_single_device(sampler, params):
    mesh = parallel.make_mesh((2, 2, 2))
    shardings = sharding.param_shardings(CFG, mesh)
    sharded_params = jax.device_put(params, shardings)
    s = Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), mesh=mesh, prompt_buckets=(8, 16),
                batch_buckets=(4, 8))
    tokens, mask, _ = _prompts(3, seed=4)
    sp = SamplingParams(temperature=1.0, top_k=20, max_new_tokens=6, n=2)
    got = s.generate(sharded_params, tokens, mask, sp, jax.random.key(11))
    want = Sampler(CFG, pad_id=PAD, stop_ids=(EOS,), prompt_buckets=(8, 16),
                   batch_buckets=(4, 8)).generate(params, tokens, mask, sp, jax.random.key(11))
    np.testing.assert_array_equal(got.response_tokens, want.response_tokens)
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


# ---------------------------------------------------------------------------- distributions

LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0, -5.0], np.float32)
NUM_DRAWS = 20_000


def _expected(params: SamplingParams) -> np.ndarray:
    """Reference: temperature, top-k, top-p (over the top-k renormalized probs, keeping the
    crossing token), min-p; written with explicit loops over the sorted tokens."""
    logits = LOGITS.astype(np.float64) / params.temperature
    order = np.argsort(-logits)
    keep = np.zeros(len(logits), bool)
    k = params.top_k or len(logits)
    keep[order[:k]] = True
    p = np.exp(logits - logits.max()) * keep
    p /= p.sum()
    if params.top_p < 1.0:
        mass, nucleus = 0.0, np.zeros_like(keep)
        for i in order:
            if not keep[i]:
                break
            nucleus[i] = True
            mass += p[i]
            if mass >= params.top_p:
                break
        keep &= nucleus
    p = np.exp(logits - logits.max()) * keep
    p /= p.sum()
    if params.min_p > 0:
        keep &= p >= params.min_p * p.max()
    p = np.exp(logits - logits.max()) * keep
    return p / p.sum()


@functools.partial(jax.jit, static_argnums=0)
def _draw(params, key):
    keys = jax.random.split(key, NUM_DRAWS)
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (NUM_DRAWS, len(LOGITS)))
    return sampling.sample_logits(logits, keys, params)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.5),
    SamplingParams(temperature=2.0, top_k=3),
    SamplingParams(temperature=1.0, top_p=0.6),  # 0.41 + 0.25 crosses 0.6: keeps 2 tokens
    SamplingParams(temperature=1.5, top_k=5, top_p=0.8),
    SamplingParams(temperature=1.0, min_p=0.2),
    SamplingParams(temperature=0.7, top_k=6, top_p=0.95, min_p=0.05),
], ids=lambda p: f"T{p.temperature}-k{p.top_k}-p{p.top_p}-m{p.min_p}")
def test_sample_frequencies_match_truncated_distribution(params):
    want = _expected(params)
    counts = np.bincount(np.asarray(_draw(params, jax.random.key(0))), minlength=len(LOGITS))
    freq = counts / NUM_DRAWS
    assert (counts[want == 0] == 0).all(), (freq, want)  # removed tokens never appear
    # Binomial std <= 0.0036 at 20k draws; 0.015 is > 4 std, yet every off-by-one truncation
    # or unrenormalized distribution above is off by more than 0.03 on some token.
    np.testing.assert_allclose(freq, want, atol=0.015)


def test_truncation_reference_is_sensitive():
    """The reference above distinguishes the cases (so the test can fail)."""
    base = _expected(SamplingParams(temperature=1.0))
    nucleus = _expected(SamplingParams(temperature=1.0, top_p=0.6))
    assert (nucleus > 0).sum() == 2 and np.abs(nucleus - base).max() > 0.1
    assert (_expected(SamplingParams(temperature=1.0, min_p=0.2)) > 0).sum() == 4


def test_end_to_end_frequencies(params):
    """Many samples of one token from one prompt follow the model's truncated distribution."""
    s = Sampler(CFG, pad_id=PAD, stop_ids=(), prompt_buckets=(8,), batch_buckets=(1,))
    tokens, mask, seqs = _prompts(1, seed=6)
    sp = SamplingParams(temperature=0.8, top_k=8, max_new_tokens=1, n=4000)
    roll = s.generate(params, tokens, mask, sp, jax.random.key(1))
    logits = np.asarray(_logits(CFG, params, jnp.asarray([seqs[0]], jnp.int32)), np.float64)
    top = np.argsort(-logits)[:8]
    want = np.zeros_like(logits)
    want[top] = np.exp((logits[top] - logits[top].max()) / 0.8)
    want /= want.sum()
    freq = np.bincount(np.asarray(roll.response_tokens[:, 0]), minlength=CFG.vocab_size) / 4000
    assert set(np.flatnonzero(freq)) <= set(top)
    np.testing.assert_allclose(freq, want, atol=0.03)
    # top_k=1 at any temperature is greedy.
    one = s.generate(params, tokens, mask, SamplingParams(temperature=3.0, top_k=1,
                                                          max_new_tokens=1, n=4),
                     jax.random.key(2))
    assert (np.asarray(one.response_tokens) == int(np.argmax(logits))).all()


def test_greedy_tokens_and_token_logprob_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 50)).astype(np.float32)
    logits[1, [3, 17, 40]] = 9.0           # a tie: the first index wins, as np.argmax
    logits[2] *= 1e3                       # large logits: no overflow in the logsumexp
    logits[3, [5, 9]] = np.nan             # NaN counts as the max, as in np.argmax
    tokens = sampling.greedy_tokens(jnp.asarray(logits))
    np.testing.assert_array_equal(np.asarray(tokens), np.argmax(logits, axis=-1))
    logits[3] = rng.normal(size=50)
    picks = rng.integers(0, 50, 6).astype(np.int32)
    shifted = logits - logits.max(-1, keepdims=True)
    ref = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        np.asarray(sampling.token_logprob(jnp.asarray(logits), jnp.asarray(picks))),
        ref[np.arange(6), picks], rtol=1e-5, atol=1e-5)


def _numpy_inverse_cdf(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Reference: float64 softmax, cumulative sum, first index whose sum exceeds u."""
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    c = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
    return np.array([np.searchsorted(row, ui, side="right") for row, ui in zip(c, u, strict=True)])


@pytest.mark.parametrize("vocab", [7, 50, 1000, 32000])
def test_inverse_cdf_tokens_match_numpy(vocab):
    """The two-level search picks the token a float64 cumulative sum picks (one-block, padded
    and many-block vocabularies); where u lies within float32 rounding of a boundary, the
    token's float64 CDF interval holds u up to that rounding."""
    rng = np.random.default_rng(vocab)
    logits = (rng.normal(size=(256, vocab)) * 3).astype(np.float32)
    u = rng.random(256).astype(np.float32)
    ours = np.asarray(sampling.inverse_cdf_tokens(jnp.asarray(logits), jnp.asarray(u)))
    ref = _numpy_inverse_cdf(logits, u.astype(np.float64))
    assert ((ours >= 0) & (ours < vocab)).all()
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    c = np.cumsum(p / p.sum(-1, keepdims=True), axis=-1)
    rows = np.arange(256)
    lo = np.where(ours > 0, c[rows, np.maximum(ours - 1, 0)], 0.0)
    hi = c[rows, ours]
    np.testing.assert_array_less(lo - 2e-6, u)
    np.testing.assert_array_less(u, hi + 2e-6)
    assert (ours == ref).mean() >= 0.95


def test_inverse_cdf_tokens_edge_cases():
    V = 300  # padded to 320 (blocks of 64)
    logits = np.full((6, V), -np.inf, np.float32)
    logits[0, 5] = 0.0                                  # one token: always picked
    logits[1, [10, 299]] = 1.0                          # two, the second in the last block
    logits[2] = np.linspace(0, 5, V)                    # all tokens, u close to 1
    logits[3, 17] = np.nan                              # NaN: still a valid id
    logits[4, 64:128] = 0.0                             # a middle block only
    logits[5, :] = 0.0
    logits[5, 250:] = -np.inf                           # truncated tail
    u = np.array([0.5, 0.99, 1 - 2**-24, 0.3, 0.999999, 1 - 2**-24], np.float32)
    got = np.asarray(sampling.inverse_cdf_tokens(jnp.asarray(logits), jnp.asarray(u)))
    assert got[0] == 5
    assert got[1] == 299
    assert got[2] == V - 1
    assert 0 <= got[3] < V
    assert 64 <= got[4] < 128
    assert got[5] == 249  # never a -inf token, even at u just below 1
    # u = 0 picks the first token with mass.
    zero = np.asarray(sampling.inverse_cdf_tokens(jnp.asarray(logits[[1, 4]]),
                                                  jnp.zeros(2, jnp.float32)))
    np.testing.assert_array_equal(zero, [10, 64])


def test_sampled_tokens_use_one_uniform_per_row_key():
    """sample_logits draws u = uniform(row key) and inverts the tempered CDF."""
    keys = jax.random.split(jax.random.key(1), 64)
    logits = jax.random.normal(jax.random.key(2), (64, 1000)) * 3
    ours = sampling.sample_logits(logits, keys, SamplingParams(temperature=0.5,
                                                               max_new_tokens=1))
    u = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, ()))(keys), np.float64)
    ref = _numpy_inverse_cdf(np.asarray(logits) / 0.5, u)
    assert (np.asarray(ours) == ref).mean() >= 62 / 64
