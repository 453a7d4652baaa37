"""LoRA (lrmjax.models.lora, transformer.Projection, and their use in the train step): zero
adapters are the base exactly, merged == unmerged, the adapters' gradient and update are the
full-weight gradient restricted to the low-rank factors (numpy references), a train step moves
only the adapters, sharded == one device, the sampler runs the adapters, and PEFT loads the
exported adapter onto the transformers model with the same logits."""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrmjax import config as config_lib
from lrmjax import parallel, sampling
from lrmjax.models import hf, lora, presets, sharding, transformer
from lrmjax.rewards import base as reward_base
from lrmjax.rl import algorithms
from lrmjax.train import rl, steps
from lrmjax.train import state as state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CFG = presets.get("tiny", num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
                  head_dim=8, mlp_dim=64, vocab_size=40, max_seq_len=32, lora_rank=4,
                  lora_alpha=8.0)
S = CFG.lora_alpha / CFG.lora_rank
P, R = 4, 5


def _tokens(seed: int = 0, shape=(3, 9)):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, CFG.vocab_size, shape).astype(np.int32)
    mask = np.ones(shape, bool)
    mask[0, :3] = False  # a left-padded row
    return jnp.asarray(np.where(mask, tokens, 0)), jnp.asarray(mask)


def _logits(cfg, variables, tokens, mask):
    return transformer.Transformer(cfg).apply(variables, tokens,
                                              transformer.positions_from_mask(mask), mask)[0]


def _random_adapters(cfg, seed: int, scale: float = 0.2):
    """Adapters with A and B both non-zero (a trained state)."""
    ad = lora.init_adapters(cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(ad)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape)
                                     for k, x in zip(keys, leaves, strict=True)])


@functools.cache
def _base(scan: bool = False):
    params = transformer.init_params(dataclasses.replace(CFG, lora_rank=0), jax.random.key(0))
    return transformer.stack_layers(params, CFG.num_layers) if scan else params


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scan_layers"])
def test_zero_adapters_give_exactly_the_base_logits(scan):
    cfg = dataclasses.replace(CFG, scan_layers=scan)
    base = _base(scan)
    adapters = lora.init_adapters(cfg, jax.random.key(1))
    for path, x in jax.tree_util.tree_flatten_with_path(adapters)[0]:
        name = jax.tree_util.keystr(path)
        assert (np.count_nonzero(x) == 0) == name.endswith("['lora_b']"), name  # A random
    tokens, mask = _tokens()
    want = _logits(cfg, {"params": base}, tokens, mask)
    got = _logits(cfg, lora.variables(lora.LoraParams(base, adapters)), tokens, mask)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # Adding the adapters changes no param's init (their keys are made after the params).
    jax.tree.map(np.testing.assert_array_equal, transformer.init_params(cfg, jax.random.key(0)),
                 transformer.init_params(dataclasses.replace(cfg, lora_rank=0),
                                         jax.random.key(0)))


def _np_merged(cfg, base, adapters):
    """W + (alpha / r) A @ B for each adapted kernel, in float64 numpy (per-layer trees)."""
    out = jax.tree.map(lambda x: np.asarray(x, np.float64), base)
    for layer, blocks in adapters.items():
        for block, modules in blocks.items():
            for name, ab in modules.items():
                w = out[layer][block][name]["kernel"]
                a = np.asarray(ab["lora_a"], np.float64)
                b = np.asarray(ab["lora_b"], np.float64)
                upd = a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1)
                out[layer][block][name]["kernel"] = w + S * upd.reshape(w.shape)
    return out


@pytest.mark.parametrize("targets", [presets.ALL_LORA_TARGETS, ("q", "v", "down")])
def test_merged_weights_give_the_adapters_logits(targets):
    cfg = dataclasses.replace(CFG, lora_targets=targets)
    base, adapters = _base(), _random_adapters(cfg, 2)
    modules = {m for layer in adapters.values() for block in layer.values() for m in block}
    assert modules == {presets.LORA_TARGETS[t] for t in targets}
    merged = lora.merge(base, adapters, cfg)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6,
                                                         atol=1e-6),
                 merged, _np_merged(cfg, base, adapters))
    tokens, mask = _tokens(1)
    unmerged = _logits(cfg, lora.variables(lora.LoraParams(base, adapters)), tokens, mask)
    got = _logits(cfg, {"params": merged}, tokens, mask)
    np.testing.assert_allclose(np.asarray(got), np.asarray(unmerged), rtol=1e-5, atol=1e-5)
    plain = _logits(cfg, {"params": base}, tokens, mask)
    assert np.abs(np.asarray(unmerged) - np.asarray(plain)).max() > 0.1  # adapters do act


@pytest.mark.parametrize("layout", ["gate", "q", "o"])
def test_adapter_gradient_and_update_are_the_full_gradient_restricted(layout):
    """One projection, L = 0.5 ||y - t||^2. With G = dL/dW at W_eff = W + s A B (numpy):
    dL/dA = s G B^T and dL/dB = s A^T G (lrmjax's autodiff through the adapters), and one
    SGD step of size eta on (A, B) moves W_eff by -eta s^2 (A A^T G + G B^T B)
    + eta^2 s^3 G B^T A^T G: the full-weight step projected onto the factors' subspaces."""
    D, H, d, F = 32, 4, 8, 64
    shape, axes, num_in, name = {
        "gate": ((D, F), ("embed", "mlp"), 1, "gate_proj"),
        "q": ((D, H, d), ("embed", "heads", "head_dim"), 1, "q_proj"),
        "o": ((H, d, D), ("heads", "head_dim", "embed"), 2, "o_proj"),
    }[layout]
    proj = transformer.Projection(CFG, shape, axes, num_in, fan_in=32, name=name)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, *shape[:num_in])).astype(np.float32)
    t = rng.normal(size=(2, 5, *shape[num_in:])).astype(np.float32)
    variables = nn.meta.unbox(proj.init(jax.random.key(0), x))
    ad = _random_adapters(CFG, 4, 0.3)["layers_0"]["mlp" if layout == "gate" else "attn"][name]
    w = variables["params"]["kernel"]

    def loss(adapters):
        y = proj.apply({"params": {"kernel": w}, "lora": adapters}, x)
        return 0.5 * jnp.sum((y - t) ** 2)

    grads = jax.grad(loss)(ad)
    n_in = int(np.prod(shape[:num_in]))
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    W, A, B = f64(w).reshape(n_in, -1), f64(ad["lora_a"]).reshape(n_in, -1), f64(
        ad["lora_b"]).reshape(CFG.lora_rank, -1)
    X, T = f64(x).reshape(-1, n_in), f64(t).reshape(-1, W.shape[1])
    W_eff = W + S * A @ B
    G = X.T @ (X @ W_eff - T)                    # dL/dW of the merged weight
    np.testing.assert_allclose(f64(grads["lora_a"]).reshape(A.shape), S * G @ B.T, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(f64(grads["lora_b"]).reshape(B.shape), S * A.T @ G, rtol=1e-4,
                               atol=1e-4)
    eta = 1e-3
    stepped = jax.tree.map(lambda p, g: p - eta * g, ad, grads)
    moved = f64(lora.merge({"k": {"kernel": w}}, {"k": stepped}, CFG)["k"]["kernel"])
    want = -eta * S**2 * (A @ A.T @ G + G @ B.T @ B) + eta**2 * S**3 * G @ B.T @ A.T @ G
    np.testing.assert_allclose(moved.reshape(W.shape) - W_eff, want, rtol=2e-3,
                               atol=2e-3 * np.abs(want).max())


def _rl_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = 4
    prompt_mask = np.arange(P)[None, :] >= (P - np.array([4, 2, 3, 1]))[:, None]
    resp_mask = np.arange(R)[None, :] < np.array([4, 1, 5, 3])[:, None]
    mask = np.concatenate([prompt_mask, resp_mask], axis=1)
    tokens = np.where(mask, rng.integers(1, CFG.vocab_size, (n, P + R)), 0).astype(np.int32)
    logp = rng.normal(size=(n, R)).astype(np.float32) - 3.0
    return {"tokens": tokens, "mask": mask, "loss_mask": resp_mask.astype(np.float32),
            "advantages": np.where(resp_mask, rng.normal(size=(n, R)), 0).astype(np.float32),
            "old_logprobs": logp, "ref_logprobs": logp - 0.1}


# The first step of SGD with momentum is -grad; its state (the trace) has the params' leaves.
# One object: the optimizer is static in TrainState.
_SGD = optax.sgd(1.0, momentum=0.9)


@functools.cache
def _step_fn():
    return jax.jit(functools.partial(steps.rl_train_step, model_cfg=CFG,
                                     algo=algorithms.get("grpo"), prompt_len=P,
                                     temperature=1.0))


def test_train_step_moves_only_the_adapters_by_the_projected_full_gradient():
    """With B = 0 and one SGD step (lr 1): the base stays bit for bit; the optimizer state holds
    adapter leaves only; A does not move (dL/dA = s G B^T = 0) and B moves by -s A^T G where
    -G is the full fine-tuning step of the same kernel from the same batch."""
    base, batch = _base(), jax.tree.map(jnp.asarray, _rl_batch())
    adapters = lora.init_adapters(CFG, jax.random.key(5))
    state = state_lib.TrainState.create(adapters, _SGD, frozen=base, kl_coef=0.04)
    new, metrics = _step_fn()(state, batch)
    full = state_lib.TrainState.create(base, _SGD, kl_coef=0.04)
    new_full, full_metrics = _step_fn()(full, batch)
    # The same policy at B = 0: the same loss.
    np.testing.assert_allclose(float(metrics["actor/loss"]), float(full_metrics["actor/loss"]),
                               rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new.frozen, base)
    shapes = {x.shape for x in jax.tree.leaves(adapters)}
    opt_leaves = jax.tree.leaves(new.opt_state)
    assert opt_leaves and all(x.shape in shapes | {()} for x in opt_leaves)
    assert int(new.step) == 1
    for layer in adapters:
        for block in adapters[layer]:
            for name, ab in adapters[layer][block].items():
                got = new.params[layer][block][name]
                np.testing.assert_array_equal(np.asarray(got["lora_a"]), np.asarray(ab["lora_a"]))
                w0 = np.asarray(base[layer][block][name]["kernel"], np.float64)
                w1 = np.asarray(new_full.params[layer][block][name]["kernel"], np.float64)
                a = np.asarray(ab["lora_a"], np.float64)
                a2 = a.reshape(-1, a.shape[-1])
                minus_g = (w1 - w0).reshape(a2.shape[0], -1)
                want = S * a2.T @ minus_g
                np.testing.assert_allclose(np.asarray(got["lora_b"]).reshape(want.shape), want,
                                           rtol=1e-4, atol=1e-6)
                assert np.abs(want).max() > 0


def test_sharded_lora_step_and_logprobs_equal_one_device():
    """8 devices (data 2, fsdp 2, tensor 2), base and adapters in their shardings: the same
    update and log-probs as one device."""
    mesh = parallel.make_mesh((2, 2, 2))
    base, adapters = _base(), _random_adapters(CFG, 6, 0.1)
    batch = jax.tree.map(jnp.asarray, _rl_batch(1))
    state = state_lib.TrainState.create(adapters, _SGD, frozen=base, kl_coef=0.04)
    want_state, want_metrics = _step_fn()(state, batch)
    base_sh = sharding.param_shardings(CFG, mesh)
    ad_sh = sharding.adapter_shardings(CFG, mesh)
    assert ad_sh["layers_0"]["mlp"]["gate_proj"]["lora_a"].spec == jax.sharding.PartitionSpec(
        "fsdp", None)  # like its kernel's input axis; the rank replicated
    placed = parallel.put(state, state_lib.place_state(
        state_lib.TrainState.create(parallel.put(adapters, ad_sh), _SGD,
                                    frozen=parallel.put(base, base_sh), kl_coef=0.04),
        mesh)[1])
    sh_batch = parallel.put(batch, parallel.batch_sharding(mesh))
    got_state, got_metrics = _step_fn()(placed, sh_batch)
    assert len(got_state.params["layers_0"]["attn"]["q_proj"]["lora_b"].sharding.device_set) == 8
    for k in ("actor/loss", "actor/grad_norm"):
        np.testing.assert_allclose(float(got_metrics[k]), float(want_metrics[k]), rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y),
                                                         rtol=1e-5, atol=1e-6),
                 got_state.params, want_state.params)
    logprobs = functools.partial(steps.response_logprobs, model_cfg=CFG, prompt_len=P)
    got = jax.jit(logprobs)(placed.policy, sh_batch["tokens"], sh_batch["mask"])
    want = logprobs(state.policy, batch["tokens"], batch["mask"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_the_sampler_runs_the_adapters():
    """Greedy decoding from base + adapters equals decoding from the merged weights (and not
    the base's): the sampler sees the adapters in every step."""
    base, adapters = _base(), _random_adapters(CFG, 7, 0.5)
    tokens, mask = _tokens(2, (4, 6))
    gen = functools.partial(sampling.generate, key=jax.random.key(0), cfg=CFG,
                            sampling=sampling.SamplingParams(temperature=0.0, max_new_tokens=8),
                            stop_ids=(), pad_id=0)
    got = gen(lora.LoraParams(base, adapters), tokens, mask)
    merged = gen(lora.merge(base, adapters, CFG), tokens, mask)
    plain = gen(base, tokens, mask)
    np.testing.assert_array_equal(np.asarray(got.response_tokens),
                                  np.asarray(merged.response_tokens))
    np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(merged.logprobs), atol=1e-4)
    assert not np.array_equal(np.asarray(got.response_tokens), np.asarray(plain.response_tokens))


def test_peft_tensors_of_stacked_and_per_layer_adapters_agree():
    adapters = _random_adapters(CFG, 8)
    stacked = transformer.stack_layers(adapters, CFG.num_layers)
    a = hf.peft_tensors(CFG, adapters)
    b = hf.peft_tensors(dataclasses.replace(CFG, scan_layers=True), stacked)
    assert sorted(a) == sorted(b) and len(a) == 2 * 7 * CFG.num_layers
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    q = a["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert q.shape == (CFG.num_heads * CFG.head_dim, CFG.lora_rank)
    o = a["base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight"]
    assert o.shape == (CFG.lora_rank, CFG.num_heads * CFG.head_dim)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_peft_loads_the_adapter_onto_transformers_with_the_same_logits(arch, tmp_path):
    """The reference is peft's LoRA layers on transformers' model, not lrmjax."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from hf_fixtures import make_model

    make_model(tmp_path / "base", arch)
    cfg, base = hf.load_pretrained(tmp_path / "base")
    cfg = dataclasses.replace(cfg, lora_rank=4, lora_alpha=16.0,
                              lora_targets=("q", "k", "v", "o", "gate", "down"))
    adapters = _random_adapters(cfg, 9, 0.3)
    hf.save_peft_adapter(cfg, adapters, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (2, 11)).astype(np.int32)
    mask = np.ones_like(tokens, bool)
    ours = _logits(cfg, lora.variables(lora.LoraParams(base, adapters)), jnp.asarray(tokens),
                   jnp.asarray(mask))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base",
                                                              dtype=torch.float32).eval()
    with torch.no_grad():
        plain = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    model = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    assert model.peft_config["default"].r == 4
    with torch.no_grad():
        theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), theirs, rtol=1e-4, atol=1e-4)
    assert np.abs(theirs - plain).max() > 0.1  # peft applied non-trivial adapters
    # The merged export is the same model for plain transformers.
    hf.save_pretrained(cfg, lora.merge(base, adapters, cfg), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged",
                                                               dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_demo_task_learns_with_lora(tmp_path):
    """`make demo`'s config (full SFT warm start, then GRPO on 3-digit addition) with rank-8
    adapters at 10x its learning rate: 100 RL steps raise held-out greedy pass@1 by more than
    5 points (seed 0 on one CPU device: 0.320 -> 0.446). About two minutes on 2 cores."""
    cfg = config_lib.from_file(os.path.join(REPO, "configs", "arith_grpo.py"))
    cfg.model.lora.rank = 8
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 5
    cfg.train.steps = 100
    cfg.eval.every, cfg.eval.k = 0, 0
    cfg.train.progress = False
    rl.train(cfg, str(tmp_path))
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    before, after = (summary[k]["eval/greedy_pass@1"] for k in ("before", "after"))
    assert after > before + 0.05, (before, after)


@reward_base.register("test_lora_length_parity")
def _length_parity(prompts, completions, metadata):
    """Rewards that differ within a group of random completions: advantages that move B."""
    return [float(len(c) % 2) for c in completions]


@pytest.mark.slow  # 1-3 minutes on the shared 2-core machine
def test_a_lora_run_exports_merged_weights_and_a_peft_adapter_that_agree(tmp_path):
    """The real-model config's CPU variant (a tiny random Qwen2 checkpoint) with LoRA: the
    run's `hf_export/` (merged) under transformers and its `hf_adapter/` under peft on the
    base checkpoint give the same logits, away from the base's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = config_lib.from_file(os.path.join(REPO, "configs", "gsm8k_grpo_qwen2_5_1_5b.py"),
                               "runlocal")
    cfg.model.lora.rank, cfg.model.lora.targets = 4, ("q", "v", "o", "down")
    cfg.reward.fns = {"test_lora_length_parity": 1.0}
    cfg.optim.lr, cfg.optim.warmup_steps = 0.05, 0   # a few large steps: B far from 0
    cfg.train.steps, cfg.eval.size, cfg.eval.k = 2, 4, 0
    cfg.train.progress = False
    rl.train(cfg, str(tmp_path))
    with open(tmp_path / "hf_adapter" / "adapter_config.json") as f:
        adapter_cfg = json.load(f)
    assert adapter_cfg["r"] == 4 and adapter_cfg["target_modules"] == [
        "down_proj", "o_proj", "q_proj", "v_proj"]
    base_path = adapter_cfg["base_model_name_or_path"]  # the tiny checkpoint in the workdir
    tokens = torch.tensor(np.random.default_rng(0).integers(0, 200, (2, 12)))

    def logits(model):
        with torch.no_grad():
            return model.eval()(tokens).logits.numpy()

    load = functools.partial(transformers.AutoModelForCausalLM.from_pretrained,
                             dtype=torch.float32)
    base = logits(load(base_path))
    merged = logits(load(tmp_path / "hf_export"))
    adapted = logits(peft.PeftModel.from_pretrained(load(base_path), tmp_path / "hf_adapter"))
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)
    assert np.abs(adapted - base).max() > 1e-2
