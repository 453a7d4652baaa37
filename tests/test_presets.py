"""Presets: full-size parameter counts equal the published ones (shapes only, via eval_shape)."""

import dataclasses

import pytest

from lrmjax.models import presets, transformer

# Published parameter counts (HF model cards / safetensors metadata), plus our own CPU presets.
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
    "bench": 40_516_096,
    "tiny": 854_144,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published(name):
    cfg = presets.get(name)
    shapes = transformer.param_shapes(cfg)  # jax.eval_shape: allocates nothing
    assert transformer.count_params(shapes) == PUBLISHED[name]
    assert cfg.num_params == PUBLISHED[name]
    assert cfg.name == name


def test_other_presets_build_shapes():
    for name in sorted(set(presets.PRESETS) - set(PUBLISHED)):
        cfg = presets.get(name)
        assert transformer.count_params(transformer.param_shapes(cfg)) == cfg.num_params


def test_unknown_preset_names_it():
    with pytest.raises(ValueError, match="qwen9-1t"):
        presets.get("qwen9-1t")


def test_overrides_and_unknown_field():
    assert presets.get("tiny", num_layers=2).num_layers == 2
    with pytest.raises(ValueError, match="num_layerz"):
        presets.get("tiny", num_layerz=2)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="num_kv_heads"):
        dataclasses.replace(presets.get("tiny"), num_kv_heads=3)
    with pytest.raises(ValueError, match="hidden_size"):
        dataclasses.replace(presets.get("tiny"), hidden_size=0)


def test_flops_per_token_by_hand():
    cfg = presets.get("tiny")  # d=128, H=4, K=2, hd=32, F=384, L=4, V=512
    per_layer = 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 384  # q,o + k,v + gate,up,down
    assert cfg.flops_per_token() == 2 * (4 * per_layer + 512 * 128)
    # attention: per layer, q.k and p.v over 100 keys, 2 FLOPs each, H*hd wide
    assert cfg.flops_per_token(100) - cfg.flops_per_token() == 4 * 2 * 2 * 4 * 32 * 100
