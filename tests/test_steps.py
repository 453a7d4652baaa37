"""lrmjax.train.steps: response logprobs vs a full forward, SFT and RL updates, gradient
accumulation exactness, the critic update (tiny fp32 model)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrmjax.models import heads, presets, transformer
from lrmjax.rl import algorithms
from lrmjax.train import state as state_lib
from lrmjax.train import steps

CFG = presets.get("tiny", num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                  head_dim=16, mlp_dim=64, vocab_size=32, max_seq_len=32)
P, R = 4, 5
# Left-padded prompts and right-padded responses of different lengths; the two microbatches
# (rows 0, 2 and rows 1, 3: `steps.split_microbatches`) hold different numbers of response
# tokens (4+5 vs 1+3).
PROMPT_LEN = np.array([4, 2, 3, 1])
RESP_LEN = np.array([4, 1, 5, 3])


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(PROMPT_LEN)
    prompt_mask = np.arange(P)[None, :] >= (P - PROMPT_LEN)[:, None]
    resp_mask = np.arange(R)[None, :] < RESP_LEN[:, None]
    mask = np.concatenate([prompt_mask, resp_mask], axis=1)
    tokens = np.where(mask, rng.integers(1, CFG.vocab_size, size=(n, P + R)), 0).astype(np.int32)
    return {"tokens": tokens, "mask": mask, "loss_mask": resp_mask.astype(np.float32),
            "advantages": np.where(resp_mask, rng.normal(size=(n, R)), 0).astype(np.float32)}


@functools.cache
def _params():
    return transformer.init_params(CFG, jax.random.key(0))


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def _reference_logprobs(params, tokens, mask, temperature=1.0) -> np.ndarray:
    """log p(response token) from one full forward: the token at slot P+t is predicted by
    the logits at slot P+t-1."""
    logits, _ = transformer.Transformer(CFG).apply(
        {"params": params}, jnp.asarray(tokens), transformer.positions_from_mask(mask),
        jnp.asarray(mask))
    logp = _np_log_softmax(np.asarray(logits) / temperature)
    out = np.zeros((tokens.shape[0], R))
    for n in range(tokens.shape[0]):
        for t in range(R):
            out[n, t] = logp[n, P + t - 1, tokens[n, P + t]]
    return out


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_full_forward(temperature):
    b = _batch()
    got = steps.response_logprobs(_params(), jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]),
                                  model_cfg=CFG, prompt_len=P, temperature=temperature)
    assert got.shape == (4, R) and got.dtype == jnp.float32
    want = _reference_logprobs(_params(), b["tokens"], b["mask"], temperature)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_sft_step_matches_reference_loss_and_decreases_it():
    b = _batch(1)
    target = np.zeros_like(b["mask"], np.float32)
    target[:, P:] = b["loss_mask"]                           # train on the responses only
    batch = {"tokens": b["tokens"], "mask": b["mask"], "target_mask": target}
    state = state_lib.TrainState.create(_params(), state_lib.adamw(lambda _: 1e-2))
    step = jax.jit(functools.partial(steps.sft_train_step, model_cfg=CFG))
    losses = []
    for _ in range(6):
        state, m = step(state, batch)
        losses.append(float(m["sft/loss"]))
        assert float(m["sft/skipped"]) == 0.0
    # First loss: token-mean cross entropy of the response tokens under the initial params.
    ref = _reference_logprobs(_params(), b["tokens"], b["mask"])
    want = -np.sum(ref * b["loss_mask"]) / np.sum(b["loss_mask"])
    assert losses[0] == pytest.approx(want, rel=1e-5)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < losses[0] - 0.5
    assert int(state.step) == 6


def _rl_batch(seed: int = 2) -> dict[str, np.ndarray]:
    b = _batch(seed)
    rng = np.random.default_rng(seed + 100)
    logp = _reference_logprobs(_params(), b["tokens"], b["mask"]).astype(np.float32)
    # Old and reference policies a little off the current one, so ratios are not all 1, some
    # tokens clip and the KL term is not zero.
    b["old_logprobs"] = logp + 0.3 * rng.normal(size=logp.shape).astype(np.float32)
    b["ref_logprobs"] = logp + 0.2 * rng.normal(size=logp.shape).astype(np.float32)
    return b


# Algorithms under test, by name: each (algorithm, microbatches, on_policy) compiles once.
ALGOS = {
    "token-mean": lambda: algorithms.get("grpo", loss_agg_mode="token-mean"),
    "seq-mean-token-mean": lambda: algorithms.get("grpo"),   # k3 KL loss, beta 0.04
    "ppo": lambda: algorithms.get("ppo"),   # gae + critic, vf_clip 0.5, KL in the reward
}


@functools.cache
def _step_fn(name: str, microbatches: int, on_policy: bool = False):
    return jax.jit(functools.partial(steps.rl_train_step, model_cfg=CFG, algo=ALGOS[name](),
                                     prompt_len=P, temperature=1.0, microbatches=microbatches,
                                     on_policy=on_policy))


@functools.cache
def _sgd(lr: float) -> optax.GradientTransformation:
    # One object per lr: the optimizer is static in TrainState, so a new one would recompile.
    return optax.sgd(lr)


def _rl_step(name, microbatches, *, batch=None, lr=1.0, on_policy=False):
    """(state before, state after, metrics) of one step with SGD (the update is -lr * grad)."""
    params = _params()
    kwargs = {}
    if ALGOS[name]().use_critic:
        kwargs = dict(critic_params=heads.init_from_policy(CFG, params, jax.random.key(3)),
                      critic_tx=_sgd(lr))
    state = state_lib.TrainState.create(params, _sgd(lr), kl_coef=0.04, **kwargs)
    batch = (_critic_batch() if kwargs else _rl_batch()) if batch is None else batch
    return state, *_step_fn(name, microbatches, on_policy)(state, jax.tree.map(jnp.asarray,
                                                                                batch))


@functools.cache
def _default_step(name: str, microbatches: int):
    # The critic's head sees hidden states of norm ~sqrt(D): a smaller step keeps SGD stable.
    return _rl_step(name, microbatches, lr=0.1 if name == "ppo" else 1.0)


def _assert_close_trees(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_gradient_accumulation_is_exact(agg):
    old, s1, m1 = _default_step(agg, 1)
    _, s2, m2 = _default_step(agg, 2)
    # With SGD at lr 1 the update is the gradient itself: compare it exactly.
    _assert_close_trees(s1.params, s2.params, atol=1e-6)
    delta = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(old.params),
                                strict=True))
    assert delta > 1e-3   # the step did move the params
    assert float(m1["actor/loss"]) == pytest.approx(float(m2["actor/loss"]), abs=1e-6)
    assert float(m1["actor/grad_norm"]) == pytest.approx(float(m2["actor/grad_norm"]), rel=1e-5)
    assert float(m1["actor/skipped"]) == float(m2["actor/skipped"]) == 0.0
    assert int(s1.step) == int(s2.step) == 1
    assert "actor/kl_loss" in m1 and float(m1["actor/kl_loss"]) > 0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_loss_reference_for_aggregation(agg):
    """The step's loss equals a numpy PPO-clip objective + 0.04 * k3 KL, both aggregated with
    the mode."""
    _, _, m = _default_step(agg, 1)
    b = _rl_batch()
    logp = _reference_logprobs(_params(), b["tokens"], b["mask"])
    ratio = np.exp(logp - b["old_logprobs"])
    adv, mask = b["advantages"], b["loss_mask"]
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)) * mask
    d = b["ref_logprobs"] - logp
    kl = (np.exp(d) - d - 1) * mask          # k3 estimator of KL(pi || pi_ref)
    if agg == "token-mean":
        reduce = lambda x: x.sum() / mask.sum()
    else:
        reduce = lambda x: np.mean(x.sum(1) / mask.sum(1))
    assert float(m["actor/pg_loss"]) == pytest.approx(reduce(pg), rel=1e-5, abs=1e-6)
    assert float(m["actor/kl_loss"]) == pytest.approx(reduce(kl), rel=1e-5, abs=1e-6)
    assert float(m["actor/loss"]) == pytest.approx(reduce(pg) + 0.04 * reduce(kl), rel=1e-5,
                                                   abs=1e-6)


def test_loss_metrics_do_not_depend_on_microbatches():
    _, _, m1 = _default_step("token-mean", 1)
    _, _, m2 = _default_step("token-mean", 2)
    for key in ("actor/pg_loss", "actor/kl_loss"):
        assert float(m1[key]) == pytest.approx(float(m2[key]), rel=1e-5, abs=1e-6), key


def test_on_policy_equals_passing_current_logprobs():
    b = _rl_batch()
    b_cur = dict(b, old_logprobs=_reference_logprobs(_params(), b["tokens"], b["mask"])
                 .astype(np.float32))
    _, s1, m1 = _rl_step("token-mean", 1, batch=b_cur)
    _, s2, m2 = _rl_step("token-mean", 1, batch=b, on_policy=True)  # b's old_logprobs unused
    _assert_close_trees(s1.params, s2.params, atol=1e-5)
    assert float(m2["actor/ratio_mean"]) == pytest.approx(1.0)
    assert float(m2["actor/pg_clipfrac"]) == 0.0


def _critic_batch(seed: int = 4) -> dict[str, np.ndarray]:
    b = _rl_batch(seed)
    rng = np.random.default_rng(seed)
    b["returns"] = np.where(b["loss_mask"] > 0, rng.normal(size=(4, R)), 0).astype(np.float32)
    b["old_values"] = np.zeros((4, R), np.float32)
    return b


def test_critic_update_and_metrics():
    algo = ALGOS["ppo"]()
    b = _critic_batch()
    old, new, m = _default_step("ppo", 1)
    for key in ("critic/vf_loss", "critic/vf_clipfrac", "critic/vf_explained_var",
                "critic/vpred_mean", "critic/loss", "critic/grad_norm"):
        assert key in m and np.isfinite(float(m[key])), key
    # The head starts at zero, so V = 0 = old_values: the loss is 0.5 * token-mean(R^2).
    mask = b["loss_mask"]
    want = 0.5 * np.sum(b["returns"] ** 2 * mask) / mask.sum()
    assert float(m["critic/vf_loss"]) == pytest.approx(want, rel=1e-5)
    assert float(m["critic/loss"]) == pytest.approx(algo.vf_coef * want, rel=1e-5)
    assert float(m["critic/vpred_mean"]) == 0.0
    # The critic moved (its head first: the trunk gets no gradient through a zero head).
    assert not np.allclose(np.asarray(new.critic_params["head"]["kernel"]), 0.0)
    assert float(m["critic/grad_norm"]) > 0
    # And the values moved toward the returns: the loss at the new params is lower.
    values = steps.response_values(new.critic_params, jnp.asarray(b["tokens"]),
                                   jnp.asarray(b["mask"]), model_cfg=CFG, prompt_len=P)
    new_loss = 0.5 * np.sum((np.asarray(values) - b["returns"]) ** 2 * mask) / mask.sum()
    assert new_loss < want
    assert int(new.step) == 1 and int(new.nonfinite) == 0


def test_critic_gradient_accumulation_is_exact():
    _, s1, m1 = _default_step("ppo", 1)
    _, s2, m2 = _default_step("ppo", 2)
    _assert_close_trees(s1.critic_params, s2.critic_params, atol=1e-6)
    assert float(m1["critic/loss"]) == pytest.approx(float(m2["critic/loss"]), rel=1e-6)


def test_nonfinite_critic_skips_the_whole_update():
    b = _critic_batch()
    b["returns"][0, 0] = np.nan
    old, new, m = _rl_step("ppo", 1, batch=b, lr=0.1)
    assert float(m["actor/skipped"]) == 1.0
    assert int(new.step) == 0 and int(new.nonfinite) == 1
    _assert_close_trees(new.critic_params, old.critic_params, atol=0)
    _assert_close_trees(new.params, old.params, atol=0)


def test_token_logprobs_values_and_gradient_match_autodiff_of_log_softmax():
    """The hand-written backward equals autodiff of the textbook formulas."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 40)).astype(np.float32) * 4)
    targets = jnp.asarray(rng.integers(0, 40, (3, 5)).astype(np.int32))
    g_lp = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))
    g_h = jnp.asarray(rng.normal(size=(3, 5)).astype(np.float32))

    def reference(z):
        logp_all = jax.nn.log_softmax(z, axis=-1)
        logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    def scalar(fn):
        return lambda z: jnp.sum(fn(z)[0] * g_lp) + jnp.sum(fn(z)[1] * g_h)

    ours = steps.token_logprobs(logits, targets)
    ref = reference(logits)
    np.testing.assert_allclose(np.asarray(ours[0]), np.asarray(ref[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours[1]), np.asarray(ref[1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(jax.grad(scalar(lambda z: steps.token_logprobs(z, targets)))(logits)),
        np.asarray(jax.grad(scalar(reference))(logits)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tempered_logits_and_gradient_equal_dividing_the_logits(dtype):
    """`response_logits` at T = 0.7 scales the fp32 hidden states, not the logits (the head
    is linear): values and parameter gradients must equal the untempered logits / T. With
    bf16 activations it divides the fp32 logits, so those match exactly."""
    cfg = presets.get("tiny", num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1,
                      head_dim=16, mlp_dim=64, vocab_size=32, max_seq_len=32, dtype=dtype)
    params = transformer.init_params(cfg, jax.random.key(1))
    b = _batch(2)
    tokens, mask = jnp.asarray(b["tokens"]), jnp.asarray(b["mask"])
    weights = jnp.asarray(np.random.default_rng(3).normal(size=(4, R, CFG.vocab_size)),
                          jnp.float32)

    def scalar(p, temperature, divide_after):
        logits = steps.response_logits(cfg, p, tokens, mask, P, 1.0 if divide_after
                                       else temperature)
        return jnp.sum((logits / temperature if divide_after else logits) * weights)

    got, want = (steps.response_logits(cfg, params, tokens, mask, P, 0.7),
                 steps.response_logits(cfg, params, tokens, mask, P, 1.0) / 0.7)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
    g_got = jax.grad(scalar)(params, 0.7, False)
    g_want = jax.grad(scalar)(params, 0.7, True)
    for path, a in jax.tree_util.tree_leaves_with_path(g_got):
        c = functools.reduce(lambda t, k: t[k.key], path, g_want)
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(c, np.float32),
                                   rtol=1e-4 if dtype == jnp.float32 else 0,
                                   atol=1e-5 if dtype == jnp.float32 else 0,
                                   err_msg=jax.tree_util.keystr(path))


# ------------------------------------------------------------ the LM head in chunks
def test_logits_chunk_sizes():
    assert steps.logits_chunk(1000, 512, 256) == 0  # 2 MB of logits: one pass
    assert steps.logits_chunk(8 * 4096, 151_936, 256) == 441  # 256 MiB / (151,936 * 4 B)
    assert steps.logits_chunk(8 * 4096, 151_936, 0) == 0  # 0: never chunk
    assert steps.logits_chunk(10, 2**20, 1) == 1  # at least one token


def test_chunked_head_equals_one_pass_values_and_gradients():
    import dataclasses

    cfg = dataclasses.replace(presets.get("tiny"), vocab_size=300, hidden_size=16,
                              tie_embeddings=False)
    rng = np.random.default_rng(0)
    params = {"lm_head": {"kernel": jnp.asarray(rng.normal(size=(16, 300)), jnp.float32)}}
    hidden = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 300, (3, 7)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    # 0.005 MB holds 4 tokens' logits: 21 tokens run in 6 chunks, the last one padded.
    assert steps.logits_chunk(21, 300, 0.005) == 4

    def loss(p, h, budget):
        lp, ent = steps.head_logprobs(cfg, p, h, targets, 0.7, budget)
        return jnp.sum(weights[0] * lp) + jnp.sum(weights[1] * ent)

    full = jax.value_and_grad(loss, argnums=(0, 1))(params, hidden, 0)
    chunked = jax.value_and_grad(loss, argnums=(0, 1))(params, hidden, 0.005)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(chunked), strict=True):
        # fp32 rounding only (the head computes in fp32): the sums over tokens run in
        # another order.
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * float(jnp.max(jnp.abs(a)))
    # The reference for the values: numpy's log-softmax of the tempered logits.
    logits = np.asarray(hidden) @ np.asarray(params["lm_head"]["kernel"]) / 0.7
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    expected = np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0] - logz
    lp, _ = steps.head_logprobs(cfg, params, hidden, targets, 0.7, 0.005)
    np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-5)


def test_chunked_head_keeps_qwen_sized_logits_out_of_memory():
    """Qwen2.5's vocabulary over 8 x 4,096 positions: the one-pass loss and gradient hold
    tens of GB of temporaries (the logits and their gradient); in 256 MB chunks, under 2 GB
    (XLA's compiled memory analysis; nothing is allocated)."""
    import dataclasses

    cfg = dataclasses.replace(presets.get("tiny"), vocab_size=151_936, hidden_size=1536,
                              tie_embeddings=False)
    head = {"lm_head": transformer.param_shapes(cfg)["lm_head"]}
    hidden = jax.ShapeDtypeStruct((8, 4096, 1536), jnp.float32)
    targets = jax.ShapeDtypeStruct((8, 4096), jnp.int32)

    def temp_bytes(budget):
        def loss(p, h, t):
            lp, ent = steps.head_logprobs(cfg, p, h, t, 1.0, budget)
            return jnp.mean(lp) + 0.01 * jnp.mean(ent)

        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(
            head, hidden, targets).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(0) > 20 * 10**9
    assert temp_bytes(256) < 2 * 10**9


@pytest.mark.parametrize("microbatches, group", [(4, 1), (2, 4), (1, 2)])
def test_microbatches_take_rows_from_every_device_block(microbatches, group):
    # 64 rows sharded over 8 devices in contiguous blocks of 8: each microbatch takes the
    # same number of rows from every block (so it stays split over all the devices), whole
    # groups of `group` consecutive rows, and every row exactly once.
    rows = np.arange(64)
    micro = np.asarray(steps.split_microbatches({"r": jnp.asarray(rows)}, microbatches,
                                                group)["r"])
    assert micro.shape == (microbatches, 64 // microbatches)
    assert sorted(micro.ravel().tolist()) == rows.tolist()
    np.testing.assert_array_equal(steps.merge_microbatches(micro, group), rows)
    for mb in micro:
        assert (np.bincount(mb // 8, minlength=8) == 8 // microbatches).all()
        groups = mb.reshape(-1, group)
        assert (groups == groups[:, :1] + np.arange(group)).all()
        assert (groups[:, 0] % group == 0).all()


def test_values_in_row_chunks_equal_one_pass():
    b = _critic_batch()
    critic = heads.init_from_policy(CFG, _params(), jax.random.key(3))
    critic["head"]["kernel"] = jnp.ones_like(critic["head"]["kernel"])  # nonzero values
    args = (critic, jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]))
    one = steps.response_values(*args, model_cfg=CFG, prompt_len=P)
    two = steps.response_values(*args, model_cfg=CFG, prompt_len=P, row_chunks=2)
    assert float(jnp.abs(one).max()) > 0
    np.testing.assert_allclose(np.asarray(two), np.asarray(one), rtol=1e-6, atol=1e-6)
