"""lrmjax.models.heads: value/reward head shapes, zero init, init_from_policy, sequence_scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax.models import heads, presets, transformer

TINY = dict(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
            vocab_size=32, max_seq_len=32)

# Left-padded prompts (3 slots) followed by right-padded responses (4 slots).
MASK = np.array([[0, 1, 1, 1, 1, 1, 0],
                 [1, 1, 1, 1, 1, 1, 1],
                 [0, 0, 1, 1, 0, 0, 0],
                 [0, 1, 1, 1, 1, 1, 1]], bool)
TOKENS = np.where(MASK, np.arange(28).reshape(4, 7) % 31 + 1, 0).astype(np.int32)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def setup(request):
    cfg = presets.get("tiny", tie_embeddings=request.param, **TINY)
    policy = transformer.init_params(cfg, jax.random.key(0))
    return cfg, policy


def _hidden(cfg, trunk, tokens, mask):
    hidden, _ = transformer.Transformer(cfg).apply(
        {"params": trunk}, jnp.asarray(tokens), transformer.positions_from_mask(mask),
        jnp.asarray(mask), return_hidden=True)
    return np.asarray(hidden, np.float32)


def test_head_param_shapes(setup):
    cfg, _ = setup
    params = heads.init_head_params(cfg, jax.random.key(1))
    assert set(params) == {"trunk", "head"}
    assert params["head"]["kernel"].shape == (cfg.hidden_size, 1)
    assert params["head"]["bias"].shape == (1,)
    # The trunk has the transformer's params, without an LM head.
    want = {k for k in transformer.init_params(cfg, jax.random.key(0)) if k != "lm_head"}
    assert set(params["trunk"]) == want


def test_zero_initialized_head_gives_zero_values(setup):
    cfg, _ = setup
    params = heads.init_head_params(cfg, jax.random.key(1))
    values = heads.token_values(cfg, params, jnp.asarray(TOKENS), jnp.asarray(MASK))
    assert values.shape == TOKENS.shape and values.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(values), 0.0)
    scores = heads.sequence_scores(cfg, params, jnp.asarray(TOKENS), jnp.asarray(MASK))
    assert scores.shape == (4,)
    np.testing.assert_array_equal(np.asarray(scores), 0.0)


def test_init_from_policy_copies_trunk(setup):
    cfg, policy = setup
    critic = heads.init_from_policy(cfg, policy, jax.random.key(5))
    assert ("lm_head" in policy) == (not cfg.tie_embeddings)
    assert "lm_head" not in critic["trunk"]
    want = {k: v for k, v in policy.items() if k != "lm_head"}
    assert jax.tree.structure(critic["trunk"]) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(critic["trunk"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.unsafe_buffer_pointer() != b.unsafe_buffer_pointer()  # a copy, not an alias
    np.testing.assert_array_equal(np.asarray(critic["head"]["kernel"]), 0.0)
    # The critic's trunk computes the policy's hidden states.
    np.testing.assert_allclose(_hidden(cfg, critic["trunk"], TOKENS, MASK),
                               _hidden(cfg, want, TOKENS, MASK), atol=0)


def _with_random_head(cfg, policy):
    params = heads.init_from_policy(cfg, policy, jax.random.key(5))
    rng = np.random.default_rng(0)
    params["head"] = {"kernel": jnp.asarray(rng.normal(size=(cfg.hidden_size, 1)), jnp.float32),
                      "bias": jnp.asarray([0.3], jnp.float32)}
    return params


def test_token_values_are_linear_in_hidden(setup):
    cfg, policy = setup
    params = _with_random_head(cfg, policy)
    values = np.asarray(heads.token_values(cfg, params, jnp.asarray(TOKENS), jnp.asarray(MASK)))
    hidden = _hidden(cfg, params["trunk"], TOKENS, MASK)
    want = hidden @ np.asarray(params["head"]["kernel"])[:, 0] + 0.3
    assert values.shape == (4, 7)
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-5)


def test_sequence_scores_pick_last_real_token(setup):
    cfg, policy = setup
    params = _with_random_head(cfg, policy)
    values = np.asarray(heads.token_values(cfg, params, jnp.asarray(TOKENS), jnp.asarray(MASK)))
    scores = np.asarray(heads.sequence_scores(cfg, params, jnp.asarray(TOKENS),
                                              jnp.asarray(MASK)))
    last = [max(np.nonzero(row)[0]) for row in MASK]
    assert last == [5, 6, 3, 6]
    np.testing.assert_allclose(scores, [values[b, t] for b, t in enumerate(last)], rtol=1e-6)
    # And it is not simply the last column (row 0 and 2 end before it).
    assert not np.allclose(scores, values[:, -1])
