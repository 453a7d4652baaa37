"""A Flax Linen decoder-only transformer covering Llama-3.x, Qwen2/Qwen2.5 and Qwen3.

Pieces: RMSNorm, RoPE (configurable theta, Llama-3 frequency scaling), grouped-query attention,
SwiGLU MLP, optional QKV bias (Qwen2), optional QK-norm (Qwen3), tied or untied embeddings.
Conventions follow the HF implementations (RMSNorm `x * scale`, RoPE "rotate_half"), so HF
weights load without permutation.

The model is a pure function of its params:

    logits, cache = Transformer(cfg).apply({'params': params}, tokens, positions, mask, cache)

Slots and positions. Sequences are left padded. A token's *slot* is its column in the padded
buffer (prompt and KV cache share the same columns); its *position* (for RoPE) counts only real
tokens. A query at slot i attends to keys at slots j <= i whose mask is True. Without a cache the
slots are 0..T-1; with a cache, the T new tokens occupy slots index..index+T-1.

Shapes: B batch, T new tokens, S cache slots, D hidden, H query heads, K kv heads, G = H / K,
d head_dim, F mlp, V vocab, L layers.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from lrmjax import parallel
from lrmjax.models.presets import ModelConfig

Array = jax.Array
_NEG_INF = -1e30  # finite, so fully masked rows (left padding) give no NaNs

# Remat policies by name (config 'model.remat'): what a block keeps from its forward pass for
# the backward; the rest is recomputed from the block's input. 'none' keeps everything (no
# remat); 'full' keeps only the block's input; 'save_dots' keeps every matmul output (the
# attention scores included); 'save_dots_no_batch' the projections' matmuls but not the
# attention's batched ones (whose [T, S] scores dominate at long lengths); 'save_qkv_proj'
# only the q/k/v projections (tagged with `checkpoint_name` in `Attention`).
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_qkv_proj": jax.checkpoint_policies.save_only_these_names("q_proj", "k_proj",
                                                                   "v_proj"),
}


@flax.struct.dataclass
class KVCache:
    """Preallocated keys and values of every layer.

    k: keys [B, K, d, S] and v: values [B, K, S, d] per layer: a tuple of L arrays, or (with
    `scan_layers`, whose carry must be one array) stacked into [L, B, ...]. Laid out so that
    both attention products (q.k over d, probs.v over S) are plain batched GEMMs over (B, K)
    with no per-step transpose of the cache, and kept per layer so that a decode step reads
    each layer's cache in place instead of slicing a copy out of a stacked buffer.
    mask: [B, S] bool, True where a slot holds a real token; index: int32 scalar, the next free
    slot (shared by the batch: prompts are left padded).
    """

    k: Array | tuple[Array, ...]
    v: Array | tuple[Array, ...]
    mask: Array
    index: Array

    def repeat_batch(self, n: int) -> KVCache:
        """Each row repeated n times (row b*n + i continues row b): shares a prefill."""
        if n == 1:
            return self
        axis = 0 if isinstance(self.k, tuple) else 1
        rep = lambda x: jnp.repeat(x, n, axis=axis)  # noqa: E731
        return KVCache(k=jax.tree.map(rep, self.k), v=jax.tree.map(rep, self.v),
                       mask=jnp.repeat(self.mask, n, axis=0), index=self.index)

    def grow(self, max_len: int) -> KVCache:
        """The same cache with `max_len` slots (the new ones empty): a copy of every array."""
        extra = max_len - self.mask.shape[1]
        if extra < 0:
            raise ValueError(f"cannot shrink a KV cache of {self.mask.shape[1]} slots to "
                             f"{max_len}")

        def pad(x, axis):  # axis counted from the end: the slot axis of k is last, of v -2
            widths = [(0, 0)] * x.ndim
            widths[x.ndim + axis] = (0, extra)
            return jnp.pad(x, widths)

        return KVCache(k=jax.tree.map(lambda x: pad(x, -1), self.k),
                       v=jax.tree.map(lambda x: pad(x, -2), self.v),
                       mask=pad(self.mask, -1), index=self.index)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache with `max_len` slots; its dtype defaults to the compute dtype."""
    if max_len > cfg.max_seq_len:
        raise ValueError(f"KV cache of {max_len} slots exceeds the model's max_seq_len "
                         f"{cfg.max_seq_len}")
    L, K, d = cfg.num_layers, cfg.num_kv_heads, cfg.head_dim
    dtype = dtype or cfg.dtype
    k_shape, v_shape = (batch, K, d, max_len), (batch, K, max_len, d)
    if cfg.scan_layers:
        k, v = jnp.zeros((L, *k_shape), dtype), jnp.zeros((L, *v_shape), dtype)
    else:
        k = tuple(jnp.zeros(k_shape, dtype) for _ in range(L))
        v = tuple(jnp.zeros(v_shape, dtype) for _ in range(L))
    return KVCache(k=k, v=v, mask=jnp.zeros((batch, max_len), bool),
                   index=jnp.zeros((), jnp.int32))


def positions_from_mask(mask: Array) -> Array:
    """RoPE positions of a left-padded batch: [B, T] bool -> [B, T] int32 (pads get 0)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [r/2] (r = cfg.rotary_dim), with Llama-3 scaling when configured (as
    HF computes it)."""
    d = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq.astype(np.float32)
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


# Largest RoPE table (max_seq_len * head_dim values each for sin and cos, 4 MiB in fp32) kept
# as a constant of the program; longer contexts compute sin/cos from the positions.
ROPE_TABLE_MAX = 1 << 20


def _rope_angles(positions: Any, inv_freq: np.ndarray, xp: Any = jnp) -> Any:
    """float32 angles [..., r] of positions [...] ("rotate_half" layout), with numpy or jnp."""
    angles = positions.astype(np.float32)[..., None] * inv_freq
    return xp.concatenate([angles, angles], axis=-1)


@functools.lru_cache(maxsize=16)
def _rope_table(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    # In float32 with numpy, the same arithmetic as the in-graph path.
    angles = _rope_angles(np.arange(cfg.max_seq_len), rope_inv_freq(cfg), np)
    return np.sin(angles), np.cos(angles)


def rope_sin_cos(cfg: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """sin and cos of the RoPE angles, [B, T] int positions -> two [B, T, r] float32.

    When the model's table is small (max_seq_len * head_dim <= ROPE_TABLE_MAX) they are
    looked up in it. Computed in the graph, XLA fuses sin/cos into every op that reads them
    and recomputes them per head and per use. A position outside [0, max_seq_len) reads
    NaN, never a wrong angle.
    """
    if cfg.max_seq_len * cfg.head_dim <= ROPE_TABLE_MAX:
        rows = jnp.where(positions < 0, cfg.max_seq_len, positions)  # no wrap-around from -1
        return tuple(jnp.take(jnp.asarray(t), rows, axis=0, mode="fill", fill_value=np.nan)
                     for t in _rope_table(cfg))
    angles = _rope_angles(positions, jnp.asarray(rope_inv_freq(cfg)))
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: Array, sin: Array, cos: Array) -> Array:
    """Rotates x [B, T, N, d] by angles given as sin/cos [B, T, r] ("rotate_half" layout).

    With r < d (partial rotary) the first r dims are rotated and the other d - r pass as they
    are, as in GPT-NeoX.
    """
    r = sin.shape[-1]
    if r < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :r], sin, cos), x[..., r:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
           init: Any) -> Array:
    cfg = module.cfg
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, cfg.param_dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in fp32 over the last axis."""

    cfg: ModelConfig
    dim: int
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = _param(self, "scale", (self.dim,), (self.axis_name,), nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_eps)
        return (y * scale.astype(jnp.float32)).astype(self.cfg.dtype)


def _contract(x: Array, w: Array, num_in: int) -> Array:
    """x [..., *in] @ w [*in, *out] -> [..., *out] (the first `num_in` axes of w contract)."""
    in_dims, out_dims = w.shape[:num_in], w.shape[num_in:]
    if 1 in w.shape:
        # A size-1 axis (e.g. one KV head, or LoRA rank 1) in these reshapes sends XLA's SPMD
        # compile of the train step into an endless loop (jax 0.10, 8 CPU devices): einsum.
        eq = "...{0},{0}{1}->...{1}".format("abcd"[:num_in], "efgh"[:len(out_dims)])
        return jnp.einsum(eq, x, w)
    lead = x.shape[:x.ndim - num_in]
    x2 = x.reshape(math.prod(lead), math.prod(in_dims))
    w2 = w.reshape(math.prod(in_dims), math.prod(out_dims))
    return (x2 @ w2).reshape(*lead, *out_dims)


class Projection(nn.Module):
    """A linear map whose kernel keeps named axes: [*in_dims, *out_dims].

    The first `num_in` kernel axes contract with the last `num_in` axes of x. The product is
    one 2-D matmul ([prod(lead), prod(in)] @ [prod(in), prod(out)]): XLA's CPU backend runs an
    einsum with a 3-D kernel several times slower than the same GEMM, and a 3-D activation
    ([B, T, in] @ kernel) makes the backward's weight gradient (contracting B and T) fuse a
    slow strided transpose into the elementwise op before it.

    LoRA (`lrmjax.models.lora`): when the module's name is in `cfg.lora_modules`, an init
    with a "lora" RNG stream makes lora_a [*in_dims, r] (the kernel's init) and lora_b
    [r, *out_dims] (zeros) in the "lora" collection, and a forward whose variables hold them
    adds ((x @ a) * alpha / r) @ b in the compute dtype. Without them it is the plain map.
    """

    cfg: ModelConfig
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str, ...]
    num_in: int = 1
    bias_shape: tuple[int, ...] | None = None
    bias_axes: tuple[str, ...] | None = None
    fan_in: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        init = nn.initializers.normal(stddev=1.0 / math.sqrt(self.fan_in))
        kernel = _param(self, "kernel", self.kernel_shape, self.kernel_axes, init)
        x = x.astype(cfg.dtype)
        y = _contract(x, kernel.astype(cfg.dtype), self.num_in)
        if self.bias_shape is not None:
            bias = _param(self, "bias", self.bias_shape, self.bias_axes, nn.initializers.zeros)
            y = y + bias.astype(cfg.dtype)
        # Made by an init given a "lora" RNG stream (`lora.init_adapters`), so that a plain
        # init of the params draws exactly the keys it draws without LoRA.
        if self.name in cfg.lora_modules and (self.has_variable("lora", "lora_a") or (
                self.is_initializing() and self.has_rng("lora"))):
            a, b = self._adapters(init)
            scale = cfg.lora_alpha / cfg.lora_rank
            low = _contract(x, a.astype(cfg.dtype), self.num_in) * jnp.asarray(scale, cfg.dtype)
            y = y + _contract(low, b.astype(cfg.dtype), 1)
        return y

    def _adapters(self, init: Any) -> tuple[Array, Array]:
        """(lora_a [*in_dims, r], lora_b [r, *out_dims]); the rank axis is replicated."""
        r, n = self.cfg.lora_rank, self.num_in
        in_dims, out_dims = self.kernel_shape[:n], self.kernel_shape[n:]
        in_axes, out_axes = self.kernel_axes[:n], self.kernel_axes[n:]
        dtype = self.cfg.param_dtype

        def variable(name, shape, axes, fn):
            boxed = nn.with_logical_partitioning(fn, axes)
            return self.variable("lora", name,
                                 lambda: boxed(self.make_rng("lora"), shape, dtype)).value

        a = variable("lora_a", (*in_dims, r), (*in_axes, "lora_rank"), init)
        b = variable("lora_b", (r, *out_dims), ("lora_rank", *out_axes), nn.initializers.zeros)
        return a, b


class Attention(nn.Module):
    """Grouped-query attention with RoPE, optional QKV bias and QK-norm, and a KV cache.

    With `groups` = (P, n), row b of the [B, T] input is one group: a prompt of P slots, then
    its n responses of R slots each (T = P + n*R, see `Transformer`); the prompt attends to
    itself, each response to the prompt and to itself.
    """

    cfg: ModelConfig
    groups: tuple[int, int] | None = None

    @nn.compact
    def __call__(self, x, sin, cos, kv_mask, q_slots, kv, index):
        """x: [B, T, D]; kv_mask: [B, S]; q_slots: [T]; kv: None, or (k, v, None) with this
        layer's cache, or (k, v, layer) with the stacked cache of all layers (see KVCache) and
        `layer` this layer's index (an int32 scalar under `scan_layers`).

        Returns (out [B, T, D], updated kv or None). The new keys/values are written with one
        dynamic_update_slice into the whole [L, ...] buffer, so inside a decode loop XLA
        updates the cache in place (no per-step copy or re-stacking of the layers).
        """
        cfg = self.cfg
        D, H, K, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.qkv_bias

        def proj(name, heads, axis):
            return Projection(cfg, (D, heads, d), ("embed", axis, "head_dim"), 1,
                              (heads, d) if bias else None, (axis, "head_dim") if bias else None,
                              fan_in=D, name=name)(x)

        # Named so that a remat policy can keep them (REMAT_POLICIES['save_qkv_proj']).
        q = checkpoint_name(proj("q_proj", H, "heads"), "q_proj")
        k = checkpoint_name(proj("k_proj", K, "kv_heads"), "k_proj")
        v = checkpoint_name(proj("v_proj", K, "kv_heads"), "v_proj")
        if cfg.qk_norm:
            q = RMSNorm(cfg, d, "head_dim", name="q_norm")(q)
            k = RMSNorm(cfg, d, "head_dim", name="k_norm")(k)
        q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        if self.groups is not None:  # a grouped forward has no cache (see Transformer)
            out = grouped_attention(q, k, v, kv_mask, *self.groups)
        else:
            out, kv = cached_attention(q, k, v, kv_mask, q_slots, kv, index, cfg.dtype)
        out = Projection(cfg, (H, d, D), ("heads", "head_dim", "embed"), 2,
                         fan_in=H * d, name="o_proj")(out)
        return out, kv


def cached_attention(q: Array, k: Array, v: Array, kv_mask: Array, q_slots: Array, kv: Any,
                     index: Array, dtype: Any) -> tuple[Array, Any]:
    """Attention of q [B, T, H, d] over k/v [B, T, K, d], written first into the KV cache
    `kv` when there is one (see `Attention`): -> (out [B, T, H, d], updated kv or None).

    kv_mask [B, S] is bool (True on real tokens), or, for packed rows without a cache, int
    segment ids (0 on padding): a query then sees the earlier keys of its own segment."""
    B, T, H, d = q.shape
    K = k.shape[2]
    k = k.transpose(0, 2, 3, 1)  # [B, K, d, T]
    v = v.transpose(0, 2, 1, 3)  # [B, K, T, d]

    if kv is not None and kv[2] is None:  # this layer's own cache, updated in place
        cache_k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype),
                                               (0, 0, 0, index))
        cache_v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype),
                                               (0, 0, index, 0))
        k, v = cache_k.astype(dtype), cache_v.astype(dtype)
        kv = (cache_k, cache_v, None)
    elif kv is not None:  # the stacked cache: one dynamic_update_slice into [L, ...]
        cache_k, cache_v, layer = kv
        cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype),
                                               (layer, 0, 0, 0, index))
        cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype),
                                               (layer, 0, 0, index, 0))
        k = jax.lax.dynamic_index_in_dim(cache_k, layer, keepdims=False).astype(dtype)
        v = jax.lax.dynamic_index_in_dim(cache_v, layer, keepdims=False).astype(dtype)
        kv = (cache_k, cache_v, layer)

    S = k.shape[-1]
    # [B, T, S]: a key is visible if it holds a real token and is not in the future.
    causal = jnp.arange(S)[None, None, :] <= q_slots[None, :, None]
    if jnp.issubdtype(kv_mask.dtype, jnp.integer):  # segment ids of packed rows (no cache)
        same = kv_mask[:, None, :] == kv_mask[:, :, None]
        visible = same & (kv_mask[:, None, :] > 0) & causal
    else:
        visible = kv_mask[:, None, :] & causal
    q = q.reshape(B, T, K, H // K, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, d]
    scores = jnp.einsum("bkgtd,bkds->bkgts", q, k).astype(jnp.float32) / math.sqrt(d)
    scores = jnp.where(visible[:, None, None], scores, _NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
    out = out.transpose(0, 3, 1, 2, 4).reshape(B, T, H, d)
    return out, kv


def grouped_attention(q: Array, k: Array, v: Array, mask: Array, prompt_len: int,
                      group_size: int) -> Array:
    """Attention of shared-prompt groups: q [B, T, H, d], k/v [B, T, K, d], mask [B, T] with
    T = P + n*R (a prompt, then its n responses) -> [B, T, H, d].

    A prompt query sees the earlier real prompt slots; a response query sees every real
    prompt slot and the earlier real slots of its own response: what it sees in the
    response's own [P + R] row. The prompt's projections and per-token ops ran once for the
    group; here each response reads a copy of the prompt's keys and values (n * P * d values
    per KV head, small next to the scores).

    Layout: the heads move in front once, q to [B, K, T*G, d] (query row m = slot * G + g,
    the G query heads of a KV head side by side) and k/v to [B, K, T, d]: copies of whole
    runs of G*d (or d) contiguous values. Each response's keys and values are then one
    [P + R] block, so its scores, softmax and output are one batched GEMM pair over
    (B, K, n) with no slices of the scores: slicing them (or the [B, T, K, G, d] layout)
    made XLA:CPU pad, add and transpose score-sized arrays element by element.
    """
    B, T, H, d = q.shape
    K = k.shape[2]
    G, P, n = H // K, prompt_len, group_size
    R = (T - P) // n
    f32, scale = jnp.float32, 1.0 / math.sqrt(d)
    q = q.reshape(B, T, K, G * d).transpose(0, 2, 1, 3).reshape(B, K, T * G, d)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)               # [B, K, T, d]
    pm, rm = mask[:, :P], mask[:, P:].reshape(B, n, R)

    def causal(t):  # [t*G, t]: query row (slot, g) sees keys at slots <= its own
        return jnp.repeat(jnp.arange(t)[None, :] <= jnp.arange(t)[:, None], G, axis=0)

    s_p = jnp.einsum("bkmd,bksd->bkms", q[:, :, :P * G], k[:, :, :P]).astype(f32) * scale
    s_p = jnp.where((pm[:, None, :] & causal(P))[:, None], s_p, _NEG_INF)    # [B, K, P*G, P]
    out_p = jnp.einsum("bkms,bksd->bkmd", jax.nn.softmax(s_p, axis=-1).astype(q.dtype),
                       v[:, :, :P])

    def own_row(x):  # [B, K, T, d] -> [B, K, n, P + R, d]: the prompt, then response i
        return jnp.concatenate([jnp.broadcast_to(x[:, :, None, :P], (B, K, n, P, d)),
                                x[:, :, P:].reshape(B, K, n, R, d)], axis=3)

    qr = q[:, :, P * G:].reshape(B, K, n, R * G, d)
    s_r = jnp.einsum("bknmd,bknsd->bknms", qr, own_row(k)).astype(f32) * scale
    visible = jnp.concatenate([jnp.broadcast_to(pm[:, None, None, :], (B, n, R * G, P)),
                               rm[:, :, None, :] & causal(R)], axis=-1)  # [B, n, R*G, P+R]
    probs = jax.nn.softmax(jnp.where(visible[:, None], s_r, _NEG_INF), axis=-1)
    out_r = jnp.einsum("bknms,bknsd->bknmd", probs.astype(q.dtype), own_row(v))
    out = jnp.concatenate([out_p, out_r.reshape(B, K, n * R * G, d)], axis=2)  # [B, K, T*G, d]
    return out.reshape(B, K, T, G * d).transpose(0, 2, 1, 3).reshape(B, T, H, d)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.cfg
        D, F = cfg.hidden_size, cfg.mlp_dim
        gate = Projection(cfg, (D, F), ("embed", "mlp"), fan_in=D,
                          name="gate_proj")(x)
        up = Projection(cfg, (D, F), ("embed", "mlp"), fan_in=D, name="up_proj")(x)
        return Projection(cfg, (F, D), ("mlp", "embed"), fan_in=F,
                          name="down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm decoder block. Signature fits `nn.scan`: (carry, *broadcast) -> (carry, None)
    with carry = (x, kv); kv is None or (k, v, layer) (see Attention), returned with `layer`
    advanced by one so that the next block writes the next layer of the cache."""

    cfg: ModelConfig
    groups: tuple[int, int] | None = None  # see Attention

    @nn.compact
    def __call__(self, carry, sin, cos, kv_mask, q_slots, index):
        cfg = self.cfg
        x, kv = carry
        # Each device keeps its rows (FSDP gathers the params, not the activations).
        x = parallel.constrain(x, ("act_batch", "act_len", "act_embed"))
        h, kv = Attention(cfg, self.groups, name="attn")(
            RMSNorm(cfg, cfg.hidden_size, name="attn_norm")(x), sin, cos, kv_mask, q_slots,
            kv, index)
        x = x + h
        x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, cfg.hidden_size, name="mlp_norm")(x))
        if kv is not None:
            kv = (kv[0], kv[1], None if kv[2] is None else kv[2] + 1)
        return (x, kv), None


class Transformer(nn.Module):
    """The decoder-only LM. See the module docstring for the slot/position conventions.

    `groups` = (P, n) runs shared-prompt groups (no cache): each input row is a prompt of P
    slots followed by its n responses of R slots, [B, P + n*R]; positions and mask as they
    are in the separate [B*n, P + R] rows. Every per-token op runs once per prompt token.
    """

    cfg: ModelConfig
    groups: tuple[int, int] | None = None

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, attention_mask: Array,
                 cache: KVCache | None = None, return_hidden: bool = False,
                 segment_ids: Array | None = None) -> tuple[Array, KVCache | None]:
        """Runs the model on T new tokens.

        Args:
          tokens: [B, T] int32.
          positions: [B, T] int32 RoPE positions (`positions_from_mask` for left padding).
          attention_mask: [B, T] bool, True on real tokens.
          cache: a KVCache, or None for a full (training / scoring) forward pass.
          return_hidden: return the final normed hidden states [B, T, D] instead of logits.
          segment_ids: [B, T] int32 for packed rows (no cache, no groups): several sequences
            share a row, each a run of one id (0 on padding); a token attends only to the
            earlier tokens of its own segment, and `positions` restart per segment.

        Returns:
          (logits [B, T, V] float32 or hidden [B, T, D], updated cache or None).
        """
        cfg = self.cfg
        T = tokens.shape[1]
        embed = Embed(cfg, name="embed")
        x = embed(tokens)

        sin, cos = rope_sin_cos(cfg, positions)

        if self.groups is not None and cache is not None:
            raise ValueError("a grouped forward takes no KV cache")
        if segment_ids is not None and (cache is not None or self.groups is not None):
            raise ValueError("a packed forward (segment_ids) takes no KV cache and no groups")
        if cache is None:
            index = jnp.zeros((), jnp.int32)
            # Integer segment ids stand in for the mask (`cached_attention` reads either).
            kv_mask = (attention_mask if segment_ids is None
                       else jnp.where(attention_mask, segment_ids.astype(jnp.int32), 0))
        else:
            index = cache.index
            kv_mask = jax.lax.dynamic_update_slice(cache.mask, attention_mask, (0, index))
            if cfg.scan_layers != (not isinstance(cache.k, tuple)):
                raise ValueError("KV cache layout does not match scan_layers="
                                 f"{cfg.scan_layers}: build it with init_cache(cfg, ...)")
        q_slots = index + jnp.arange(T)

        if cfg.remat not in REMAT_POLICIES:
            raise ValueError(f"ModelConfig.remat {cfg.remat!r} is not a remat policy; valid: "
                             f"{sorted(REMAT_POLICIES)}")
        block_cls = Block
        if cfg.remat != "none":
            block_cls = nn.remat(Block, prevent_cse=not cfg.scan_layers,
                                 policy=REMAT_POLICIES[cfg.remat])
        if cfg.scan_layers:
            # The whole cache rides in the carry (not scanned over as xs/ys, which would
            # re-stack a new [L, ...] buffer every call).
            stack = nn.scan(block_cls, variable_axes={"params": 0, "lora": 0},
                            split_rngs={"params": True, "lora": True},
                            in_axes=(nn.broadcast,) * 5, length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            kvs = None if cache is None else (cache.k, cache.v, jnp.zeros((), jnp.int32))
            (x, kvs), _ = stack(cfg, self.groups, name="layers")(
                (x, kvs), sin, cos, kv_mask, q_slots, index)
            new_kv = None if cache is None else (kvs[0], kvs[1])
        else:
            new_k, new_v = [], []
            for i in range(cfg.num_layers):
                kv = None if cache is None else (cache.k[i], cache.v[i], None)
                (x, kv), _ = block_cls(cfg, self.groups, name=f"layers_{i}")(
                    (x, kv), sin, cos, kv_mask, q_slots, index)
                if kv is not None:
                    new_k.append(kv[0])
                    new_v.append(kv[1])
            new_kv = None if cache is None else (tuple(new_k), tuple(new_v))

        x = RMSNorm(cfg, cfg.hidden_size, name="final_norm")(x)
        new_cache = None if cache is None else KVCache(k=new_kv[0], v=new_kv[1], mask=kv_mask,
                                                       index=index + T)
        if return_hidden:
            return x, new_cache
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Projection(cfg, (cfg.hidden_size, cfg.vocab_size),
                                ("embed", "vocab"), fan_in=cfg.hidden_size, name="lm_head")(x)
        return logits.astype(jnp.float32), new_cache


class Embed(nn.Module):
    """Token embedding table [V, D]; `attend` is the tied LM head."""

    cfg: ModelConfig

    def setup(self):
        self.embedding = _param(self, "embedding", (self.cfg.vocab_size, self.cfg.hidden_size),
                                ("vocab", "embed"), nn.initializers.normal(stddev=0.02))

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.cfg.dtype)

    def attend(self, x: Array) -> Array:
        # Flattened to one GEMM for the same reason as `Projection`.
        x2 = x.reshape(-1, x.shape[-1])
        logits = jnp.einsum("nD,VD->nV", x2, self.embedding.astype(self.cfg.dtype))
        return logits.reshape(*x.shape[:-1], logits.shape[-1])


def lm_head(cfg: ModelConfig, params: Any, hidden: Array) -> Array:
    """Logits [..., T, V] float32 from final normed hidden states [..., T, D]: lets callers
    run the (large) vocabulary projection on only the positions they need. `params` is the
    params tree (under LoRA the base's: the head has no adapters)."""
    if cfg.tie_embeddings:
        embed = Embed(cfg)
        logits = embed.apply({"params": params["embed"]}, hidden, method=embed.attend)
    else:
        head = Projection(cfg, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                          fan_in=cfg.hidden_size)
        logits = head.apply({"params": params["lm_head"]}, hidden)
    return logits.astype(jnp.float32)


def tempered_lm_head(cfg: ModelConfig, params: Any, hidden: Array, temperature: float
                     ) -> Array:
    """`lm_head(hidden) / temperature` ([..., T, V] float32), temperature > 0 (greedy
    sampling scores the raw logits: pass `SamplingParams.score_temperature`, 1.0).

    The head is linear, so with fp32 activations the [..., D] hidden states are divided
    instead of the V-times larger logits (equal up to fp32 rounding): a pass over the logits
    fewer, forward and backward. The sampler and the trainer both score through here, so
    they compute the same product. bf16 activations divide the fp32 logits (dividing bf16
    hidden states would add a bf16 rounding).
    """
    if not temperature > 0:
        raise ValueError(f"tempered_lm_head: temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return lm_head(cfg, params, hidden)
    if hidden.dtype == jnp.float32:
        return lm_head(cfg, params, hidden / temperature)
    return lm_head(cfg, params, hidden) / temperature


def _dummy_inputs() -> tuple[Array, Array, Array]:
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1), bool)


def init_boxed(cfg: ModelConfig, key: Array) -> Any:
    """Params with their logical-axis metadata (nn.Partitioned boxes)."""
    return Transformer(cfg).init(key, *_dummy_inputs())["params"]


def init_params(cfg: ModelConfig, key: Array) -> Any:
    """Freshly initialized params: a nested dict of arrays (see the module docstring)."""
    return nn.meta.unbox(init_boxed(cfg, key))


def param_logical_axes(cfg: ModelConfig) -> Any:
    """The params' logical axis names: a tree of PartitionSpec, without allocating."""
    boxed = jax.eval_shape(lambda k: init_boxed(cfg, k), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def param_shapes(cfg: ModelConfig) -> Any:
    """The params' shapes and dtypes (ShapeDtypeStruct tree), without allocating."""
    return jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))


def count_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def stack_layers(params: dict, num_layers: int) -> dict:
    """'layers_0'..'layers_{L-1}' -> one 'layers' subtree with a leading [L] axis."""
    params = dict(params)
    layers = [params.pop(f"layers_{i}") for i in range(num_layers)]
    params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return params


def unstack_layers(params: dict, num_layers: int) -> dict:
    """The inverse of `stack_layers`."""
    params = dict(params)
    layers = params.pop("layers")
    for i in range(num_layers):
        params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], layers)
    return params
