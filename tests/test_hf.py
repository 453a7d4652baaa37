"""Parity of lrmjax.models.hf with transformers: configs, logits, greedy generation, save/load.

Every reference comes from transformers itself (tiny random models built on the CPU by
tests/hf_fixtures.py), never from lrmjax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_fixtures import CONVERSATION, make_model, make_tokenizer
from safetensors import safe_open
from safetensors.numpy import save_file

from lrmjax import parallel, sampling
from lrmjax.models import hf, presets, sharding, transformer
from lrmjax.tokenizers import HFTokenizer

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
CASES = {
    "qwen2": dict(arch="qwen2"),  # QKV bias, untied
    "qwen3": dict(arch="qwen3"),  # QK-norm, head_dim 32 != 64 / 4
    "llama3": dict(arch="llama", rope_scaling=LLAMA3_SCALING),  # llama3 RoPE, untied
    "qwen2_tied": dict(arch="qwen2", tie_word_embeddings=True),
}


def _to_classic_layout(path: pathlib.Path) -> None:
    """Rewrites a transformers-5 config.json (rope_parameters) in the layout of published
    checkpoints (rope_theta + rope_scaling), so both layouts are exercised end to end."""
    d = json.loads((path / "config.json").read_text())
    rope = d.pop("rope_parameters")
    d["rope_theta"] = rope.pop("rope_theta")
    d["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    (path / "config.json").write_text(json.dumps(d))


@dataclasses.dataclass
class Case:
    name: str
    path: pathlib.Path
    cfg: presets.ModelConfig
    params: dict
    model: transformers.PreTrainedModel


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> Case:
    kw = dict(CASES[request.param])
    path = tmp_path_factory.mktemp(request.param)
    make_model(path, kw.pop("arch"), **kw)
    if request.param == "llama3":
        _to_classic_layout(path)
    cfg, params = hf.load_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return Case(request.param, path, cfg, params, model)


def _batch(vocab: int, lengths=(12, 9, 5), seed: int = 0):
    """A left-padded batch: tokens [B, L] int32, mask [B, L] bool, positions [B, L] int32."""
    rng = np.random.default_rng(seed)
    L = max(lengths)
    tokens = rng.integers(0, vocab, (len(lengths), L)).astype(np.int32)
    mask = np.arange(L)[None, :] >= (L - np.asarray(lengths))[:, None]
    tokens[~mask] = 0
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    return tokens, mask, positions


def _hf_logits(model, tokens, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(tokens).long(),
                    attention_mask=torch.from_numpy(mask).long(),
                    position_ids=torch.from_numpy(positions).long())
    return out.logits.float().numpy()


def _our_logits(cfg, params, tokens, mask, positions) -> np.ndarray:
    logits, _ = transformer.Transformer(cfg).apply({"params": params}, jnp.asarray(tokens),
                                                   jnp.asarray(positions), jnp.asarray(mask))
    return np.asarray(logits)


def test_logits_match_transformers(case):
    tokens, mask, positions = _batch(case.cfg.vocab_size)
    ref = _hf_logits(case.model, tokens, mask, positions)
    ours = _our_logits(case.cfg, case.params, tokens, mask, positions)
    # Padding slots compute garbage on both sides; compare real tokens only.
    assert np.abs(ours - ref)[mask].max() < 1e-4


def test_config_flags(case):
    expected = {"qwen2": (True, False, False), "qwen3": (False, True, False),
                "llama3": (False, False, False), "qwen2_tied": (True, False, True)}
    cfg = case.cfg
    assert (cfg.qkv_bias, cfg.qk_norm, cfg.tie_embeddings) == expected[case.name]
    if case.name == "llama3":
        assert cfg.rope_scaling == presets.RopeScaling(8.0, 1.0, 4.0, 64)
        assert "lm_head" in case.params
    if case.name == "qwen3":
        assert cfg.head_dim == 32


def test_greedy_generation_matches_transformers(case):
    tokens, mask, _ = _batch(case.cfg.vocab_size, lengths=(10, 7, 4), seed=1)
    n_new = 32
    with torch.no_grad():
        out = case.model.generate(
            torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask).long(),
            max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, eos_token_id=None,
            pad_token_id=0)
    ref = out[:, tokens.shape[1]:].numpy()
    assert ref.shape == (3, n_new)
    sampler = sampling.Sampler(case.cfg, pad_id=0, stop_ids=())  # no stop: exactly n_new
    rollout = sampler.generate(case.params, tokens, mask,
                               sampling.SamplingParams(temperature=0.0, max_new_tokens=n_new),
                               jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(rollout.response_tokens)[:, :n_new], ref)


def test_save_round_trip_through_transformers(case, tmp_path):
    hf.save_pretrained(case.cfg, case.params, tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "model.safetensors.index.json").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    batch = _batch(case.cfg.vocab_size, seed=2)
    # Same weights through the same torch code: bit-identical logits.
    np.testing.assert_array_equal(_hf_logits(reloaded.eval(), *batch),
                                  _hf_logits(case.model, *batch))
    assert reloaded.config.tie_word_embeddings == case.cfg.tie_embeddings
    cfg2, params2 = hf.load_pretrained(tmp_path)
    assert dataclasses.replace(cfg2, name=case.cfg.name) == case.cfg
    jax.tree.map(np.testing.assert_array_equal, params2, case.params)


def test_sharded_save_and_scan_layers(tmp_path):
    src = tmp_path / "src"
    make_model(src, "qwen3")
    cfg, params = hf.load_pretrained(src, scan_layers=True)
    assert cfg.scan_layers and params["layers"]["attn"]["q_proj"]["kernel"].shape[0] == 2
    hf.save_pretrained(cfg, params, tmp_path / "out", max_shard_bytes=40_000)
    index = json.loads((tmp_path / "out" / hf.INDEX_FILE).read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and all((tmp_path / "out" / f).exists() for f in files)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    sharded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                                dtype=torch.float32)
    batch = _batch(cfg.vocab_size)
    np.testing.assert_array_equal(_hf_logits(sharded.eval(), *batch),
                                  _hf_logits(ref_model.eval(), *batch))
    cfg2, unstacked = hf.load_pretrained(tmp_path / "out")
    assert not cfg2.scan_layers
    jax.tree.map(np.testing.assert_array_equal,
                 transformer.stack_layers(unstacked, cfg.num_layers), params)
    # The scanned model computes the same logits as transformers.
    assert np.abs(_our_logits(cfg, params, *batch) - _hf_logits(ref_model, *batch))[
        batch[1]].max() < 1e-4


def test_bf16_checkpoint(tmp_path):
    model = make_model(tmp_path / "bf16", "qwen2", dtype=torch.bfloat16)
    with safe_open(tmp_path / "bf16" / hf.SINGLE_FILE, framework="numpy") as f:
        assert f.get_slice("model.norm.weight").get_dtype() == "BF16"
    state = {k: v.float().numpy() for k, v in model.state_dict().items()}
    cfg, params = hf.load_pretrained(tmp_path / "bf16")  # upcast to fp32 (the default)
    assert params["embed"]["embedding"].dtype == jnp.float32
    np.testing.assert_array_equal(params["layers_1"]["mlp"]["down_proj"]["kernel"],
                                  state["model.layers.1.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(params["layers_0"]["attn"]["k_proj"]["bias"].reshape(-1),
                                  state["model.layers.0.self_attn.k_proj.bias"])
    cfg16, params16 = hf.load_pretrained(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    assert params16["embed"]["embedding"].dtype == jnp.bfloat16
    # bf16 params save as BF16 and transformers reads back the same weights.
    hf.save_pretrained(cfg16, params16, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert back.model.norm.weight.dtype == torch.bfloat16
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.float().numpy(), state[k], err_msg=k)
    # fp32 logits of the upcast weights match transformers running the same weights in fp32.
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16",
                                                            dtype=torch.float32).eval()
    batch = _batch(cfg.vocab_size)
    assert np.abs(_our_logits(cfg, params, *batch) - _hf_logits(ref, *batch))[
        batch[1]].max() < 1e-4


def test_mesh_load_equals_unsharded(tmp_path):
    assert jax.device_count() == 8
    make_model(tmp_path, "qwen2")
    mesh = parallel.make_mesh((2, 2, 2))
    cfg, sharded = hf.load_pretrained(tmp_path, mesh=mesh)
    _, plain = hf.load_pretrained(tmp_path)
    expected = sharding.param_shardings(cfg, mesh)
    n_split = 0
    for x, y, s in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain),
                       jax.tree.leaves(expected), strict=True):
        assert x.sharding == s
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        shard = x.addressable_shards[0].data
        n_split += shard.shape != x.shape
    assert n_split >= 10  # the kernels really are split, not replicated
    # The sharded params compute the same logits (jitted over the mesh).
    batch = _batch(cfg.vocab_size, lengths=(12, 9, 5, 3))
    fwd = jax.jit(lambda p, t, pos, m: transformer.Transformer(cfg).apply(
        {"params": p}, t, pos, m)[0])
    np.testing.assert_allclose(np.asarray(fwd(sharded, batch[0], batch[2], batch[1]))[batch[1]],
                               _our_logits(cfg, plain, *batch)[batch[1]], atol=1e-5)


# ------------------------------------------------------------------------------ configs

# config.json of published checkpoints (classic layout), as downloaded from the hub.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 128256}
QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896,
    "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
    "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936}
QWEN3_0_6B = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
    "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936}


@pytest.mark.parametrize("config,preset", [(LLAMA_3_2_1B, "llama-3.2-1b"),
                                           (QWEN2_5_0_5B, "qwen2.5-0.5b"),
                                           (QWEN3_0_6B, "qwen3-0.6b")])
def test_published_configs_in_both_layouts(config, preset):
    expected = presets.get(preset)
    classic = hf.config_from_hf(config, name=preset)
    assert classic == expected
    # The same config as transformers 5 writes it (rope_parameters).
    v5 = transformers.AutoConfig.for_model(**config).to_dict()
    assert "rope_parameters" in v5 and "rope_scaling" not in v5
    assert hf.config_from_hf(v5, name=preset) == expected


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "qwen2.5-7b", "qwen3-0.6b"])
def test_config_to_hf_read_by_transformers(preset):
    cfg = presets.get(preset)
    d = hf.config_to_hf(cfg)
    parsed = transformers.AutoConfig.for_model(**d)
    assert type(parsed).__name__ == {"llama": "LlamaConfig", "qwen2": "Qwen2Config",
                                     "qwen3": "Qwen3Config"}[d["model_type"]]
    assert parsed.num_key_value_heads == cfg.num_kv_heads
    assert parsed.rope_parameters["rope_theta"] == cfg.rope_theta
    if cfg.rope_scaling is not None:
        assert parsed.rope_parameters["rope_type"] == "llama3"
        assert parsed.rope_parameters["factor"] == cfg.rope_scaling.factor
    assert hf.config_from_hf(parsed.to_dict(), name=preset) == cfg
    assert hf.config_from_hf(d, name=preset) == cfg


# ------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("qwen2_errors")
    make_model(path, "qwen2")
    return path


def _copy(src: pathlib.Path, dst: pathlib.Path, config_edit=None, tensor_edit=None):
    dst.mkdir()
    d = json.loads((src / "config.json").read_text())
    if config_edit:
        config_edit(d)
    (dst / "config.json").write_text(json.dumps(d))
    with safe_open(src / hf.SINGLE_FILE, framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, str(dst / hf.SINGLE_FILE), metadata={"format": "pt"})
    return dst


def test_error_unsupported_architecture(qwen2_dir, tmp_path):
    bad = _copy(qwen2_dir, tmp_path / "m", lambda d: d.update(
        architectures=["MistralForCausalLM"], model_type="mistral"))
    with pytest.raises(ValueError, match="Unsupported architecture.*MistralForCausalLM"):
        hf.load_pretrained(bad)


def test_error_missing_tensor(qwen2_dir, tmp_path):
    bad = _copy(qwen2_dir, tmp_path / "m",
                tensor_edit=lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load_pretrained(bad)


def test_error_unexpected_tensor(qwen2_dir, tmp_path):
    bad = _copy(qwen2_dir, tmp_path / "m", tensor_edit=lambda t: t.update(
        {"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.0\.self_attn\.o_proj"):
        hf.load_pretrained(bad)


def test_error_shape_mismatch(qwen2_dir, tmp_path):
    bad = _copy(qwen2_dir, tmp_path / "m", lambda d: d.update(intermediate_size=96))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight has shape "
                                         r"\(128, 64\), expected \(96, 64\)"):
        hf.load_pretrained(bad)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                         "rope_theta": 1e4}), "rope type 'yarn'"),
    (lambda d: d.update(hidden_act="gelu"), "hidden_act 'gelu'"),
    (lambda d: d.update(partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
    (lambda d: d.update(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                         "partial_rotary_factor": 0.25}),
     "partial_rotary_factor=0.25"),
    (lambda d: d.update(use_sliding_window=True), "use_sliding_window"),
    (lambda d: d.update(model_type="llama", architectures=["LlamaForCausalLM"],
                        attention_bias=True), "attention_bias"),
])
def test_error_unsupported_config(qwen2_dir, edit, match):
    d = json.loads((qwen2_dir / "config.json").read_text())
    edit(d)
    with pytest.raises(ValueError, match=match):
        hf.config_from_hf(d)


@pytest.mark.parametrize("value", [1.0, None])
def test_config_from_hf_accepts_full_rotary(qwen2_dir, value):
    d = json.loads((qwen2_dir / "config.json").read_text())
    assert hf.config_from_hf({**d, "partial_rotary_factor": value}) == hf.config_from_hf(d)


def test_config_to_hf_rejects_partial_rotary():
    cfg = dataclasses.replace(presets.get("tiny"), partial_rotary_factor=0.5)
    with pytest.raises(ValueError, match="partial_rotary_factor=0.5 has no HF architecture"):
        hf.config_to_hf(cfg)


def test_save_rejects_params_not_matching_config(qwen2_dir, tmp_path):
    cfg, params = hf.load_pretrained(qwen2_dir)
    with pytest.raises(ValueError, match="layers_0/mlp/up_proj/kernel: shape"):
        hf.save_pretrained(dataclasses.replace(cfg, mlp_dim=96), params, tmp_path)


def test_save_with_tokenizer(qwen2_dir, tmp_path):
    make_tokenizer(tmp_path / "tok")
    tok = HFTokenizer.from_pretrained(tmp_path / "tok")
    cfg, params = hf.load_pretrained(qwen2_dir)
    hf.save_pretrained(cfg, params, tmp_path / "out", tokenizer=tok)
    ref_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert ref_tok.apply_chat_template(CONVERSATION, tokenize=False) == (
        tok.apply_chat_template(CONVERSATION))
    gen = transformers.GenerationConfig.from_pretrained(tmp_path / "out")
    assert (gen.eos_token_id, gen.pad_token_id, gen.bos_token_id) == (2, 0, None)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.eos_token_id == 2
    assert HFTokenizer.from_pretrained(tmp_path / "out").stop_ids == (2,)


# ------------------------------------------------------------------------------ memory


def test_load_peak_rss(tmp_path):
    """Loading the ~40M-param `bench` model (162 MB fp32) adds about one checkpoint to the
    process's peak RSS, not two (no second full host copy, no mmap pages left resident)."""
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=1536, vocab_size=32000, max_position_embeddings=2048,
        tie_word_embeddings=True, rope_theta=10000.0)
    transformers.Qwen2ForCausalLM(cfg).float().save_pretrained(tmp_path)
    ckpt_bytes = (tmp_path / hf.SINGLE_FILE).stat().st_size
    script = textwrap.dedent(rf"""
        import json, re, jax
        from lrmjax.models import hf

        def status(field):  # kB -> bytes; VmHWM is the peak RSS of this process image
            text = open("/proc/self/status").read()
            return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024

        jax.numpy.zeros(1).block_until_ready()
        base = status("VmRSS")
        cfg, params = hf.load_pretrained({str(tmp_path)!r})
        jax.block_until_ready(params)
        print(json.dumps(dict(base=base, peak=status("VmHWM"), n=cfg.num_params)))
    """)
    # Not getrusage's ru_maxrss: Linux carries it over from the forked parent (pytest, with
    # torch loaded) across exec; /proc's VmHWM belongs to the new process image only.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["n"] == 40_516_096
    added = r["peak"] - r["base"]
    print(f"checkpoint {ckpt_bytes / 1e6:.1f} MB, peak RSS added by loading "
          f"{added / 1e6:.1f} MB ({added / ckpt_bytes:.2f}x)")
    # One copy plus the runtime's own growth (thread stacks, allocator slack): measured 1.17-1.5x
    # here depending on load. A second full host copy of the weights would be 2x or more.
    assert added < 1.8 * ckpt_bytes
