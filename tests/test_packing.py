"""lrmjax.train.packing: the packer against a numpy check of its arrays, packed forwards
against each sequence's own forward, and packed updates against padded ones (loss and
gradient) for every aggregation mode, with gradient accumulation and on 8 data shards."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import read_metrics, small_config

from lrmjax import parallel
from lrmjax.models import heads, presets, transformer
from lrmjax.rewards import base as reward_base
from lrmjax.rl import aggregation, algorithms
from lrmjax.tokenizers import length_buckets
from lrmjax.train import packing, steps
from lrmjax.train import state as state_lib

CFG = presets.get("tiny", num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, vocab_size=40, max_seq_len=64)
P, R, T = 6, 10, 24   # prompt and response slots; packed rows of 24 tokens
N = 16                # sequences: 2 microbatches x 8 data shards
N_UPDATE = 32         # sequences of the update tests: 14 rows of 16 tokens, 2 blocks of 8


def _mask(n: int = N, seed: int = 0) -> np.ndarray:
    """Left-padded prompts of 1..P tokens and right-padded responses of 0..R, long-tailed,
    with an empty response and a sequence that fills its P + R slots."""
    rng = np.random.default_rng(seed)
    p = rng.integers(1, P + 1, n)
    r = np.minimum(np.round(rng.lognormal(np.log(3), 0.9, n)), R).astype(int)
    p[0], r[0], r[1] = P, R, 0
    return np.concatenate([np.arange(P)[None] >= (P - p)[:, None],
                           np.arange(R)[None] < r[:, None]], axis=1)


def _tokens(mask: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(mask, rng.integers(1, CFG.vocab_size, mask.shape), 0).astype(np.int32)


@functools.cache
def _params(seed: int = 0):
    return transformer.init_params(CFG, jax.random.key(seed))


def _device_plan(mask):
    return {k: jnp.asarray(v) for k, v in packing.plan(mask, P, T).arrays().items()}


# ------------------------------------------------------------------------------ the packer


def test_first_fit_decreasing_by_hand():
    # Longest first: 5 -> row 0; 4 -> row 1; 3 -> row 1 (4+3 = 7); 3 -> row 2; 2 -> row 0
    # (5+2); 2 -> row 2 (3+2); 1 -> row 2; the empty item takes no room.
    row, offset, rows = packing.first_fit_decreasing(np.array([5, 4, 3, 3, 2, 2, 1, 0]), 7)
    assert rows == 3
    assert row.tolist() == [0, 1, 1, 2, 0, 2, 2, 0]
    assert offset.tolist() == [0, 0, 4, 0, 5, 3, 5, 0]
    with pytest.raises(ValueError, match="train.pack_tokens"):
        packing.first_fit_decreasing(np.array([3, 8]), 7)


def test_row_buckets_are_four_per_octave_in_multiples_of_the_divisor():
    assert length_buckets(40, 1, 4) == (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28,
                                        32, 40)
    assert length_buckets(2048) == (16, 32, 64, 128, 256, 512, 1024, 2048)  # unchanged
    assert packing.row_buckets(20, 8) == (8, 16, 24)
    for need in range(1, 200):
        got = min(b for b in packing.row_buckets(200, 1) if b >= need)
        assert got <= max(need * 1.25, need + 1), need


@pytest.mark.parametrize("rows_per_block,multiple", [(0, 1), (0, 8), (3, 1), (8, 8)])
def test_plan_places_every_token_once_in_its_segment(rows_per_block, multiple):
    """A numpy check of every array of the plan against the mask it packs."""
    mask = _mask()
    tokens = _tokens(mask)
    flat = tokens.reshape(-1)
    pl = packing.plan(mask, P, T, rows_per_block, multiple)
    rows, blocks, L = pl.rows, pl.blocks, P + R
    assert pl.gather.shape == pl.segments.shape == pl.positions.shape == (rows, blocks, T)
    assert pl.tokens == mask.sum() and pl.slots == blocks * rows * T
    src = pl.gather.transpose(1, 0, 2)              # [blocks, rows, T]
    seg = pl.segments.transpose(1, 0, 2)
    pos = pl.positions.transpose(1, 0, 2)
    used = seg.reshape(blocks * rows, T).any(1)
    K = int(used.sum())                             # rows with tokens: the first K
    assert used[:K].all() and K >= -(-mask.sum() // T)
    assert rows % multiple == 0
    if rows_per_block:                              # as few blocks as hold K rows, even
        assert blocks == -(-K // rows_per_block) and rows <= rows_per_block
        even = -(-K // blocks)
        assert rows == -(-even // multiple) * multiple
    else:
        assert blocks == 1 and rows in packing.row_buckets(N, multiple)
    # Every real token exactly once.
    np.testing.assert_array_equal(np.sort(src[seg > 0]), np.flatnonzero(mask.reshape(-1)))
    assert np.all(pos[seg == 0] == 0)
    owner = {}                                      # sequence -> (block, flat slot of its start)
    for k in range(blocks):
        for r in range(rows):
            for s_id in [s_ for s_ in np.unique(seg[k, r]) if s_ > 0]:
                cols = np.flatnonzero(seg[k, r] == s_id)
                assert np.all(np.diff(cols) == 1)              # one contiguous run
                np.testing.assert_array_equal(pos[k, r, cols], np.arange(len(cols)))
                seqs = np.unique(src[k, r, cols] // L)
                assert len(seqs) == 1                          # one sequence per segment
                i = int(seqs[0])
                np.testing.assert_array_equal(flat[src[k, r, cols]], tokens[i][mask[i]])
                owner[i] = (k, r * T + cols[0])
    assert sorted(owner) == [i for i in range(N) if mask[i].any()]
    for i, (k, first) in owner.items():
        p_i, r_i = mask[i, :P].sum(), mask[i, P:].sum()
        block, start, length = pl.sequences[i]
        assert (block, length) == (k, r_i)
        assert start == first + p_i - 1               # the slot before the first response token
        blk = src[block].reshape(-1)
        for t in range(r_i):                          # ... and the one before each next token
            assert blk[start + t + 1] == i * L + P + t


def test_padded_slots_count_each_layout_by_hand():
    mask = np.array([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0],     # group 0: prompts of 2
                     [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)  # group 1: prompts of 3
    assert packing.padded_slots(mask, 3) == (16, 24)
    # Shared prompts: each group's prompt once (2 + 3 tokens) and each response but its last
    # slot (2 + 1 + 2 + 0 tokens): 2 groups x (3 + 2 x 2) slots.
    assert packing.padded_slots(mask, 3, group_size=2) == (10, 14)
    # A device mask (the RL loop's, under its transfer guard) gives the same counts.
    device_mask = jax.device_put(mask)
    with jax.transfer_guard("disallow"):
        used, total = packing.padded_slots(device_mask, 3, group_size=2)
        used1, total1 = packing.padded_slots(device_mask, 3)
    assert (int(used), total, int(used1), total1) == (10, 14, 16, 24)


def test_masks_the_packer_cannot_keep_are_refused():
    mask = _mask(4)
    holed = mask.copy()
    holed[0, P + 2] = False                           # a hole inside the response
    with pytest.raises(ValueError, match="right-padded responses; row 0"):
        packing.plan(holed, P, T)
    empty_prompt = mask.copy()
    empty_prompt[2, :P] = False                       # a response with no prompt token
    with pytest.raises(ValueError, match="row 2"):
        packing.plan(empty_prompt, P, T)


def test_config_refuses_rows_shorter_than_a_sequence():
    from lrmjax import config as config_lib

    cfg = config_lib.base_config("grpo")
    cfg.train.pack_tokens = cfg.sampling.max_prompt_len + cfg.sampling.max_new_tokens
    config_lib.validate(cfg)
    cfg.train.pack_tokens -= 1
    with pytest.raises(ValueError, match="'train.pack_tokens' = 47 is shorter than a whole"):
        config_lib.validate(cfg)
    cfg.train.pack_tokens = -1
    with pytest.raises(ValueError, match="'train.pack_tokens'"):
        config_lib.validate(cfg)


# ------------------------------------------------------------------------------ forwards


def _own_forward(cfg, params, tokens, mask) -> np.ndarray:
    """Logits [N, P+R, V] of each sequence alone: its real tokens at slots 0..n-1 of its own
    row, positions 0..n-1 (what follows them in the row, a causal model never reads)."""
    own = np.zeros_like(tokens)
    for i in range(len(tokens)):
        own[i, :mask[i].sum()] = tokens[i][mask[i]]
    logits, _ = jax.jit(transformer.Transformer(cfg).apply)(
        {"params": params}, own, np.broadcast_to(np.arange(own.shape[1]), own.shape),
        np.ones(own.shape, bool))
    return np.asarray(logits)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_packed_logits_of_each_segment_equal_its_own_forward(scan_layers):
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
    params = transformer.init_params(cfg, jax.random.key(0))
    mask = _mask(8)
    tokens = _tokens(mask)
    pl = packing.plan(mask, P, T)
    gather, segments = pl.gather[:, 0], pl.segments[:, 0]       # the one block: [rows, T]
    logits, _ = transformer.Transformer(cfg).apply(
        {"params": params}, jnp.asarray(tokens.reshape(-1)[gather]),
        jnp.asarray(pl.positions[:, 0]), jnp.asarray(segments > 0),
        segment_ids=jnp.asarray(segments))
    logits = np.asarray(logits)
    alone = _own_forward(cfg, params, tokens, mask)
    checked = 0
    for i in range(8):
        where = np.isin(gather, i * (P + R) + np.flatnonzero(mask[i])) & (segments > 0)
        np.testing.assert_allclose(logits[where], alone[i, :mask[i].sum()], rtol=1e-5,
                                   atol=1e-5)
        checked += where.sum()
    assert checked == mask.sum()


@pytest.mark.parametrize("chunk_mb", [256, 0.002])   # one pass; the head in 13-token chunks
def test_packed_logprobs_and_values_equal_padded(chunk_mb):
    mask = _mask()
    tokens, m = jnp.asarray(_tokens(mask)), jnp.asarray(mask)
    pack = _device_plan(mask)
    kw = dict(model_cfg=CFG, prompt_len=P, temperature=0.7, logits_chunk_mb=chunk_mb)
    padded = steps.response_logprobs(_params(), tokens, m, **kw)
    packed = steps.response_logprobs(_params(), tokens, m, pack, **kw)
    resp = mask[:, P:]
    np.testing.assert_allclose(np.where(resp, packed, 0), np.where(resp, padded, 0),
                               rtol=1e-5, atol=1e-6)
    assert not np.any(np.where(resp, 0, np.asarray(packed)))   # 0 off the responses
    critic = heads.init_from_policy(CFG, _params(), jax.random.key(1))
    critic["head"]["kernel"] = jax.random.normal(jax.random.key(2), (CFG.hidden_size, 1))
    v_pad = steps.response_values(critic, tokens, m, model_cfg=CFG, prompt_len=P)
    v_pack = steps.response_values(critic, tokens, m, pack, model_cfg=CFG, prompt_len=P)
    np.testing.assert_allclose(np.where(resp, v_pack, 0), np.where(resp, v_pad, 0),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ the update


def _grad_catcher() -> optax.GradientTransformation:
    """An optimizer whose state becomes the gradient it was given (and params stay): the
    train step's accumulated gradient, read without rounding through a params update."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


CATCHER = _grad_catcher()


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _alone_logprobs(params, tokens, mask) -> np.ndarray:
    """log p(response token) [N, R] from each sequence's own unpadded forward (0 off it)."""
    logp = _np_log_softmax(_own_forward(CFG, params, tokens, mask))
    out = np.zeros((len(tokens), R))
    for i in range(len(tokens)):
        seq = tokens[i][mask[i]]
        p, r = mask[i, :P].sum(), mask[i, P:].sum()
        out[i, :r] = logp[i, p - 1 + np.arange(r), seq[p:]]
    return out


@functools.cache
def _update_batch():
    mask = _mask(N_UPDATE, seed=3)
    tokens = _tokens(mask, seed=4)
    resp = mask[:, P:].astype(np.float32)
    rng = np.random.default_rng(5)
    logp = _alone_logprobs(_params(), tokens, mask).astype(np.float32)
    # Old and reference policies off the current one: ratios clip, the KL term is not 0.
    return {"tokens": tokens, "mask": mask, "loss_mask": resp,
            "advantages": (rng.normal(size=resp.shape) * resp).astype(np.float32),
            "old_logprobs": ((logp + 0.3 * rng.normal(size=logp.shape)) * resp
                             ).astype(np.float32),
            "ref_logprobs": ((logp + 0.2 * rng.normal(size=logp.shape)) * resp
                             ).astype(np.float32)}


def _algo(mode: str):
    # GRPO's clipped loss, k3 KL loss and an entropy bonus, aggregated with `mode`; Dr. GRPO's
    # constant is the configured max_new_tokens, here 13 (not R = 10, not T = 24).
    return algorithms.get("grpo", loss_agg_mode=mode, entropy_coef=0.01,
                          max_response_len_norm=13 if mode == "seq-mean-token-sum-norm"
                          else None)


@functools.cache
def _train_step(mode: str, microbatches: int):
    return jax.jit(functools.partial(steps.rl_train_step, model_cfg=CFG, algo=_algo(mode),
                                     prompt_len=P, temperature=1.0,
                                     microbatches=microbatches))


def _run(mode, microbatches, shards, packed, critic=False):
    """(metrics, accumulated actor gradient, critic gradient or None) of one train step;
    packed in blocks of `shards` rows of 16 tokens (several blocks: asserted)."""
    b = dict(_update_batch())
    if critic:
        b["old_values"] = b["returns"] = b["advantages"]
    if packed:
        pl = packing.plan(b["mask"], P, P + R, shards, shards)
        assert pl.blocks >= 2
        b["pack"] = pl.arrays()
    kw = {}
    if critic:
        kw = dict(critic_params=heads.init_from_policy(CFG, _params(), jax.random.key(1)),
                  critic_tx=CATCHER)
    state = state_lib.TrainState.create(_params(), CATCHER, kl_coef=0.04, **kw)
    mesh = parallel.make_mesh((shards, 1, 1), jax.devices()[:shards])
    batch = jax.device_put(b, parallel.batch_sharding(mesh))
    state = jax.device_put(state, parallel.replicated(mesh))
    fn = _critic_step(microbatches) if critic else _train_step(mode, microbatches)
    new, metrics = fn(state, batch)
    return (jax.device_get(metrics), jax.device_get(new.opt_state),
            jax.device_get(new.critic_opt_state) if critic else None)


def _assert_grads_close(got, want):
    """The gradient within 1e-6 of the padded one, relative in norm; each leaf within 5e-6 of
    its largest entry. fp32 sums in another order round differently in the last bits: the
    padded step itself moves by 6.6e-7 in norm (3e-6 in a leaf) between one device and 2
    microbatches over 8 shards, as the packed step does against it."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    diff = np.sqrt(sum(np.sum(np.square(np.asarray(g) - np.asarray(w)))
                       for g, w in zip(got, want, strict=True)))
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(w))) for w in want))
    assert diff <= 1e-6 * norm, diff / norm
    for g, w in zip(got, want, strict=True):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=5e-6 * np.abs(w).max())


def _np_pg_loss(mode: str) -> float:
    """The clipped policy loss aggregated with `mode` over the whole batch, in numpy from
    each sequence's own forward."""
    b = _update_batch()
    logp = _alone_logprobs(_params(), b["tokens"], b["mask"])
    m = b["loss_mask"] > 0
    ratio = np.exp(logp - b["old_logprobs"])
    adv = b["advantages"]
    loss = np.where(m, np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)), 0)
    seqs = np.any(m, 1).sum()
    return {"token-mean": loss.sum() / m.sum(),
            "token-sum": loss.sum(),
            "seq-mean-token-mean": np.sum(loss.sum(1)[m.any(1)] / m.sum(1)[m.any(1)]) / seqs,
            "seq-mean-token-sum": loss.sum() / seqs,
            "seq-mean-token-sum-norm": loss.sum() / (seqs * 13)}[mode]


@pytest.mark.parametrize("mode", sorted(aggregation.AGGREGATIONS))
@pytest.mark.parametrize("microbatches,shards", [(1, 1), (2, 8)])
def test_packed_update_equals_padded_for_every_aggregation(mode, microbatches, shards):
    """Loss and gradient of the packed batch (in several token-budget microbatches) equal
    the padded batch's (1e-6 relative), one padded microbatch on one device and 2 over 8
    data shards; the loss is the numpy objective with the global normalizer of the mode
    (Dr. GRPO: sequences x the configured constant)."""
    m_pad, g_pad, _ = _run(mode, microbatches, shards, packed=False)
    m_pack, g_pack, _ = _run(mode, microbatches, shards, packed=True)
    assert float(m_pack["actor/skipped"]) == 0.0
    # Loss terms are sums over microbatches; diagnostics (entropy, clip fractions) are means
    # over them, so they agree with one padded microbatch only.
    for k in ("actor/loss", "actor/pg_loss", "actor/kl_loss"):
        assert float(m_pack[k]) == pytest.approx(float(m_pad[k]), rel=1e-6, abs=1e-7), k
    assert float(m_pack["actor/pg_loss"]) == pytest.approx(_np_pg_loss(mode), rel=1e-5)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(g_pad)) > 1e-3
    _assert_grads_close(g_pack, g_pad)


@functools.cache
def _critic_step(microbatches: int):
    algo = algorithms.get("ppo", kl_mode="none")
    return jax.jit(functools.partial(steps.rl_train_step, model_cfg=CFG, algo=algo,
                                     prompt_len=P, temperature=1.0,
                                     microbatches=microbatches))


def test_packed_critic_update_equals_padded():
    m_pad, g_pad, c_pad = _run("token-mean", 2, 8, packed=False, critic=True)
    m_pack, g_pack, c_pack = _run("token-mean", 2, 8, packed=True, critic=True)
    for k in ("critic/loss", "critic/vf_loss", "actor/loss"):
        assert float(m_pack[k]) == pytest.approx(float(m_pad[k]), rel=1e-6, abs=1e-7), k
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(c_pad)) > 1e-4
    _assert_grads_close(c_pack, c_pad)
    _assert_grads_close(g_pack, g_pad)


# ------------------------------------------------------------------------------ the trainer


@reward_base.register("test_packing_digit_share")
def digit_share(prompts, completions, metadata):
    """The share of digits in a completion: varies across an untrained model's samples."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


@pytest.mark.slow


def test_trainer_with_packing_matches_the_padded_run(tmp_path):
    """One RL step of a small config (a critic, the KL in the reward, 2 minibatches of 2
    microbatches over 8 data shards): the same losses with `train.pack_tokens` as without
    (the same samples: same seed, same params) and the padding share logged."""
    from lrmjax.train import rl

    out = {}
    for pack in (0, 12):
        cfg = small_config("ppo", steps=1)
        cfg.reward.fns = {"test_packing_digit_share": 1.0}
        cfg.train.batch_prompts = 8
        cfg.train.minibatches = 2
        cfg.train.microbatches = 2
        cfg.train.pack_tokens = pack
        rl.train(cfg, str(tmp_path / str(pack)))
        out[pack] = read_metrics(str(tmp_path / str(pack)), keep_perf=True)[0]
    padded, packed = out[0], out[12]
    assert padded["actor/grad_norm"] > 1e-3 and padded["critic/vf_loss"] > 1e-3
    for k in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm"):
        assert packed[k] == pytest.approx(padded[k], rel=1e-4, abs=1e-6), k
    # 8 shards of 8-sequence microbatches leave little to pack here (each shard needs a row);
    # the packed share is measured in the benchmark.
    for m in (packed, padded):
        assert 0 <= m["perf/padding_fraction"] < 1
