"""Hugging Face checkpoints <-> lrmjax: config.json <-> ModelConfig, safetensors <-> params.

Supported architectures (`architectures[0]`, else `model_type`): Qwen2ForCausalLM (Qwen2 and
Qwen2.5: QKV bias), Qwen3ForCausalLM (QK-norm, decoupled head_dim) and LlamaForCausalLM
(Llama-3.x, with `llama3` RoPE scaling). Both layouts of config.json are read: the classic one of
published checkpoints (`rope_theta`, `rope_scaling`) and the one transformers 5 writes
(`rope_parameters`); `config_to_hf` writes both, so either version of transformers reads it.

Weights map one HF tensor to one lrmjax param (see `_LAYER_TENSORS`); HF `nn.Linear` weights are
[out, in], lrmjax kernels are [in, out] with heads split out ([D, H, d], [H, d, D]). RoPE uses
the same "rotate_half" layout on both sides, so no permutation is needed.

Loading reads tensor by tensor (safetensors `safe_open`, numpy) and places each param straight
into its target sharding before reading the next one, so host memory holds the loaded params
plus at most one tensor in transit (measured in tests/test_hf.py::test_load_peak_rss).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  registers the bfloat16 numpy dtype safetensors reads into
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lrmjax.models import transformer
from lrmjax.models.presets import ModelConfig, RopeScaling
from lrmjax.models.sharding import param_shardings

PathLike = str | os.PathLike

# Architecture name -> family. The families differ only in the flags config_from_hf sets.
ARCHITECTURES: dict[str, str] = {
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "LlamaForCausalLM": "llama",
}
_MODEL_TYPES = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama"}
_FAMILY_ARCH = {v: k for k, v in ARCHITECTURES.items()}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Per layer: (lrmjax path inside 'layers_i', HF name inside 'model.layers.{i}.', layout).
# Layouts (lrmjax shape <- HF shape):
#   copy:      [n]        <- [n]
#   linear:    [in, out]  <- [out, in]            (transpose)
#   in_heads:  [D, N, d]  <- [N*d, D]             (q/k/v kernels)
#   bias:      [N, d]     <- [N*d]                (q/k/v biases)
#   out_heads: [N, d, D]  <- [D, N*d]             (o_proj kernel)
_LAYER_TENSORS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("attn_norm", "scale"), "input_layernorm.weight", "copy"),
    (("attn", "q_proj", "kernel"), "self_attn.q_proj.weight", "in_heads"),
    (("attn", "q_proj", "bias"), "self_attn.q_proj.bias", "bias"),
    (("attn", "k_proj", "kernel"), "self_attn.k_proj.weight", "in_heads"),
    (("attn", "k_proj", "bias"), "self_attn.k_proj.bias", "bias"),
    (("attn", "v_proj", "kernel"), "self_attn.v_proj.weight", "in_heads"),
    (("attn", "v_proj", "bias"), "self_attn.v_proj.bias", "bias"),
    (("attn", "o_proj", "kernel"), "self_attn.o_proj.weight", "out_heads"),
    (("attn", "q_norm", "scale"), "self_attn.q_norm.weight", "copy"),
    (("attn", "k_norm", "scale"), "self_attn.k_norm.weight", "copy"),
    (("mlp_norm", "scale"), "post_attention_layernorm.weight", "copy"),
    (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", "linear"),
    (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", "linear"),
    (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", "linear"),
)
_GLOBAL_TENSORS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("embed", "embedding"), "model.embed_tokens.weight", "copy"),
    (("final_norm", "scale"), "model.norm.weight", "copy"),
    (("lm_head", "kernel"), "lm_head.weight", "linear"),
)
# Checkpoint entries that are not weights (old checkpoints saved the RoPE buffer).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ----------------------------------------------------------------------------------- config


def _rope_from_hf(d: dict) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope_scaling) from either config layout."""
    params = d.get("rope_parameters") or {}
    if params and "rope_theta" not in params and all(isinstance(v, dict) for v in
                                                     params.values()):
        raise ValueError(f"config.json has per-layer-type rope_parameters {sorted(params)}; "
                         "only one global RoPE is supported")
    # transformers gives a classic `rope_scaling` priority over `rope_parameters`; so do we.
    scaling = d.get("rope_scaling") or params
    theta = float(params.get("rope_theta", d.get("rope_theta", 10_000.0)))
    partial = params.get("partial_rotary_factor", d.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        # transformers' Llama/Qwen2/Qwen3 attention rotates every dim whatever this says.
        raise ValueError(f"config.json partial_rotary_factor={partial!r} is not supported for "
                         "Llama/Qwen2/Qwen3 checkpoints (their attention rotates every dim)")
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise ValueError(f"config.json rope type {kind!r} is not supported (only 'default' and "
                         "'llama3')")
    return theta, RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_max_position_embeddings=int(scaling.get(
            "original_max_position_embeddings", d["max_position_embeddings"])))


def _family(d: dict) -> str:
    archs = d.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    if not archs and d.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[d["model_type"]]
    found = archs or d.get("model_type")
    raise ValueError(f"Unsupported architecture {found!r} (model_type "
                     f"{d.get('model_type')!r}); supported: {sorted(ARCHITECTURES)}")


def config_from_hf(d: dict, **overrides: Any) -> ModelConfig:
    """ModelConfig from a parsed HF config.json; `overrides` replace ModelConfig fields.

    Raises ValueError for an unsupported architecture, activation, RoPE type, sliding window
    or bias layout, naming it (never a silently different model).
    """
    family = _family(d)
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported (only 'silu')")
    if d.get("use_sliding_window"):
        raise ValueError("use_sliding_window=True is not supported (full attention only)")
    if d.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported")
    if family in ("llama", "qwen3") and d.get("attention_bias"):
        # HF puts the bias on o_proj as well for these two; lrmjax has no o_proj bias.
        raise ValueError(f"attention_bias=True is not supported for {family} (o_proj bias)")
    heads = int(d["num_attention_heads"])
    theta, scaling = _rope_from_hf(d)
    fields = dict(
        vocab_size=int(d["vocab_size"]),
        hidden_size=int(d["hidden_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
        mlp_dim=int(d["intermediate_size"]),
        rms_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=int(d.get("max_position_embeddings", 2048)),
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        # The transformers default for all three families is untied.
        tie_embeddings=bool(d.get("tie_word_embeddings", False)),
        name=str(d.get("_name_or_path") or family),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def unexportable_reason(cfg: ModelConfig) -> str | None:
    """Why `cfg` has no HF architecture among Llama/Qwen2/Qwen3, or None if it has one."""
    if cfg.qk_norm and cfg.qkv_bias:
        return ("qk_norm with qkv_bias has no HF architecture (Qwen3's attention_bias also "
                "biases o_proj)")
    if cfg.partial_rotary_factor != 1.0:
        return (f"partial_rotary_factor={cfg.partial_rotary_factor} has no HF architecture "
                "here (Llama/Qwen2/Qwen3 attention rotates every dim)")
    return None


def config_to_hf(cfg: ModelConfig) -> dict:
    """An HF config.json dict for `cfg` (Qwen3 if qk_norm, Qwen2 if qkv_bias, else Llama).
    Raises ValueError with `unexportable_reason` where there is none."""
    if reason := unexportable_reason(cfg):
        raise ValueError(reason)
    family = "qwen3" if cfg.qk_norm else "qwen2" if cfg.qkv_bias else "llama"
    scaling = None
    if cfg.rope_scaling is not None:
        scaling = {"rope_type": "llama3", **dataclasses.asdict(cfg.rope_scaling)}
    dtype = jnp.dtype(cfg.param_dtype).name
    d = {
        "architectures": [_FAMILY_ARCH[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_eps,
        # Both layouts: transformers < 5 reads rope_theta / rope_scaling, 5 rope_parameters.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": scaling,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default",
                            **(scaling or {})},
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
    }
    if family == "llama":
        d.update(attention_bias=False, mlp_bias=False)
    else:
        d.update(use_sliding_window=False, sliding_window=None)
        if family == "qwen3":
            d.update(attention_bias=False)
    return d


# ----------------------------------------------------------------------------------- layouts


def _hf_shape(layout: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The HF tensor shape of an lrmjax param of `shape`."""
    if layout == "copy":
        return shape
    if layout == "linear":
        return shape[::-1]
    if layout == "in_heads":
        return (shape[1] * shape[2], shape[0])
    if layout == "bias":
        return (shape[0] * shape[1],)
    if layout == "out_heads":
        return (shape[2], shape[0] * shape[1])
    raise AssertionError(layout)


def _from_hf(layout: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> lrmjax layout (`shape`)."""
    if layout == "copy":
        return w
    if layout == "linear":
        return w.T
    if layout in ("in_heads", "out_heads"):
        return w.T.reshape(shape)
    if layout == "bias":
        return w.reshape(shape)
    raise AssertionError(layout)


def _to_hf(layout: str, x: np.ndarray) -> np.ndarray:
    """lrmjax param -> HF tensor layout (contiguous, as safetensors needs)."""
    if layout == "copy":
        out = x
    elif layout == "linear":
        out = x.T
    elif layout == "in_heads":
        out = x.reshape(x.shape[0], -1).T
    elif layout == "bias":
        out = x.reshape(-1)
    elif layout == "out_heads":
        out = x.reshape(-1, x.shape[-1]).T
    else:
        raise AssertionError(layout)
    return np.ascontiguousarray(out)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One lrmjax param leaf and the HF tensor(s) it comes from (one per layer if stacked)."""

    path: tuple[str, ...]
    hf_names: tuple[str, ...]
    layout: str
    stacked: bool


def _entries(cfg: ModelConfig, shapes: dict) -> list[_Entry]:
    """Every param leaf of `shapes` (a param tree) with its HF source tensors."""
    entries = []
    for path, name, layout in _GLOBAL_TENSORS:
        if _get(shapes, path) is not None:
            entries.append(_Entry(path, (name,), layout, False))
    for sub, name, layout in _LAYER_TENSORS:
        names = tuple(f"model.layers.{i}.{name}" for i in range(cfg.num_layers))
        if "layers" in shapes:
            if _get(shapes, ("layers", *sub)) is not None:
                entries.append(_Entry(("layers", *sub), names, layout, True))
        elif _get(shapes, ("layers_0", *sub)) is not None:
            entries.extend(_Entry((f"layers_{i}", *sub), (names[i],), layout, False)
                           for i in range(cfg.num_layers))
    n_leaves = len(jax.tree.leaves(shapes))
    if len(entries) != n_leaves:  # guards _LAYER_TENSORS against drifting from the model
        raise AssertionError(f"HF mapping covers {len(entries)} of {n_leaves} params")
    return entries


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------------- loading


def _weight_map(path: pathlib.Path) -> dict[str, str]:
    """HF tensor name -> safetensors file name, for a single-file or sharded checkpoint."""
    if (path / INDEX_FILE).exists():
        return dict(json.loads((path / INDEX_FILE).read_text())["weight_map"])
    if (path / SINGLE_FILE).exists():
        with safe_open(path / SINGLE_FILE, framework="numpy") as f:
            return dict.fromkeys(f.keys(), SINGLE_FILE)
    raise FileNotFoundError(f"No {SINGLE_FILE} or {INDEX_FILE} in {path} (only safetensors "
                            "checkpoints are supported)")


def read_config(path: PathLike, **overrides: Any) -> ModelConfig:
    """The ModelConfig of the HF checkpoint directory `path` (its config.json only)."""
    return config_from_hf(json.loads((pathlib.Path(path) / "config.json").read_text()),
                          **overrides)


def load_pretrained(path: PathLike, dtype: Any = None, param_dtype: Any = None,
                    mesh: jax.sharding.Mesh | None = None, rules: Any = None,
                    scan_layers: bool = False) -> tuple[ModelConfig, dict]:
    """Loads a local HF checkpoint directory into (ModelConfig, params).

    Args:
      path: directory with config.json and model.safetensors (or shards + index).
      dtype: compute dtype (ModelConfig.dtype); None keeps the ModelConfig default (fp32).
      param_dtype: storage dtype of the params; None keeps the ModelConfig default (fp32):
        a bf16 checkpoint is upcast, as RL updates want fp32 master weights.
      mesh: place each param directly into its NamedSharding
        (`lrmjax.models.sharding.param_shardings`); each device receives only its slice.
      rules: logical-axis rules overriding the defaults (with a mesh).
      scan_layers: return layers stacked on a leading [L] axis under 'layers'.

    Returns:
      (cfg, params) with params in the tree of lrmjax.models.transformer.

    Raises:
      ValueError naming an unsupported architecture, a missing or unexpected tensor, or a
      tensor whose shape differs from the one the config implies (expected and found).
    """
    path = pathlib.Path(path)
    overrides: dict[str, Any] = {"scan_layers": scan_layers}
    if dtype is not None:
        overrides["dtype"] = dtype
    if param_dtype is not None:
        overrides["param_dtype"] = param_dtype
    hf_config = json.loads((path / "config.json").read_text())
    cfg = config_from_hf(hf_config, **overrides)
    shapes = transformer.param_shapes(cfg)
    entries = _entries(cfg, shapes)
    weight_map = _weight_map(path)

    needed = {n for e in entries for n in e.hf_names}
    missing = sorted(needed - set(weight_map))
    if missing:
        raise ValueError(f"Checkpoint {path} is missing tensor(s) {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    # A tied checkpoint may still carry lm_head.weight (a copy of the embedding): not an error.
    allowed = needed | ({"lm_head.weight"} if cfg.tie_embeddings else set())
    unexpected = sorted(n for n in set(weight_map) - allowed
                        if not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"Checkpoint {path} has unexpected tensor(s) {unexpected[:8]} for "
                         f"{_FAMILY_ARCH[_family(hf_config)]}")

    shardings = None if mesh is None else param_shardings(cfg, mesh, rules)

    params: dict = {}
    reader = _Reader(path, weight_map)
    for e in entries:
        host = _read_entry(reader, e, _get(shapes, e.path))
        _set(params, e.path, _place(host, None if shardings is None
                                    else _get(shardings, e.path)))
        del host  # freed before the next tensor is read
    return cfg, params


def _read_entry(reader: _Reader, e: _Entry, target: jax.ShapeDtypeStruct) -> np.ndarray:
    """Reads the HF tensor(s) of one param into a host array of the target shape and dtype."""
    dtype = np.dtype(target.dtype)
    if not e.stacked:
        return _convert(reader.get(e.hf_names[0]), e, e.hf_names[0], target.shape, dtype)
    out = np.empty(target.shape, dtype)
    for i, name in enumerate(e.hf_names):
        out[i] = _convert(reader.get(name), e, name, target.shape[1:], dtype)
    return out


def _convert(w: np.ndarray, e: _Entry, name: str, shape: tuple[int, ...],
             dtype: np.dtype) -> np.ndarray:
    expected = _hf_shape(e.layout, tuple(shape))
    if tuple(w.shape) != expected:
        raise ValueError(f"Tensor {name} has shape {tuple(w.shape)}, expected {expected} "
                         "from config.json")
    return _from_hf(e.layout, w, tuple(shape)).astype(dtype, copy=False)


def _place(host: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    if sharding is None:
        return jax.device_put(host)
    # Each addressable device gets only its slice of the host tensor.
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


class _Reader:
    """Reads tensors by name from the safetensors files of one checkpoint.

    Each read opens the file, copies one tensor out and closes it again. safe_open memory-maps
    the whole file, and pages of a mapping stay in the process's resident set until it is
    unmapped: keeping the files open would let the checkpoint's pages pile up next to the
    loaded params (peak RSS ~2x the checkpoint, measured on the `bench` model). Reopening costs
    one header parse per tensor (microseconds)."""

    def __init__(self, path: pathlib.Path, weight_map: dict[str, str]):
        self._path, self._weight_map = path, weight_map

    def get(self, name: str) -> np.ndarray:
        with safe_open(self._path / self._weight_map[name], framework="numpy") as f:
            return f.get_tensor(name)


# ----------------------------------------------------------------------------------- saving


def _flat_shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in flat}


def _check_params(cfg: ModelConfig, params: dict) -> ModelConfig:
    """Checks that `params` is the tree `cfg` implies (per-layer or stacked); returns cfg with
    scan_layers matching the tree."""
    cfg = dataclasses.replace(cfg, scan_layers="layers" in params)
    want, got = _flat_shapes(transformer.param_shapes(cfg)), _flat_shapes(params)
    problems = [f"missing {k}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
    problems += [f"{k}: shape {got[k]}, expected {want[k]}" for k in sorted(set(want) & set(got))
                 if got[k] != want[k]]
    if problems:
        raise ValueError(f"params do not match the ModelConfig: {problems[:8]}")
    return cfg


def _hf_tensors(cfg: ModelConfig, params: dict) -> Iterator[tuple[str, Callable[[], np.ndarray],
                                                                   int]]:
    """(HF name, thunk producing the HF tensor, its byte size) for every tensor to save."""
    cfg = _check_params(cfg, params)
    for e in _entries(cfg, transformer.param_shapes(cfg)):
        leaf = _get(params, e.path)
        for i, name in enumerate(e.hf_names):
            def thunk(leaf=leaf, i=i, e=e):
                x = np.asarray(jax.device_get(leaf[i] if e.stacked else leaf))
                return _to_hf(e.layout, x)
            nbytes = int(np.prod(leaf.shape[1:] if e.stacked else leaf.shape)) * np.dtype(
                leaf.dtype).itemsize
            yield name, thunk, nbytes


def save_pretrained(cfg: ModelConfig, params: dict, path: PathLike, tokenizer: Any = None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes an HF checkpoint directory that `transformers.AutoModelForCausalLM` loads.

    Writes config.json, generation_config.json, model.safetensors (or
    model-0000k-of-0000n.safetensors shards + model.safetensors.index.json when the tensors
    exceed `max_shard_bytes`), and the tokenizer files when `tokenizer` (an HFTokenizer) is
    given. Params are saved in their own dtype, one shard in host memory at a time; stacked
    ('layers', scan_layers) and per-layer trees are both accepted.
    """
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"save_pretrained writes HF tokenizer files and needs an HFTokenizer, "
                        f"got {type(tokenizer).__name__}")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = list(_hf_tensors(cfg, params))

    shards: list[list[tuple[str, Callable[[], np.ndarray]]]] = [[]]
    size = 0
    for name, thunk, nbytes in tensors:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, thunk))
        size += nbytes
    n = len(shards)
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = SINGLE_FILE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: thunk() for name, thunk in shard}, str(path / fname),
                  metadata={"format": "pt"})
        weight_map.update(dict.fromkeys((name for name, _ in shard), fname))
    if n > 1:
        index = {"metadata": {"total_size": sum(b for _, _, b in tensors)},
                 "weight_map": weight_map}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=2))
    elif (path / INDEX_FILE).exists():
        (path / INDEX_FILE).unlink()  # a stale index would shadow the new single file

    hf_cfg = config_to_hf(cfg)
    gen = {"_from_model_config": True, "do_sample": False}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
                   "pad_token_id": tokenizer.pad_id}
        hf_cfg.update(special)
        gen.update(special)
        stops = list(tokenizer.stop_ids)
        if len(stops) > 1:
            gen["eos_token_id"] = stops
        tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))


# ----------------------------------------------------------------------------------- LoRA

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_HF_BLOCKS = {"attn": "self_attn", "mlp": "mlp"}  # lrmjax submodule -> HF's


def peft_tensors(cfg: ModelConfig, adapters: dict) -> dict[str, np.ndarray]:
    """PEFT's tensors of LoRA `adapters` (`lrmjax.models.lora`; per-layer or stacked):
    'base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight' [r, in] and
    '...lora_B.weight' [out, r], in the adapters' dtype. Heads flatten as in the kernels'
    HF layout (`_to_hf`), so A and B multiply to the HF weight's update."""
    out = {}
    for layer in range(cfg.num_layers):
        node = (adapters["layers"] if "layers" in adapters else adapters[f"layers_{layer}"])
        for block, modules in node.items():
            for module, ab in modules.items():
                a, b = (np.asarray(jax.device_get(ab[k])) for k in ("lora_a", "lora_b"))
                if "layers" in adapters:
                    a, b = a[layer], b[layer]
                r = a.shape[-1]
                name = f"base_model.model.model.layers.{layer}.{_HF_BLOCKS[block]}.{module}"
                out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T)
                out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T)
    return out


def save_peft_adapter(cfg: ModelConfig, adapters: dict, path: PathLike,
                      base_model: str = "") -> None:
    """Writes a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)
    that `peft.PeftModel.from_pretrained(model, path)` loads onto the transformers model of
    the base checkpoint (`base_model`, recorded as base_model_name_or_path): the same logits
    as lrmjax's forward with the adapters. lrmjax has no dropout on the adapters (0) and no
    biases on them."""
    if not cfg.lora_rank:
        raise ValueError("save_peft_adapter: ModelConfig.lora_rank is 0 (no adapters)")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(cfg, adapters), str(path / ADAPTER_WEIGHTS),
              metadata={"format": "pt"})
    modules = sorted({m for node in (adapters.values()) for block in node.values()
                      for m in block})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.lora_rank,
              "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "target_modules": modules,
              "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": None, "base_model_name_or_path": base_model or None}
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
