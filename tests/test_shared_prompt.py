"""The shared-prompt forward (`steps.grouped_hidden`): each group's prompt runs once.

References: log-probs from one full forward per row (as tests/test_steps.py computes them),
and the update of the same batch without sharing (SGD at lr 1: the update is the gradient).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrmjax import config as config_lib
from lrmjax import parallel
from lrmjax.models import presets, sharding, transformer
from lrmjax.rl import algorithms
from lrmjax.sampling import Rollout
from lrmjax.train import rollouts, steps
from lrmjax.train import state as state_lib

CFG = presets.get("tiny", num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, vocab_size=40, max_seq_len=32)
P, R, N_PER = 5, 4, 2
PROMPT_LEN = np.array([5, 2, 3, 1])          # B = 4 prompts, left padded
RESP_LEN = np.array([4, 1, 3, 2, 4, 4, 1, 2])  # N = 8 responses, right padded


def _batch(seed=0, resp_len=RESP_LEN, r=R):
    rng = np.random.default_rng(seed)
    prompt_mask = np.arange(P)[None] >= (P - PROMPT_LEN)[:, None]
    prompts = np.where(prompt_mask, rng.integers(1, CFG.vocab_size, (len(PROMPT_LEN), P)), 0)
    resp_mask = np.arange(r)[None] < resp_len[:, None]
    resp = np.where(resp_mask, rng.integers(1, CFG.vocab_size, (len(resp_len), r)), 0)
    tokens = np.concatenate([np.repeat(prompts, N_PER, 0), resp], 1).astype(np.int32)
    mask = np.concatenate([np.repeat(prompt_mask, N_PER, 0), resp_mask], 1)
    return tokens, mask, resp_mask


def _full_forward_logprobs(cfg, params, tokens, mask):
    logits, _ = transformer.Transformer(cfg).apply(
        {"params": params}, jnp.asarray(tokens), transformer.positions_from_mask(mask),
        jnp.asarray(mask))
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    r = tokens.shape[1] - P
    return np.array([[logp[i, P + t - 1, tokens[i, P + t]] for t in range(r)]
                     for i in range(tokens.shape[0])])


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full")])
def test_grouped_logprobs_match_one_full_forward_per_row(scan, remat):
    cfg = dataclasses.replace(CFG, scan_layers=scan, remat=remat)
    params = transformer.init_params(cfg, jax.random.key(1))
    tokens, mask, resp_mask = _batch()
    got = steps.response_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask),
                                  model_cfg=cfg, prompt_len=P, group_size=N_PER)
    want = _full_forward_logprobs(cfg, params, tokens, mask)
    np.testing.assert_allclose(np.where(resp_mask, np.asarray(got), 0),
                               np.where(resp_mask, want, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group,chunks", [(1, 2), (1, 8), (N_PER, 2), (N_PER, 4)])
def test_logprobs_in_row_chunks_match_one_full_forward_per_row(group, chunks):
    # train.logprob_microbatches: the rows run in slices (strided, whole groups together)
    # and come back in their own order.
    params = transformer.init_params(CFG, jax.random.key(1))
    tokens, mask, resp_mask = _batch()
    got = steps.response_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask),
                                  model_cfg=CFG, prompt_len=P, group_size=group,
                                  row_chunks=chunks)
    want = _full_forward_logprobs(CFG, params, tokens, mask)
    np.testing.assert_allclose(np.where(resp_mask, np.asarray(got), 0),
                               np.where(resp_mask, want, 0), rtol=1e-5, atol=1e-5)


def _numpy_attention(q, k, v, visible):
    """Reference softmax attention in float64: q [T, H, d], k/v [T, K, d], visible [T, T]
    -> [T, H, d]; query head h reads KV head h // (H / K)."""
    H, K = q.shape[1], k.shape[1]
    out = np.zeros(q.shape)
    for h in range(H):
        s = q[:, h] @ k[:, h // (H // K)].T / np.sqrt(q.shape[-1])
        s = np.where(visible, s, -1e300)  # fully masked rows: uniform, not compared
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, h // (H // K)]
    return out


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_grouped_attention_matches_each_rows_own_attention(heads, kv_heads):
    """Each response, attended with its prompt as one separate row (numpy, float64), gives
    the grouped output at its slots; the prompt's own slots match the prompt alone."""
    B, n, Pl, Rl, d = 2, 3, 4, 5, 8
    T = Pl + n * Rl
    rng = np.random.default_rng(heads + kv_heads)
    q = rng.normal(size=(B, T, heads, d))
    k, v = rng.normal(size=(2, B, T, kv_heads, d))
    mask = np.ones((B, T), bool)
    mask[0, :2] = False                                  # left padded prompt
    mask[1, Pl + 3:Pl + Rl] = False                      # a short first response
    got = np.asarray(transformer.grouped_attention(
        *(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask), Pl, n))
    for b in range(B):
        for i in range(n):
            slots = np.r_[0:Pl, Pl + i * Rl:Pl + (i + 1) * Rl]   # the row [prompt, response i]
            m = mask[b, slots]
            visible = m[None, :] & np.tri(len(slots), dtype=bool)
            want = _numpy_attention(q[b, slots], k[b, slots], v[b, slots], visible)
            real = m & visible.any(-1)
            np.testing.assert_allclose(got[b, slots][real], want[real], rtol=1e-5, atol=1e-5)


def test_one_response_token():
    params = transformer.init_params(CFG, jax.random.key(2))
    tokens, mask, resp_mask = _batch(1, resp_len=np.ones(8, int), r=1)
    got = steps.response_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask),
                                  model_cfg=CFG, prompt_len=P, group_size=N_PER)
    np.testing.assert_allclose(np.asarray(got), _full_forward_logprobs(CFG, params, tokens, mask),
                               rtol=1e-5, atol=1e-5)


def test_rows_that_are_not_whole_groups_are_an_error():
    tokens, mask, _ = _batch()
    with pytest.raises(ValueError, match="whole groups of 3"):
        steps.response_logprobs(transformer.init_params(CFG, jax.random.key(0)),
                                jnp.asarray(tokens), jnp.asarray(mask), model_cfg=CFG,
                                prompt_len=P, group_size=3)


@functools.cache
def _step(group_size, microbatches):
    return jax.jit(functools.partial(
        steps.rl_train_step, model_cfg=CFG, algo=algorithms.get("grpo"), prompt_len=P,
        temperature=1.0, microbatches=microbatches, on_policy=True, group_size=group_size))


def _rl_batch():
    tokens, mask, resp_mask = _batch(3)
    rng = np.random.default_rng(4)
    loss_mask = resp_mask.astype(np.float32)
    return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask,
            "advantages": (rng.normal(size=loss_mask.shape) * loss_mask).astype(np.float32),
            "sampler_logprobs": np.zeros_like(loss_mask), "old_logprobs": np.zeros_like(loss_mask),
            "ref_logprobs": (-2 + 0.3 * rng.normal(size=loss_mask.shape)).astype(np.float32),
            "returns": np.zeros_like(loss_mask)}


@pytest.mark.parametrize("microbatches", [1, 2])
def test_grouped_update_equals_the_unshared_update(microbatches):
    """The gradient through the repeated prompt cache sums the group's responses: with SGD
    at lr 1 the params move by the same gradient, and every metric agrees."""
    params = transformer.init_params(CFG, jax.random.key(5))
    batch = jax.tree.map(jnp.asarray, _rl_batch())
    out = {}
    for g in (1, N_PER):
        state = state_lib.TrainState.create(params, optax.sgd(1.0), kl_coef=0.04)
        out[g] = _step(g, microbatches)(state, batch)
    (s1, m1), (s2, m2) = out[1], out[N_PER]
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(s1.params), jax.tree.leaves(params), strict=True))
    assert moved > 1e-3
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6, rtol=0)
    for k in m1:
        assert float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-4, abs=1e-6), k


def test_sharded_grouped_logprobs_equal_single_device():
    """Prompts split over 4 batch shards (2 groups of 2 rows per device), params over the
    tensor axis: the same log-probs as one device without sharing."""
    mesh = parallel.make_mesh((2, 2, 2))
    params = transformer.init_params(CFG, jax.random.key(6))
    tokens, mask, resp_mask = _batch(7)
    fn = jax.jit(functools.partial(steps.response_logprobs, model_cfg=CFG, prompt_len=P,
                                   group_size=N_PER),
                 in_shardings=(sharding.param_shardings(CFG, mesh),
                               parallel.batch_sharding(mesh), parallel.batch_sharding(mesh)))
    got = fn(params, tokens, mask)
    want = steps.response_logprobs(params, jnp.asarray(tokens), jnp.asarray(mask),
                                   model_cfg=CFG, prompt_len=P)
    np.testing.assert_allclose(np.where(resp_mask, np.asarray(got), 0),
                               np.where(resp_mask, np.asarray(want), 0), rtol=1e-5, atol=1e-5)


def test_group_sizes_follow_the_config_and_the_mesh():
    c = config_lib.base_config("grpo")
    c.sampling.n, c.train.batch_prompts = 4, 8
    mesh = parallel.make_mesh((2, 1, 1), jax.devices()[:2])
    assert steps.shared_prompt_groups(c, mesh) == (4, 4)
    c.train.microbatches = 2                     # 4 prompts a microbatch, 2 a device
    assert steps.shared_prompt_groups(c, mesh) == (4, 4)
    c.train.microbatches = 8                     # 1 prompt a microbatch: not over 2 devices
    assert steps.shared_prompt_groups(c, mesh) == (4, 1)
    c.train.microbatches, c.train.minibatches = 1, 2   # minibatches shuffle the rows
    assert steps.shared_prompt_groups(c, mesh) == (4, 1)
    c.train.minibatches, c.train.batch_prompts = 1, 3  # 3 prompts do not split over 2
    assert steps.shared_prompt_groups(c, mesh) == (1, 1)
    c.train.batch_prompts, c.train.shared_prompt_forward = 8, False
    assert steps.shared_prompt_groups(c, mesh) == (1, 1)


def test_rollouts_that_are_not_groups_are_refused():
    tokens, mask, _ = _batch()
    roll = Rollout(prompt_tokens=tokens[:, :P], prompt_mask=mask[:, :P],
                   response_tokens=tokens[:, P:], response_mask=mask[:, P:],
                   logprobs=np.zeros((8, R)), lengths=RESP_LEN, finish_reason=np.zeros(8),
                   group_ids=np.repeat(np.arange(4), 2))
    rollouts.check_groups_share_prompts(roll, N_PER)
    swapped = roll.replace(prompt_tokens=roll.prompt_tokens[[0, 2, 1, 3, 4, 5, 6, 7]])
    with pytest.raises(RuntimeError, match="not groups of 2 rows"):
        rollouts.check_groups_share_prompts(swapped, N_PER)


def test_a_grouped_forward_takes_no_cache():
    params = transformer.init_params(CFG, jax.random.key(0))
    x = jnp.ones((1, P + N_PER * 2), jnp.int32)
    with pytest.raises(ValueError, match="no KV cache"):
        transformer.Transformer(CFG, groups=(P, N_PER)).apply(
            {"params": params}, x, jnp.zeros_like(x), x > 0,
            transformer.init_cache(CFG, 1, x.shape[1]))
