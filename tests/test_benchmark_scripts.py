"""The benchmark scripts' own logic: module names, the GEMM inventory of floor.py, worker envs."""

import pathlib
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "experiments" / "benchmarks"


def test_no_script_shadows_a_standard_library_module():
    # A script's directory comes first on sys.path, so experiments/benchmarks/profile.py once
    # replaced the stdlib `profile` and broke every `import torch` (cProfile) run from there.
    for folder in (ROOT / "experiments", BENCH_DIR):
        for path in folder.glob("*.py"):
            assert path.stem not in sys.stdlib_module_names, path


def _bench_module(name: str):
    """A script of experiments/benchmarks imported as a module (its folder on sys.path)."""
    import importlib

    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def floor():
    return _bench_module("floor")


def test_weight_shapes_cover_every_matmul_parameter(floor):
    from lrmjax.models import presets

    for name in ("tiny", "bench", "small"):
        cfg = presets.get(name)
        per_layer = sum(k * n for _, k, n in floor.weight_shapes(cfg))
        matmul = cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size
        assert 2 * matmul == cfg.flops_per_token(0), name


@pytest.mark.parametrize("kind", ["fwd", "dx", "dw", "head_fwd", "head_dx", "head_dw"])
def test_gemm_equations_match_numpy(floor, kind):
    M, K, N = 5, 3, 4
    rng = np.random.default_rng(0)
    a_shape, b_shape = floor.operand_shapes(kind, M, K, N)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    x, dy = rng.standard_normal((M, K)), rng.standard_normal((M, N))
    w, table = rng.standard_normal((K, N)), rng.standard_normal((N, K))
    operands, expected = {
        "fwd": ((x, w), x @ w),
        "dx": ((dy, w), dy @ w.T),
        "dw": ((x, dy), x.T @ dy),
        "head_fwd": ((x, table), x @ table.T),
        "head_dx": ((dy, table), dy @ table),
        "head_dw": ((dy, x), dy.T @ x),
    }[kind]
    assert [o.shape for o in operands] == [a.shape, b.shape]
    np.testing.assert_allclose(np.einsum(floor.GEMMS[kind][0], *operands), expected,
                               rtol=1e-12)


@pytest.fixture(scope="module")
def common():
    return _bench_module("common")


def test_worker_env_per_platform(common, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/extra/site")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    cpu = common.worker_env("cpu", "/repo")
    # The repo first, a caller's extra packages kept; one plain CPU device.
    assert cpu["PYTHONPATH"].split(":") == ["/repo", "/extra/site"]
    assert cpu["JAX_PLATFORMS"] == "cpu" and cpu["XLA_FLAGS"] == ""
    gpu = common.worker_env("gpu", "/repo")
    # Several JAX workers share the card: no preallocation; the caller's XLA flags stay.
    assert gpu["JAX_PLATFORMS"] == "cuda" and gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert gpu["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    monkeypatch.delenv("PYTHONPATH")
    assert common.worker_env("cpu", "/repo")["PYTHONPATH"] == "/repo"
    with pytest.raises(ValueError, match="platform"):
        common.worker_env("tpu", "/repo")


@pytest.mark.parametrize("layout", ["transformers4", "transformers5"])
def test_tunix_model_config_reads_both_config_layouts(common, monkeypatch, tmp_path, layout):
    # Tunix is not installed here: a stand-in ModelConfig records what the builder passes it.
    import json
    import types

    model = types.SimpleNamespace(ModelConfig=lambda **kw: kw)
    for name in ("tunix", "tunix.models", "tunix.models.qwen2"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["tunix.models.qwen2"].model = model
    monkeypatch.setitem(sys.modules, "tunix.models.qwen2.model", model)
    c = {"num_hidden_layers": 8, "vocab_size": 32000, "hidden_size": 512,
         "intermediate_size": 1536, "num_attention_heads": 8, "num_key_value_heads": 2,
         "rms_norm_eps": 1e-6, "tie_word_embeddings": True}  # fmt: skip
    c |= ({"rope_theta": 10000.0} if layout == "transformers4"
          else {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}})
    (tmp_path / "config.json").write_text(json.dumps(c))
    assert common.tunix_model_config(tmp_path) == {
        "num_layers": 8, "vocab_size": 32000, "embed_dim": 512, "hidden_dim": 1536,
        "num_heads": 8, "head_dim": 64, "num_kv_heads": 2, "rope_theta": 10000,
        "norm_eps": 1e-6, "use_tied_embedding": True}  # fmt: skip


def test_tunix_workers_build_their_config_in_common():
    # One builder: the scripts that run Tunix call common.tunix_model_config.
    for name in ("vs_peers.py", "grpo_step_tunix.py"):
        text = (BENCH_DIR / name).read_text()
        assert "common.tunix_model_config(" in text and "ModelConfig(" not in text, name


def test_packing_benchmark_draws_lengths_like_a_reasoning_run():
    packing_bench = _bench_module("packing")
    prompt, resp, P, R = packing_bench.lengths(np.random.default_rng(0), 100_000, 1.0)
    assert (P, R) == (256, 4096)
    assert np.median(resp) == pytest.approx(300, rel=0.02)
    assert np.percentile(resp, 95) == pytest.approx(2000, rel=0.03)
    assert resp.min() >= 1 and resp.max() == R and 64 <= prompt.min() and prompt.max() <= P
    prompt, resp, P, R = packing_bench.lengths(np.random.default_rng(0), 1000, 1 / 16)
    assert (P, R) == (16, 256) and resp.max() <= R
