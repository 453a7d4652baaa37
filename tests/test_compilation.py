"""CompileCounter and the memory analysis of compiled programs."""

import jax
import jax.numpy as jnp
import pytest

from lrmjax.train import compilation


def test_counter_counts_each_new_shape_once_by_name():
    def doubled_plus_one(x):
        return 2 * x + 1

    fn = jax.jit(doubled_plus_one)
    x4, x8 = jnp.ones(4), jnp.ones(8)  # made outside: their own programs are not counted
    jax.block_until_ready((x4, x8))
    with compilation.CompileCounter() as counter:
        fn(x4)
        mark = counter.count
        fn(x4)  # cached: no new program
        assert counter.count == mark
        fn(x8)  # a new shape: one more program
        assert counter.new_since(mark) == {"jit(doubled_plus_one)": 1}
    assert counter.names["jit(doubled_plus_one)"] == 2
    assert counter.seconds > 0
    jax.jit(lambda x: x - 1)(x4)  # after exit: the listener is gone
    assert counter.count == 2


def test_memory_analysis_of_a_donating_program():
    x = jnp.ones((256, 256), jnp.float32)  # 0.25 MiB
    compiled = jax.jit(lambda a: a * 3.0, donate_argnums=0).lower(x).compile()
    memory = compilation.memory_mib(compiled)
    if not memory:
        pytest.skip("no memory analysis on this backend")
    assert memory["arguments"] == pytest.approx(0.25)
    assert memory["outputs"] == pytest.approx(0.25)
    assert memory["aliased"] == pytest.approx(0.25)  # the output reuses the donated input
    assert memory["peak"] == pytest.approx(0.25 + memory["temporaries"])
    line = compilation.describe_memory("scale", memory, 1.25)
    assert line.startswith("scale: compiled in 1.2 s; per device ")
    assert "aliased 0.2" in line  # 0.25 printed with one decimal


def test_describe_memory_without_an_analysis():
    assert compilation.describe_memory("step", {}) == (
        "step: compiled; no memory analysis on this backend")
