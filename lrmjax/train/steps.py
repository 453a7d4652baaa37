"""Device-side pieces of training: per-token logprobs, the RL update and the SFT update.

Every function here is a pure module-level function of arrays and static settings, jitted by
the trainer with explicit shardings (`jax.jit(partial(fn, **static), in_shardings=...,
out_shardings=..., donate_argnums=...)`), and callable directly from tests.

The RL update trains on the batch `lrmjax.train.update_batch` builds (its docstring
states the layout).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lrmjax import parallel
from lrmjax.models import heads, lora
from lrmjax.models.presets import ModelConfig
from lrmjax.models.transformer import Transformer, positions_from_mask, tempered_lm_head
from lrmjax.rl import losses
from lrmjax.train import packing
from lrmjax.train.state import TrainState, guarded_update, policy_params

Array = jax.Array


# The default most bytes of fp32 logits one chunk of `head_logprobs` holds.
LOGITS_CHUNK_MB = 256


def response_hidden(model_cfg: ModelConfig, params: Any, tokens: Array, mask: Array,
                    prompt_len: int, group_size: int = 1) -> Array:
    """Final hidden states that predict each response token: [N, R, D].

    The token at slot P+t is predicted by the output at slot P+t-1. With `group_size` n > 1
    the rows must come in groups of n consecutive rows with the same prompt (the sampler's
    layout), and each group's prompt runs once (`grouped_hidden`).
    """
    if group_size > 1:
        return grouped_hidden(model_cfg, params, tokens, mask, prompt_len, group_size)
    hidden, _ = Transformer(model_cfg).apply(lora.variables(params), tokens,
                                            positions_from_mask(mask), mask,
                                            return_hidden=True)
    return hidden[:, prompt_len - 1:-1]


def response_logits(model_cfg: ModelConfig, params: Any, tokens: Array, mask: Array,
                    prompt_len: int, temperature: float = 1.0, group_size: int = 1) -> Array:
    """Logits that predict each response token: [N, R, V] float32, divided by the sampling
    temperature so the trainer's distribution is the one the sampler drew from."""
    hidden = response_hidden(model_cfg, params, tokens, mask, prompt_len, group_size)
    # `tempered_lm_head` divides the [.., D] hidden states rather than the logits by T.
    return tempered_lm_head(model_cfg, lora.base_params(params), hidden, temperature)


def logits_chunk(num_tokens: int, vocab: int, budget_mb: float) -> int:
    """Tokens per chunk of `head_logprobs`: 0 (one pass) when the [num_tokens, vocab] fp32
    logits fit `budget_mb`, else as many tokens as fit it (at least 1)."""
    if budget_mb <= 0 or num_tokens * vocab * 4 <= budget_mb * 2**20:
        return 0
    return max(1, int(budget_mb * 2**20) // (vocab * 4))


def head_logprobs(model_cfg: ModelConfig, params: Any, hidden: Array, targets: Array,
                  temperature: float = 1.0, budget_mb: float = LOGITS_CHUNK_MB
                  ) -> tuple[Array, Array]:
    """log p(target) and the entropy of each position's distribution under the LM head:
    hidden [..., D] and targets [...] -> two [...] float32 (`token_logprobs` of the tempered
    logits).

    When the logits of all positions would exceed `budget_mb` (fp32), the positions are
    flattened and run in chunks of `logits_chunk` tokens through a `lax.map` whose body is
    rematerialized (`jax.checkpoint`): no [tokens, V] array exists in full, forward or
    backward (the backward recomputes each chunk's logits), and the values and gradients
    are the one-pass ones. For Qwen2.5's 151,936-token vocabulary a 256 MB chunk is 441
    tokens; 8 x 4,096 positions would otherwise hold 20 GB of logits.
    """
    params = lora.base_params(params)  # the head has no adapters
    lead, D = targets.shape, hidden.shape[-1]
    T = math.prod(lead)
    c = logits_chunk(T, model_cfg.vocab_size, budget_mb)
    if c == 0:
        return token_logprobs(tempered_lm_head(model_cfg, params, hidden, temperature),
                              targets)
    k = -(-T // c)
    pad = k * c - T
    h = jnp.pad(hidden.reshape(T, D), ((0, pad), (0, 0))).reshape(k, c, D)
    t = jnp.pad(targets.reshape(T), (0, pad)).reshape(k, c)

    @jax.checkpoint
    def chunk(x):
        return token_logprobs(tempered_lm_head(model_cfg, params, x[0], temperature), x[1])

    logp, entropy = jax.lax.map(chunk, (h, t))
    return logp.reshape(-1)[:T].reshape(lead), entropy.reshape(-1)[:T].reshape(lead)


def grouped_hidden(model_cfg: ModelConfig, params: Any, tokens: Array, mask: Array,
                   prompt_len: int, group_size: int) -> Array:
    """Final hidden states at slots P-1 .. P+R-2 (those that predict the R response tokens),
    [N, R, D], computing each group's shared prompt once ("shared-prefix" forward, as in
    Prefix Grouper, Liu et al. 2025).

    tokens/mask [N, P+R] hold N = B*n rows, n = group_size consecutive rows per prompt. Each
    group becomes one row of the model's input: the prompt, then the n responses without
    their last token (it predicts nothing), [B, P + n*(R-1)]; per-token ops see each prompt
    token once and `transformer.grouped_attention` lets every response read its prompt's
    keys. The result and its gradient equal a full forward's (autodiff sums the n responses'
    gradients into the shared prompt), for 1/n of the prompt's FLOPs: for 8 prompts x 4
    responses of 32 + 64 slots, 2,272 token-passes instead of 3,072.
    """
    N, L = tokens.shape
    n, P = group_size, prompt_len
    if N % n:
        raise ValueError(f"{N} rows are not whole groups of {n}")
    B, R = N // n, L - P
    positions = positions_from_mask(mask)

    def grouped(x):  # [N, L] -> [B, P + n*(R-1)]: the prompt, then each response but its last
        x = x.reshape(B, n, L)
        return jnp.concatenate([x[:, 0, :P], x[:, :, P:L - 1].reshape(B, n * (R - 1))], axis=1)

    hidden, _ = Transformer(model_cfg, groups=(P, n)).apply(
        lora.variables(params), grouped(tokens), grouped(positions), grouped(mask),
        return_hidden=True)
    D = hidden.shape[-1]
    last_prompt = jnp.repeat(hidden[:, P - 1:P], n, axis=0)            # predicts slot P
    responses = hidden[:, P:].reshape(N, R - 1, D)  # empty when R == 1
    return jnp.concatenate([last_prompt, responses], axis=1)


def shared_prompt_groups(cfg: ml_collections.ConfigDict, mesh: Any) -> tuple[int, int]:
    """Group sizes for the shared-prompt forward (`steps.grouped_hidden`) of the logprob
    passes and of the update: sampling.n when `train.shared_prompt_forward` is on (and
    `train.pack_tokens` off: packed rows hold each sequence whole), else 1.

    The reference/old logprob passes see the whole step's batch, group-major as sampled, in
    `train.logprob_microbatches` slices (`in_row_chunks`). The update shares prompts only
    with one minibatch (several shuffle the rows apart), and each
    pass only when its prompts (of a slice) split evenly over the batch shards (each device
    then holds whole groups: no communication)."""
    n = cfg.sampling.n
    if not cfg.train.shared_prompt_forward or n == 1 or cfg.train.pack_tokens:
        return 1, 1
    shards = parallel.batch_divisor(mesh)
    prompts = cfg.train.batch_prompts  # global
    logprob = n if prompts % (shards * cfg.train.logprob_microbatches) == 0 else 1
    per_micro, rest = divmod(prompts, cfg.train.microbatches)
    update = (n if cfg.train.minibatches == 1 and rest == 0 and per_micro % shards == 0
              else 1)
    return logprob, update


@jax.custom_vjp
def token_logprobs(logits: Array, targets: Array) -> tuple[Array, Array]:
    """log p(target) and the entropy of each distribution: logits [..., V] -> two [...].

    With a hand-written backward: autodiff of log_softmax + take_along_axis + entropy builds
    a scatter and several [..., V] temporaries; here the gradient is one fused elementwise
    pass over the logits.
    """
    return _token_logprobs_fwd(logits, targets)[0]


def _token_logprobs_fwd(logits, targets):
    top = jnp.max(logits, axis=-1, keepdims=True)
    shifted = logits - top
    exp = jnp.exp(shifted)
    total = jnp.sum(exp, axis=-1, keepdims=True)
    lse = jnp.log(total) + top                                  # [..., 1]
    logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - lse[..., 0]
    # H = lse - sum_v p_v z_v
    entropy = lse[..., 0] - jnp.sum(exp * logits, axis=-1) / total[..., 0]
    return (logp, entropy), (logits, targets, lse, entropy)


def _token_logprobs_bwd(res, grads):
    logits, targets, lse, entropy = res
    g_logp, g_entropy = grads
    logp_all = logits - lse
    p = jnp.exp(logp_all)
    onehot = jnp.arange(logits.shape[-1]) == targets[..., None]
    # d log p_t / dz = onehot - p;  dH / dz = -p (log p + H)
    d = (jnp.where(onehot, g_logp[..., None], 0.0) - p * g_logp[..., None]
         - g_entropy[..., None] * p * (logp_all + entropy[..., None]))
    return d.astype(logits.dtype), None


token_logprobs.defvjp(_token_logprobs_fwd, _token_logprobs_bwd)


def response_head(model_cfg: ModelConfig, params: Any, tokens: Array, mask: Array,
                  prompt_len: int, temperature: float = 1.0, group_size: int = 1,
                  logits_chunk_mb: float = LOGITS_CHUNK_MB,
                  pack: dict[str, Array] | None = None) -> tuple[Array, Array]:
    """log p and entropy of each response token, two [N, R] float32: `response_hidden`
    (`group_size` as there) then `head_logprobs`. With a packing plan `pack`
    (`packing.plan`) the model and the head run on the packed rows and the outputs are
    unpacked to [N, R] (0 where the response has no token)."""
    if pack is not None:
        hidden, targets = packing.packed_hidden(model_cfg, params, tokens, pack)
        logp, entropy = head_logprobs(model_cfg, params, hidden, targets, temperature,
                                      logits_chunk_mb)
        R = tokens.shape[1] - prompt_len
        return packing.unpack(logp, pack, R), packing.unpack(entropy, pack, R)
    hidden = response_hidden(model_cfg, params, tokens, mask, prompt_len, group_size)
    return head_logprobs(model_cfg, params, hidden, tokens[:, prompt_len:], temperature,
                         logits_chunk_mb)


def response_logprobs(params: Any, tokens: Array, mask: Array,
                      pack: dict[str, Array] | None = None, *, model_cfg: ModelConfig,
                      prompt_len: int, temperature: float = 1.0, group_size: int = 1,
                      logits_chunk_mb: float = LOGITS_CHUNK_MB, row_chunks: int = 1) -> Array:
    """Per-token logprobs of the responses [N, R] (old-policy or reference logprobs);
    `group_size` and `pack` as in `response_head`, the head in chunks as `head_logprobs`, the
    rows (unpacked) in `row_chunks` chunks as `in_row_chunks`."""
    if pack is not None:  # the packing plan already bounds the rows a forward holds
        return response_head(model_cfg, params, tokens, mask, prompt_len, temperature,
                             group_size, logits_chunk_mb, pack)[0]

    def one(tokens, mask):
        return response_head(model_cfg, params, tokens, mask, prompt_len, temperature,
                             group_size, logits_chunk_mb)[0]

    return in_row_chunks(one, tokens, mask, row_chunks, group_size)


def in_row_chunks(fn: Any, tokens: Array, mask: Array, chunks: int, group_size: int = 1
                  ) -> Array:
    """`fn(tokens, mask) -> [N, ...]` run on `chunks` slices of the rows one after another
    (a `lax.map` over `split_microbatches`), its results put back in row order: a forward
    pass then holds the activations of N / chunks rows at a time, each slice still split
    over the devices. Whole groups of `group_size` rows stay together."""
    if chunks == 1:
        return fn(tokens, mask)
    parts = split_microbatches({"tokens": tokens, "mask": mask}, chunks, group_size)
    out = jax.lax.map(lambda p: fn(p["tokens"], p["mask"]), parts)     # [chunks, N/chunks, ...]
    return merge_microbatches(out, group_size)


def response_token_stats(params: Any, tokens: Array, mask: Array, *, model_cfg: ModelConfig,
                         prompt_len: int, temperature: float = 1.0) -> dict[str, Array]:
    """Per-token statistics of the policy on the responses, for unsupervised rewards:
    token_logprobs, token_entropies and self_certainty = KL(U || p) = -log V - mean_v log p_v
    (Zhao et al. 2025, INTUITOR, eq. 4), each [N, R]."""
    logits = response_logits(model_cfg, params, tokens, mask, prompt_len, temperature)
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[:, prompt_len:, None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    vocab = logits.shape[-1]
    certainty = -jnp.log(vocab) - jnp.mean(logp_all, axis=-1)
    return {"token_logprobs": logp, "token_entropies": entropy, "self_certainty": certainty}


def response_values(critic_params: Any, tokens: Array, mask: Array,
                    pack: dict[str, Array] | None = None, *, model_cfg: ModelConfig,
                    prompt_len: int, row_chunks: int = 1) -> Array:
    """Critic values V(s_t) for each response token [N, R] (same shift as the logits), from
    the packed rows of `pack` when given (`packing.packed_values`), else the rows in
    `row_chunks` chunks (`in_row_chunks`)."""
    if pack is not None:
        return packing.packed_values(model_cfg, critic_params, tokens, pack,
                                     tokens.shape[1] - prompt_len)

    def one(tokens, mask):
        return heads.token_values(model_cfg, critic_params, tokens, mask)[:, prompt_len - 1:-1]

    return in_row_chunks(one, tokens, mask, row_chunks)


def split_microbatches(batch: dict[str, Array], microbatches: int, group_size: int = 1
                       ) -> dict[str, Array]:
    """[N, ...] -> [M, N/M, ...]: microbatch j holds the groups of `group_size` consecutive
    rows whose index is j modulo M (rows j, j+M, ... when group_size is 1).

    Strided, not contiguous: the batch is sharded in contiguous blocks of rows, one per
    device, and a stride keeps every microbatch spread over all of them (each device keeps
    its own rows; no communication). Contiguous slices put a microbatch on 1/M of the
    devices, so XLA gathered each one onto more devices and the train step computed (and
    held the activations of) each device's rows several times over.
    """
    def split(x):
        N, g = x.shape[0], group_size
        x = x.reshape(N // (microbatches * g), microbatches, g, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1).reshape(microbatches, N // microbatches, *x.shape[3:])

    return jax.tree.map(split, batch)


def merge_microbatches(x: Array, group_size: int = 1) -> Array:
    """The inverse of `split_microbatches` for one array: [M, N/M, ...] -> [N, ...]."""
    M, per = x.shape[:2]
    x = x.reshape(M, per // group_size, group_size, *x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape(M * per, *x.shape[3:])


def rl_train_step(state: TrainState, batch: dict[str, Array], *, model_cfg: ModelConfig,
                  algo: ml_collections.ConfigDict, prompt_len: int, temperature: float,
                  microbatches: int = 1, on_policy: bool = False, group_size: int = 1,
                  logits_chunk_mb: float = LOGITS_CHUNK_MB
                  ) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step of the policy (and the critic, when there is one) on a minibatch.

    Gradients are taken with respect to `state.params` only (under LoRA the adapters: the
    frozen base gets no gradient and no optimizer state) and accumulated over `microbatches`
    slices (`split_microbatches`: strided, so each stays spread over the devices; with
    packing, the plan's blocks) with a `lax.scan`. The loss of each slice is divided by the
    *whole minibatch's* aggregation denominator, so the accumulated gradient equals the
    full-minibatch gradient for every aggregation mode. A non-finite loss
    or gradient leaves params and optimizer state unchanged and counts in `state.nonfinite`.
    With `on_policy` (one epoch, one minibatch: the params are the rollout params) the old
    logprobs are the current ones under stop_gradient, which saves a forward pass. With
    `group_size` n > 1 every microbatch holds whole groups of n rows sharing a prompt, and the
    policy runs each prompt once (`response_hidden`). The LM head runs in chunks when a
    microbatch's logits would exceed `logits_chunk_mb` (`head_logprobs`). With a packing
    plan in `batch["pack"]` (`packing.plan`) the microbatches are its blocks instead of
    `microbatches` row slices, each the minibatch's loss narrowed to the block's sequences
    (`packing.micro_view`): the forwards run on packed rows, the loss on the unpacked
    [N, R] outputs, and the sum over blocks is the padded loss.

    Returns the new state and a flat dict of scalar metrics (verl-style names).
    """
    response_len = batch["loss_mask"].shape[1]
    denom = losses.loss_denominator(algo, batch["loss_mask"], response_len)
    packed = "pack" in batch
    micro = (packing.micro_slices(batch["pack"]) if packed
             else split_microbatches(batch, microbatches, group_size))
    use_kl_loss = algo.kl_mode == "loss"

    def actor_loss_fn(params, mb):  # params: the trainable ones (under LoRA the adapters)
        params = policy_params(state.frozen, params)
        mb = packing.micro_view(batch, mb) if packed else mb
        logp, entropy = response_head(model_cfg, params, mb["tokens"], mb["mask"], prompt_len,
                                      temperature, group_size, logits_chunk_mb, mb.get("pack"))
        loss, metrics = losses.actor_loss(
            algo, logprobs=logp,
            old_logprobs=jax.lax.stop_gradient(logp) if on_policy else mb["old_logprobs"],
            advantages=mb["advantages"],
            response_mask=mb["loss_mask"],
            ref_logprobs=mb["ref_logprobs"] if use_kl_loss else None, entropy=entropy,
            sampler_logprobs=mb.get("sampler_logprobs"), loss_denominator=denom,
            kl_coef=state.kl_coef)
        return loss, metrics

    def accumulate(fn, params):
        grad_fn = jax.value_and_grad(fn, has_aux=True)

        def body(carry, mb):
            grads, loss = carry
            (mb_loss, metrics), g = grad_fn(params, mb)
            return (jax.tree.map(jnp.add, grads, g), loss + mb_loss), metrics

        zeros = jax.tree.map(jnp.zeros_like, params)
        (grads, loss), metrics = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), micro)
        # Loss terms are divided by the whole minibatch's denominator, so their slices add
        # up; diagnostics (clip fractions, ratios, entropy) are per-slice means.
        metrics = {k: jnp.sum(m) if k in _SUMMED_METRICS else jnp.mean(m)
                   for k, m in metrics.items()}
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        return grads, loss, grad_norm, metrics

    grads, loss, grad_norm, actor_metrics = accumulate(actor_loss_fn, state.params)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {f"actor/{k}": v for k, v in actor_metrics.items()}
    metrics.update({"actor/loss": loss, "actor/grad_norm": grad_norm})

    critic_params, critic_opt_state = state.critic_params, state.critic_opt_state
    if state.critic_tx is not None:
        token_count = jnp.sum(batch["loss_mask"])

        def critic_loss_fn(cparams, mb):
            mb = packing.micro_view(batch, mb) if packed else mb
            values = response_values(cparams, mb["tokens"], mb["mask"], mb.get("pack"),
                                     model_cfg=model_cfg, prompt_len=prompt_len)
            return losses.critic_loss(algo, values=values, old_values=mb["old_values"],
                                      returns=mb["returns"], response_mask=mb["loss_mask"],
                                      loss_denominator=token_count)

        cgrads, closs, cnorm, cmetrics = accumulate(critic_loss_fn, critic_params)
        # One non-finite half skips the whole update: actor and critic move together.
        ok = ok & jnp.isfinite(closs) & jnp.isfinite(cnorm)
        critic_params, critic_opt_state = guarded_update(state.critic_tx, cgrads,
                                                         critic_opt_state, critic_params, ok)
        metrics.update({f"critic/{k}": v for k, v in cmetrics.items()})
        metrics.update({"critic/loss": closs, "critic/grad_norm": cnorm})

    params, opt_state = guarded_update(state.tx, grads, state.opt_state, state.params, ok)
    metrics["actor/skipped"] = (~ok).astype(jnp.float32)
    new_state = state.replace(step=state.step + ok.astype(jnp.int32), params=params,
                              opt_state=opt_state, critic_params=critic_params,
                              critic_opt_state=critic_opt_state,
                              nonfinite=state.nonfinite + (~ok).astype(jnp.int32))
    return new_state, metrics


# Metrics that are partial sums over microbatches (each slice divided by the minibatch's
# denominator); every other metric is a per-slice mean.
_SUMMED_METRICS = frozenset({"pg_loss", "kl_loss", "vf_loss"})


def sft_train_step(state: TrainState, batch: dict[str, Array], *, model_cfg: ModelConfig
                   ) -> tuple[TrainState, dict[str, Array]]:
    """One supervised step: mean cross-entropy over the target tokens.

    batch: tokens [N, L] int32 (left padded), mask [N, L] bool, target_mask [N, L] float32
    (1 where slot l's token is a target, i.e. a demonstration answer token). The loss is the
    token-mean of -log p(token_l | tokens_<l) over target slots.
    """

    def loss_fn(params):
        logits, _ = Transformer(model_cfg).apply(
            lora.variables(policy_params(state.frozen, params)), batch["tokens"],
            positions_from_mask(batch["mask"]), batch["mask"])
        logp, _ = token_logprobs(logits[:, :-1], batch["tokens"][:, 1:])
        weights = batch["target_mask"][:, 1:]
        return -jnp.sum(logp * weights) / jnp.maximum(jnp.sum(weights), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = guarded_update(state.tx, grads, state.opt_state, state.params, ok)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              nonfinite=state.nonfinite + (~ok).astype(jnp.int32))
    return new_state, {"sft/loss": loss, "sft/grad_norm": grad_norm,
                       "sft/skipped": (~ok).astype(jnp.float32)}
