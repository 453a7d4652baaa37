"""Transformer: KV-cache decoding == full forward, left padding, scan/remat, and numpy references
for RoPE, RMSNorm and grouped-query attention."""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrmjax.models import presets, transformer
from lrmjax.models.presets import RopeScaling

_BASE = dict(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
             head_dim=16, mlp_dim=96, max_seq_len=64)
VARIANTS = {
    "qwen2": presets.ModelConfig(**_BASE, qkv_bias=True, rope_theta=1e6),
    # Qwen3: QK-norm and head_dim (24) != hidden / heads (16).
    "qwen3": presets.ModelConfig(**{**_BASE, "head_dim": 24}, qk_norm=True, rope_theta=1e6),
    # Llama-3: frequency-scaled RoPE (short original context so every band is exercised).
    "llama": presets.ModelConfig(**_BASE, tie_embeddings=False, rms_eps=1e-5,
                                 rope_scaling=RopeScaling(factor=8.0,
                                                          original_max_position_embeddings=32)),
    # GPT-NeoX-style partial rotary: the first 8 of 16 head dims rotate, the rest carry none.
    "partial": presets.ModelConfig(**_BASE, qkv_bias=True, partial_rotary_factor=0.5),
}


def _random_params(cfg, seed=0):
    """Random params from the shapes alone (numpy: no jit compile): weights ~ N(0, 0.15^2),
    norm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        name = jax.tree_util.keystr(path)
        std = 0.1 if ("scale" in name or "bias" in name) else 0.15
        return rng.normal(size=x.shape).astype(np.float32) * std + ("scale" in name)

    return jax.tree_util.tree_map_with_path(draw, transformer.param_shapes(cfg))


_init = functools.cache(_random_params)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    cfg = VARIANTS[request.param]
    return cfg, _init(cfg)


def _batch(cfg, pads=(3, 0), length=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, cfg.vocab_size, (len(pads), length)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    for i, p in enumerate(pads):
        tokens[i, :p] = 0
        mask[i, :p] = False
    return jnp.asarray(tokens), jnp.asarray(mask)


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens, mask):
    return transformer.Transformer(cfg).apply(
        {"params": params}, tokens, transformer.positions_from_mask(mask), mask)[0]


def _cached_decode(cfg, params, tokens, mask, prefill=5):
    """Prefill `prefill` columns, then one token at a time. Returns logits [B, T, V]."""
    model = transformer.Transformer(cfg)
    positions = transformer.positions_from_mask(mask)
    cache = transformer.init_cache(cfg, tokens.shape[0], tokens.shape[1] + 2)
    step = jax.jit(lambda p, t, pos, m, c: model.apply({"params": p}, t, pos, m, c))
    logits, cache = step(params, tokens[:, :prefill], positions[:, :prefill],
                         mask[:, :prefill], cache)
    out = [logits]
    for t in range(prefill, tokens.shape[1]):
        logits, cache = step(params, tokens[:, t:t + 1], positions[:, t:t + 1],
                             mask[:, t:t + 1], cache)
        out.append(logits)
    assert int(cache.index) == tokens.shape[1]
    return jnp.concatenate(out, axis=1)


def test_kv_cache_decode_matches_full_forward(variant):
    cfg, params = variant
    tokens, mask = _batch(cfg)
    full = _forward(cfg, params, tokens, mask)
    cached = _cached_decode(cfg, params, tokens, mask)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(cached)[m], np.asarray(full)[m], atol=1e-5, rtol=0)


def test_left_padding_does_not_change_logits(variant):
    cfg, params = variant
    tokens, mask = _batch(cfg, pads=(0,), length=7)
    wide_tokens = jnp.concatenate([jnp.full((1, 5), 3, jnp.int32), tokens], axis=1)
    wide_mask = jnp.concatenate([jnp.zeros((1, 5), bool), mask], axis=1)
    np.testing.assert_allclose(np.asarray(_forward(cfg, params, wide_tokens, wide_mask))[:, 5:],
                               np.asarray(_forward(cfg, params, tokens, mask)), atol=1e-5)


def test_scan_layers_and_remat_match_unrolled():
    cfg = VARIANTS["qwen2"]
    params = _init(cfg)
    scan_cfg = dataclasses.replace(cfg, scan_layers=True, remat="full")
    stacked = transformer.stack_layers(params, cfg.num_layers)
    assert jax.tree.structure(stacked) == jax.tree.structure(
        transformer.param_shapes(scan_cfg))
    tokens, mask = _batch(cfg)
    m = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(_forward(scan_cfg, stacked, tokens, mask))[m],
                               np.asarray(_forward(cfg, params, tokens, mask))[m], atol=1e-5)
    np.testing.assert_allclose(np.asarray(_cached_decode(scan_cfg, stacked, tokens, mask))[m],
                               np.asarray(_forward(cfg, params, tokens, mask))[m], atol=1e-5)

    def loss(c):
        return lambda p: jnp.sum(jnp.where(mask[..., None], _forward(c, p, tokens, mask), 0.0)
                                 ** 2)

    g_scan = transformer.unstack_layers(jax.grad(loss(scan_cfg))(stacked), cfg.num_layers)
    g_ref = jax.grad(loss(cfg))(params)
    # fp32 summation order differs between the scanned and unrolled programs.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=3e-4),
                 g_scan, g_ref)
    assert transformer.unstack_layers(stacked, cfg.num_layers).keys() == params.keys()


@pytest.mark.parametrize("scan", [False, True])
def test_every_remat_policy_gives_the_loss_and_gradient_of_none(scan):
    # Remat changes what the backward keeps, never what it computes: in fp32 every policy's
    # loss and gradient equal the plain backward's up to summation order.
    cfg = dataclasses.replace(VARIANTS["qwen2"], scan_layers=scan)
    params = _random_params(VARIANTS["qwen2"])
    if scan:
        params = transformer.stack_layers(params, cfg.num_layers)
    tokens, mask = _batch(cfg)

    def loss(c):
        def fn(p):
            logp = jax.nn.log_softmax(_forward(c, p, tokens, mask)[:, :-1], axis=-1)
            picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
            return -jnp.sum(jnp.where(mask[:, 1:], picked, 0.0)) / jnp.sum(mask[:, 1:])
        return jax.jit(jax.value_and_grad(fn))

    ref_loss, ref_grad = loss(cfg)(params)
    for name in transformer.REMAT_POLICIES:
        value, grad = loss(dataclasses.replace(cfg, remat=name))(params)
        np.testing.assert_allclose(value, ref_loss, rtol=1e-6, err_msg=name)
        jax.tree.map(lambda a, b, name=name: np.testing.assert_allclose(
            a, b, rtol=1e-5, atol=1e-6, err_msg=name), grad, ref_grad)


def test_unknown_remat_policy_raises():
    cfg = dataclasses.replace(VARIANTS["qwen2"], remat="most")
    with pytest.raises(ValueError, match="'most' is not a remat policy"):
        transformer.param_shapes(cfg)


# ---------------------------------------------------------------------------- numpy references


def _np_rms(x, scale, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def _np_inv_freq(cfg):
    d = round(cfg.head_dim * cfg.partial_rotary_factor)
    inv = np.array([cfg.rope_theta ** (-2 * i / d) for i in range(d // 2)])
    s = cfg.rope_scaling
    if s is None:
        return inv
    out = []
    for f in inv:  # Llama 3.1 scaling, written per frequency as in the Meta reference code
        wavelen = 2 * math.pi / f
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            out.append(f)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            out.append(f / s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor)
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return np.array(out)


def _np_rope(x, pos, inv_freq):
    """x [T, N, d]: rotate each pair (i, i + r/2) by angle pos * inv_freq[i], r = 2 *
    len(inv_freq); dims r.. pass unchanged (partial rotary)."""
    half = len(inv_freq)
    ang = pos[:, None, None] * inv_freq[None, None, :]
    a, b, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return np.concatenate([a * np.cos(ang) - b * np.sin(ang),
                           b * np.cos(ang) + a * np.sin(ang), rest], -1)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rope_matches_numpy(name):
    cfg = VARIANTS[name]
    inv = _np_inv_freq(cfg)
    np.testing.assert_allclose(transformer.rope_inv_freq(cfg), inv, rtol=1e-6)
    x = np.random.default_rng(0).normal(size=(1, 5, 3, cfg.head_dim)).astype(np.float32)
    pos = np.array([0, 1, 2, 7, 40])
    ang = pos[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)[None].astype(np.float32)
    got = transformer.apply_rope(jnp.asarray(x), jnp.sin(ang), jnp.cos(ang))
    np.testing.assert_allclose(np.asarray(got)[0], _np_rope(x[0], pos, inv), atol=1e-5)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_rope_sin_cos_table_and_formula_match_numpy(name):
    """The lookup table (short contexts) and the in-graph formula (long ones) both give the
    float64 angles' sin/cos; a position past the table reads NaN, not a wrong angle."""
    small = VARIANTS[name]
    large = dataclasses.replace(
        small, max_seq_len=transformer.ROPE_TABLE_MAX // small.head_dim + 1)
    assert small.max_seq_len * small.head_dim <= transformer.ROPE_TABLE_MAX
    inv = _np_inv_freq(small)
    pos = np.array([[0, 1, 2, 7], [40, 41, 50, small.max_seq_len - 1]])
    ang = pos[..., None] * np.concatenate([inv, inv])
    for cfg in (small, large):
        sin, cos = transformer.rope_sin_cos(cfg, jnp.asarray(pos))
        # fp32 angles: pos * inv_freq rounds to ~1e-7 relative
        np.testing.assert_allclose(np.asarray(sin), np.sin(ang), atol=2e-4)
        np.testing.assert_allclose(np.asarray(cos), np.cos(ang), atol=2e-4)
    sin, cos = transformer.rope_sin_cos(small, jnp.asarray([[small.max_seq_len, -1]]))
    assert np.isnan(np.asarray(sin)).all() and np.isnan(np.asarray(cos)).all()


def test_rmsnorm_matches_numpy():
    cfg = VARIANTS["qwen2"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, cfg.hidden_size)).astype(np.float32) * 3
    scale = rng.normal(size=(cfg.hidden_size,)).astype(np.float32)
    got = transformer.RMSNorm(cfg, cfg.hidden_size).apply({"params": {"scale": scale}}, x)
    np.testing.assert_allclose(np.asarray(got), _np_rms(x, scale, cfg.rms_eps), atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "partial"])
def test_gqa_attention_matches_numpy(name):
    cfg = VARIANTS[name]
    attn = transformer.Attention(cfg)
    T = 6
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, T, cfg.hidden_size)).astype(np.float32)
    pos = np.arange(T)
    inv = _np_inv_freq(cfg)
    ang = np.concatenate([pos[:, None] * inv, pos[:, None] * inv], -1)[None].astype(np.float32)
    mask = jnp.ones((1, T), bool)
    args = (jnp.asarray(x), jnp.sin(ang), jnp.cos(ang), mask, jnp.arange(T), None,
            jnp.zeros((), jnp.int32))
    shapes = nn.meta.unbox(jax.eval_shape(lambda k: attn.init(k, *args), jax.random.key(0)))
    rng = np.random.default_rng(2)
    p = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) * 0.2,
                     shapes["params"])
    got, _ = attn.apply({"params": p}, *args)

    H, K, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    G = H // K

    def proj(name):
        y = np.einsum("tD,Dhd->thd", x[0], p[name]["kernel"])
        return y + p[name]["bias"] if cfg.qkv_bias else y

    q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
    if cfg.qk_norm:
        q = _np_rms(q, p["q_norm"]["scale"], cfg.rms_eps)
        k = _np_rms(k, p["k_norm"]["scale"], cfg.rms_eps)
    q, k = _np_rope(q, pos, inv), _np_rope(k, pos, inv)
    out = np.zeros((T, H, d))
    for h in range(H):
        kv = h // G  # query head h reads kv head h // G
        s = q[:, h] @ k[:, kv].T / np.sqrt(d)
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, kv]
    want = np.einsum("thd,hdD->tD", out, p["o_proj"]["kernel"])
    np.testing.assert_allclose(np.asarray(got)[0], want, atol=1e-4, rtol=1e-4)


def test_partial_rotary_leaves_the_other_dims_without_position():
    """With partial rotary, q.k over the dims past rotary_dim is the same at every distance,
    and over the rotated dims it depends on the distance only."""
    cfg = VARIANTS["partial"]
    assert cfg.rotary_dim == 8 and transformer.rope_inv_freq(cfg).shape == (4,)
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=(2, cfg.head_dim)).astype(np.float32)

    def score(q_pos, k_pos, dims):
        pos = jnp.asarray([[q_pos, k_pos]])
        sin, cos = transformer.rope_sin_cos(cfg, pos)
        x = jnp.asarray(np.stack([q, k])[None, :, None, :])  # [1, 2, 1, d]
        rq, rk = np.asarray(transformer.apply_rope(x, sin, cos))[0, :, 0, dims]
        return float(rq @ rk)

    rotated, rest = slice(0, 8), slice(8, 16)
    assert score(5, 0, rest) == pytest.approx(float(q[8:] @ k[8:]), rel=1e-5)
    assert score(40, 1, rest) == pytest.approx(float(q[8:] @ k[8:]), rel=1e-5)
    assert score(5, 0, rotated) == pytest.approx(score(45, 40, rotated), rel=1e-4)
    assert score(5, 0, rotated) != pytest.approx(score(40, 1, rotated), rel=1e-2)


@pytest.mark.parametrize("factor", [0.0, 1.5, 0.1, -0.5])
def test_partial_rotary_factor_is_checked(factor):
    # head_dim 16: 0.1 rotates 1 dim (odd), the others are outside (0, 1].
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        presets.ModelConfig(**_BASE, partial_rotary_factor=factor)


def test_init_cache_rejects_too_many_slots():
    cfg = VARIANTS["qwen2"]
    with pytest.raises(ValueError, match="max_seq_len"):
        transformer.init_cache(cfg, 1, cfg.max_seq_len + 1)
