"""lrmjax.models.sharding: params created straight into their shardings on 8 faked CPU
devices, and a sharded forward that equals the single-device one."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lrmjax import parallel
from lrmjax.models import presets, sharding, transformer

CFG = presets.ModelConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=16, mlp_dim=128, qkv_bias=True,
                          max_seq_len=64)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh((2, 2, 2))


def test_sharded_init_follows_the_rules(mesh):
    params = sharding.init_sharded_params(CFG, jax.random.key(0), mesh)
    spec = lambda x: x.sharding.spec  # noqa: E731
    layer = params["layers_0"]
    assert spec(params["embed"]["embedding"]) == P("tensor", "fsdp")
    assert spec(layer["mlp"]["gate_proj"]["kernel"]) == P("fsdp", "tensor")
    assert spec(layer["mlp"]["down_proj"]["kernel"]) == P("tensor", "fsdp")
    assert spec(layer["attn"]["q_proj"]["kernel"]) == P("fsdp", "tensor", None)
    assert spec(layer["attn"]["k_proj"]["kernel"]) == P("fsdp", "tensor", None)
    assert spec(layer["attn"]["o_proj"]["kernel"]) == P("tensor", None, "fsdp")
    assert spec(layer["attn_norm"]["scale"]) == P("fsdp")
    for x in jax.tree.leaves(params):  # really split: each device holds a fraction
        shard = x.addressable_shards[0].data
        assert shard.size * np.prod([mesh.shape[a] for a in _axes(spec(x))]) == x.size
    # Same values as an unsharded init with the same key (to float rounding).
    ref = transformer.init_params(CFG, jax.random.key(0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=1e-6, atol=1e-7), params, ref)


def _axes(spec):
    out = []
    for entry in spec:
        if entry is not None:
            out += [entry] if isinstance(entry, str) else list(entry)
    return out


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens, mask):
    return transformer.Transformer(cfg).apply(
        {"params": params}, tokens, transformer.positions_from_mask(mask), mask)[0]


def test_sharded_forward_equals_single_device(mesh):
    params = sharding.init_sharded_params(CFG, jax.random.key(1), mesh)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, CFG.vocab_size, (8, 10)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    mask[::2, :3] = False
    shard = parallel.batch_sharding(mesh)
    sharded = _forward(CFG, params, jax.device_put(tokens, shard), jax.device_put(mask, shard))
    single = jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), params)
    ref = _forward(CFG, single, jnp.asarray(tokens), jnp.asarray(mask))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(sharded)[mask], np.asarray(ref)[mask], atol=1e-5)
