"""Model configurations: one frozen dataclass and named presets, from CPU-tiny to 8B.

Presets for published checkpoints reproduce the published parameter count exactly (see
tests/test_presets.py, which checks each with `jax.eval_shape`). A preset can be adapted with
`dataclasses.replace(get("tiny"), vocab_size=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

# LoRA target names (config 'model.lora.targets') -> the projection modules of
# `lrmjax.models.transformer` (and of HF's Qwen2/Llama modules: the names agree).
LORA_TARGETS: dict[str, str] = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
    "gate": "gate_proj", "up": "up_proj", "down": "down_proj",
}
ALL_LORA_TARGETS: tuple[str, ...] = tuple(LORA_TARGETS)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (`rope_type: llama3` in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the decoder-only transformer (Llama-3 / Qwen2 / Qwen2.5 / Qwen3).

    Attributes:
      vocab_size: rows of the embedding table (and of the LM head).
      hidden_size: model width d.
      num_layers: decoder blocks.
      num_heads: query heads.
      num_kv_heads: key/value heads (grouped-query attention; divides num_heads).
      head_dim: per-head width (Qwen3 decouples it from hidden_size / num_heads).
      mlp_dim: SwiGLU inner width.
      rms_eps: RMSNorm epsilon.
      rope_theta: RoPE base frequency.
      rope_scaling: Llama-3 rope scaling, or None.
      partial_rotary_factor: share of each head's dims that RoPE rotates (GPT-NeoX's
        `rotary_pct`, HF's `partial_rotary_factor`): the first `rotary_dim` = head_dim x
        factor dims carry position, the rest none, so scores over them match content at any
        distance. 1.0 (every dim) in Llama, Qwen2 and Qwen3.
      max_seq_len: longest prompt + response the model (and the KV cache) supports.
      qkv_bias: biases on the q/k/v projections (Qwen2 / Qwen2.5).
      qk_norm: RMSNorm over head_dim on q and k before RoPE (Qwen3).
      tie_embeddings: the LM head reuses the embedding table.
      dtype: compute dtype of activations and matmuls.
      param_dtype: storage dtype of the params.
      remat: what each block keeps for the backward pass, a name in
        `transformer.REMAT_POLICIES`: 'none' (everything), 'full' (only its input; the rest
        is recomputed), 'save_dots', 'save_dots_no_batch', 'save_qkv_proj'.
      scan_layers: run the blocks with `nn.scan` (params stacked on a leading layer axis;
        compiles once per block instead of once per layer).
      lora_rank: rank r of the LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
        Large Language Models"); 0 = none. With r > 0 every projection named in
        `lora_targets` adds (x @ A) @ B * lora_alpha / r, A [in, r] and B [r, out] held in
        the "lora" variable collection (`lrmjax.models.lora`).
      lora_alpha: the adapters' scale numerator (the update is scaled by lora_alpha / r).
      lora_targets: which projections get adapters: names in `LORA_TARGETS`.
      name: preset name, informational.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0
    max_seq_len: int = 2048
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"
    scan_layers: bool = False
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = ALL_LORA_TARGETS
    name: str = "custom"

    def __post_init__(self):
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                      "head_dim", "mlp_dim", "max_seq_len"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"ModelConfig.{field} must be positive, got "
                                 f"{getattr(self, field)!r}")
        if self.lora_rank < 0:
            raise ValueError(f"ModelConfig.lora_rank must be >= 0, got {self.lora_rank!r}")
        unknown = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if unknown:
            raise ValueError(f"ModelConfig.lora_targets: unknown name(s) {unknown}; valid: "
                             f"{list(LORA_TARGETS)}")
        if not (0 < self.partial_rotary_factor <= 1) or self.rotary_dim % 2 \
                or self.rotary_dim < 2:
            raise ValueError(f"ModelConfig.partial_rotary_factor={self.partial_rotary_factor!r} "
                             f"must be in (0, 1] and rotate an even number (>= 2) of the "
                             f"head_dim={self.head_dim} dims; it rotates {self.rotary_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")

    @property
    def rotary_dim(self) -> int:
        """How many of each head's dims RoPE rotates (the first ones)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def num_params(self) -> int:
        """Parameter count from the shapes alone (no allocation)."""
        d, h, kv, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        attn = 2 * d * h * hd + 2 * d * kv * hd
        attn += (h * hd + 2 * kv * hd) if self.qkv_bias else 0
        attn += 2 * hd if self.qk_norm else 0
        block = attn + 3 * d * self.mlp_dim + 2 * d
        embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return embed + self.num_layers * block + d

    @property
    def lora_modules(self) -> frozenset[str]:
        """Names of the projection modules that carry adapters (empty without LoRA)."""
        if not self.lora_rank:
            return frozenset()
        return frozenset(LORA_TARGETS[t] for t in self.lora_targets)

    def flops_per_token(self, context_len: int = 0) -> float:
        """Forward FLOPs per token: 2 x (matmul params) + attention over `context_len` keys."""
        d, h, kv, hd = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim
        matmul = self.num_layers * (2 * d * h * hd + 2 * d * kv * hd + 3 * d * self.mlp_dim)
        matmul += self.vocab_size * d
        attention = self.num_layers * 2 * 2 * h * hd * context_len
        return 2.0 * matmul + attention


_QWEN2 = dict(rms_eps=1e-6, qkv_bias=True, rope_theta=1_000_000.0, max_seq_len=32768)
_QWEN3 = dict(rms_eps=1e-6, qk_norm=True, rope_theta=1_000_000.0, max_seq_len=40960)
_LLAMA3 = dict(rms_eps=1e-5, rope_theta=500_000.0, max_seq_len=131072)

PRESETS: dict[str, ModelConfig] = {
    # CPU-sized. `tiny` trains in seconds; it has the shape of the peers' tiny Qwen2 checkpoint.
    "tiny": ModelConfig(vocab_size=512, hidden_size=128, num_layers=4, num_heads=4,
                        num_kv_heads=2, head_dim=32, mlp_dim=384, qkv_bias=True,
                        max_seq_len=512, name="tiny"),
    # The peers' benchmark shape: Qwen2 layout, 40,516,096 params.
    "bench": ModelConfig(vocab_size=32000, hidden_size=512, num_layers=8, num_heads=8,
                         num_kv_heads=2, head_dim=64, mlp_dim=1536, qkv_bias=True,
                         max_seq_len=2048, name="bench"),
    # ~94M params: the largest model worth timing on a 2-core CPU.
    "small": ModelConfig(vocab_size=32000, hidden_size=768, num_layers=12, num_heads=12,
                         num_kv_heads=4, head_dim=64, mlp_dim=2048, qkv_bias=True,
                         max_seq_len=2048, name="small"),
    # Published checkpoints (counts in tests/test_presets.py).
    "qwen2.5-0.5b": ModelConfig(vocab_size=151936, hidden_size=896, num_layers=24,
                                num_heads=14, num_kv_heads=2, head_dim=64, mlp_dim=4864,
                                tie_embeddings=True, name="qwen2.5-0.5b", **_QWEN2),
    "qwen2.5-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28,
                                num_heads=12, num_kv_heads=2, head_dim=128, mlp_dim=8960,
                                tie_embeddings=True, name="qwen2.5-1.5b", **_QWEN2),
    "qwen2.5-7b": ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28,
                              num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18944,
                              tie_embeddings=False, name="qwen2.5-7b", **_QWEN2),
    "qwen2.5-math-1.5b": ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28,
                                     num_heads=12, num_kv_heads=2, head_dim=128, mlp_dim=8960,
                                     tie_embeddings=True, name="qwen2.5-math-1.5b",
                                     **{**_QWEN2, "rope_theta": 10_000.0,
                                        "max_seq_len": 4096}),
    "qwen2.5-math-7b": ModelConfig(vocab_size=152064, hidden_size=3584, num_layers=28,
                                   num_heads=28, num_kv_heads=4, head_dim=128, mlp_dim=18944,
                                   tie_embeddings=False, name="qwen2.5-math-7b",
                                   **{**_QWEN2, "rope_theta": 10_000.0, "max_seq_len": 4096}),
    "qwen3-0.6b": ModelConfig(vocab_size=151936, hidden_size=1024, num_layers=28,
                              num_heads=16, num_kv_heads=8, head_dim=128, mlp_dim=3072,
                              tie_embeddings=True, name="qwen3-0.6b", **_QWEN3),
    "qwen3-8b": ModelConfig(vocab_size=151936, hidden_size=4096, num_layers=36, num_heads=32,
                            num_kv_heads=8, head_dim=128, mlp_dim=12288, tie_embeddings=False,
                            name="qwen3-8b", **_QWEN3),
    "llama-3.2-1b": ModelConfig(vocab_size=128256, hidden_size=2048, num_layers=16,
                                num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192,
                                tie_embeddings=True, name="llama-3.2-1b",
                                rope_scaling=RopeScaling(factor=32.0), **_LLAMA3),
    "llama-3.1-8b": ModelConfig(vocab_size=128256, hidden_size=4096, num_layers=32,
                                num_heads=32, num_kv_heads=8, head_dim=128, mlp_dim=14336,
                                tie_embeddings=False, name="llama-3.1-8b",
                                rope_scaling=RopeScaling(factor=8.0), **_LLAMA3),
}


def get(name: str, **overrides: Any) -> ModelConfig:
    """Returns the preset `name`, with dataclass fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ValueError(f"Unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"Unknown ModelConfig field(s) {sorted(unknown)}")
    return dataclasses.replace(PRESETS[name], **overrides)
