"""Mesh construction, logical-axis rules and the multi-host helpers on 8 faked CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lrmjax import parallel


def test_eight_devices():
    assert jax.device_count() == 8, "tests/conftest.py fakes 8 CPU devices"


def test_mesh_shape_fills_minus_one():
    assert parallel.mesh_shape((-1, 2, 2), 8) == (2, 2, 2)
    assert parallel.mesh_shape((1, -1, 1), 8) == (1, 8, 1)
    assert parallel.mesh_shape({"tensor": 2, "data": -1}, 8) == (4, 1, 2)
    mesh = parallel.make_mesh((-1, 1, 2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("shape,match", [
    ((3, -1, 1), "does not divide"),
    ((2, 2, 1), "needs 4 devices"),
    ((-1, -1, 2), "at most one"),
    ((2, 2), "3 entries"),
    ({"model": 2}, "Unknown mesh axes"),
])
def test_bad_mesh_is_a_clear_error(shape, match):
    with pytest.raises(ValueError, match=match):
        parallel.mesh_shape(shape, 8)


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh((2, 2, 2))


def test_logical_to_spec(mesh):
    assert parallel.logical_to_spec(("embed", "mlp"), (64, 128), mesh) == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("vocab", "embed"), (96, 64), mesh) == P("tensor", "fsdp")
    assert parallel.logical_to_spec(("batch", None), (8, 5), mesh) == P(("data", "fsdp"), None)
    # Falls back to replication where the axis does not divide the dimension ...
    assert parallel.logical_to_spec(("kv_heads", "head_dim"), (3, 16), mesh) == P(None, None)
    assert parallel.logical_to_spec(("batch",), (6,), mesh) == P("data")
    # ... and uses a mesh axis at most once per array.
    assert parallel.logical_to_spec(("mlp", "heads"), (4, 4), mesh) == P("tensor", None)
    with pytest.raises(ValueError, match="no sharding rule"):
        parallel.logical_to_spec(("bogus",), (4,), mesh)


def test_batch_sharding_and_divisor(mesh):
    assert parallel.batch_divisor(mesh) == 4
    assert parallel.batch_sharding(mesh, ndim=3).spec == P(("data", "fsdp"), None, None)
    assert parallel.batch_divisor(parallel.make_mesh((1, 1, 8))) == 1
    assert parallel.batch_sharding(parallel.make_mesh((1, 1, 8))).spec == P(None, None)


def test_single_host_helpers_are_device_put_and_numpy(mesh):
    """With one process the multi-host helpers reduce to device_put / np.asarray."""
    local = np.arange(24, dtype=np.int32).reshape(8, 3)
    arr = parallel.host_to_global(local, mesh)
    assert arr.sharding == parallel.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(arr), local)
    assert parallel.host_row_block(mesh, 8) == slice(0, 8)
    np.testing.assert_array_equal(parallel.global_to_host({"x": arr})["x"], local)
    np.testing.assert_array_equal(parallel.global_to_host(local), local)
    key = parallel.put(jax.random.key(3), parallel.replicated(mesh))
    assert jax.random.key_data(key).tolist() == jax.random.key_data(jax.random.key(3)).tolist()
    out = parallel.apply_to_host_rows(jax.jit(lambda p, x: x * p), jnp.int32(2), local,
                                      mesh=mesh)
    np.testing.assert_array_equal(out, 2 * local)

