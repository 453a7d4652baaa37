"""Autoregressive sampling with a preallocated KV cache: prompts -> n responses each -> Rollout.

Two layers:

* `generate(params, prompt_tokens, prompt_mask, key, *, cfg, sampling, stop_ids, pad_id)` is a
  pure, jittable function (no host callbacks), so a trainer can jit a whole RL step around it.
  It prefills the left-padded prompts once (one forward pass writing slots 0..P-1 of the
  cache), repeats that cache n times (the n continuations of a prompt share its prefill),
  then runs a `lax.while_loop` of single-token decode steps that exits as soon as every
  sequence has stopped (or after max_new_tokens R). Responses of at least `DECODE_PHASE_MIN`
  tokens decode in two such loops, the first over a cache of P + R/2 slots that then grows
  to P + R: every step's attention reads the whole cache, so the first half of the steps
  skips R/2 slots (a sixth of the attention's reads at P = 32, R = 64).
* `Sampler` is the host-side wrapper used by the trainer: it pads the prompt length and the
  batch up to buckets so that varying shapes compile a handful of programs, caches the
  compiled programs, and places inputs on a mesh.

Layout of a Rollout: the batch is B*n rows, group-major (the n samples of prompt b are rows
b*n .. b*n+n-1). Responses are right padded with `pad_id` after the stop token; the stop token
itself is part of the response (mask True), so a trainer learns to emit it.

Randomness: the token of row r at response step t is drawn by inverse transform sampling
(`inverse_cdf_tokens`) from one uniform of the key `fold_in(fold_in(key, t), r)`. The key
depends on the global row index only, not on the batch size, the bucket padding or the
prefill sharing: sampling n per prompt gives exactly the same tokens as repeating each prompt
n times with n=1 (tests/test_sampling.py checks it).

Truncation follows the order used by HF `generate` and vLLM: temperature, then top-k, then
top-p (nucleus, over the top-k renormalized distribution; the token whose cumulative
probability crosses top_p is kept, Holtzman et al. 2020), then min-p (keep tokens whose
probability is at least min_p times the most likely one's, Nguyen et al. 2024). Tokens tied
with a threshold value are kept.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrmjax import parallel
from lrmjax.models import lora, transformer
from lrmjax.models.presets import ModelConfig
from lrmjax.tokenizers import bucket, length_buckets

Array = jax.Array

FINISH_STOP = 0  # the sequence emitted EOS / a stop id
FINISH_LENGTH = 1  # the sequence reached max_new_tokens
# Decode steps between two "has every row stopped?" tests when the batch spans devices:
# each test is a rendezvous of the devices; more than 8 would waste more steps after the end.
SHARDED_STOP_CHECK = 8
# Responses at least this long decode in two loops, the first over a cache of P + R/2 slots
# (`_decode_phase_ends`).
DECODE_PHASE_MIN = 32


def default_stop_check_every(batch_shards: int) -> int:
    """`generate`'s stop_check_every for a batch split `batch_shards` ways: 1 on one device
    (the test is then a local reduction), SHARDED_STOP_CHECK otherwise."""
    return 1 if batch_shards == 1 else SHARDED_STOP_CHECK


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick each token. Hashable: it is part of the compiled program's cache key.

    Attributes:
      temperature: logits are divided by it; 0.0 means greedy (argmax of the raw logits).
      top_k: keep the k most likely tokens (0 = off).
      top_p: nucleus sampling threshold (1.0 = off).
      min_p: keep tokens with prob >= min_p * max prob (0.0 = off).
      max_new_tokens: response length R (static: the Rollout is [B*n, R]).
      n: samples per prompt.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    max_new_tokens: int = 128
    n: int = 1

    def __post_init__(self):
        if not self.temperature >= 0.0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"SamplingParams.min_p must be in [0, 1), got {self.min_p}")
        if self.max_new_tokens < 1:
            raise ValueError("SamplingParams.max_new_tokens must be >= 1, got "
                             f"{self.max_new_tokens}")
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def score_temperature(self) -> float:
        """The temperature log-probs of these samples are scored under: `temperature`, or
        1.0 when greedy (the raw logits, as `Rollout.logprobs` are then)."""
        return self.temperature if self.temperature > 0 else 1.0


@flax.struct.dataclass
class Rollout:
    """Sampled responses. All arrays have the batch B*n first, group-major.

    Attributes:
      prompt_tokens: [B*n, P] int32, left padded.
      prompt_mask: [B*n, P] bool.
      response_tokens: [B*n, R] int32, right padded with pad_id after the stop token.
      response_mask: [B*n, R] bool, True on generated tokens (stop token included).
      logprobs: [B*n, R] float32, log-prob of each sampled token under
        log_softmax(logits / temperature) (raw logits when greedy), without top-k / top-p /
        min-p truncation, 0 where masked. This is the distribution the trainer's forward
        pass scores (`train.steps.response_logits` divides by the same temperature), so
        the two agree up to float error and truncated importance sampling compares like with
        like; the truncated distribution's log-probs would not be comparable.
      lengths: [B*n] int32, number of response tokens (= response_mask.sum(-1)).
      finish_reason: [B*n] int32, FINISH_STOP (0) or FINISH_LENGTH (1).
      group_ids: [B*n] int32, index of the prompt each row answers.
      observation_mask: [B*n, R] bool, True on tokens an environment wrote into a
        multi-turn episode (`lrmjax.episodes`): in the sequence, out of the loss, log-prob
        0; None for single-turn responses.
    """

    prompt_tokens: Array
    prompt_mask: Array
    response_tokens: Array
    response_mask: Array
    logprobs: Array
    lengths: Array
    finish_reason: Array
    group_ids: Array
    observation_mask: Array | None = None

    def tokens(self) -> tuple[Array, Array]:
        """The full sequences: tokens [B*n, P+R] int32 and mask [B*n, P+R] bool."""
        return (jnp.concatenate([self.prompt_tokens, self.response_tokens], axis=-1),
                jnp.concatenate([self.prompt_mask, self.response_mask], axis=-1))


# ----------------------------------------------------------------------------- token choice


def truncate_logits(logits: Array, sampling: SamplingParams) -> Array:
    """Sets the logits of tokens removed by top-k / top-p / min-p to -inf.

    logits: [N, V] float32, already divided by the temperature. Returns [N, V]. Uses at most
    one sort per row (top-p) or one `lax.top_k` (top-k alone); min-p needs only the max.
    """
    V = logits.shape[-1]
    k = sampling.top_k if 0 < sampling.top_k < V else 0
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    if sampling.top_p < 1.0:
        desc = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)  # [N, V] descending
        if k:
            desc = jnp.where(jnp.arange(V) < k, desc, neg)
        probs = jax.nn.softmax(desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # Keep a token if the tokens ranked above it hold less than top_p: this keeps the
        # token that crosses the threshold (and always the most likely one).
        keep = mass_before < sampling.top_p
        if k:
            keep &= jnp.arange(V) < k
        threshold = jnp.min(jnp.where(keep, desc, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, neg)
    elif k:
        threshold = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits >= threshold, logits, neg)
    if sampling.min_p > 0.0:
        # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p).
        threshold = jnp.max(logits, axis=-1, keepdims=True) + np.log(sampling.min_p)
        logits = jnp.where(logits >= threshold, logits, neg)
    return logits


def sample_logits(logits: Array, keys: Array, sampling: SamplingParams) -> Array:
    """Picks one token per row.

    Args:
      logits: [N, V] raw logits (temperature 1).
      keys: [N] PRNG keys (one per row; unused when greedy).
      sampling: the sampling parameters.
    Returns:
      [N] int32 token ids.
    """
    return sample_with_logprob(logits, keys, sampling)[0]


def sample_with_logprob(logits: Array, keys: Array, sampling: SamplingParams, *,
                        tempered: bool = False) -> tuple[Array, Array]:
    """Picks one token per row and returns its log-prob under log_softmax(logits / T).

    logits [N, V] raw (or already divided by T when `tempered`; greedy takes raw logits
    either way), keys [N] -> (tokens [N] int32, logprobs [N] float32). Greedy rows use
    the raw logits (T = 0 has no tempered distribution). Without truncation the log-prob
    reuses the sampler's max and total mass (the CDF's last entry): one pass over the
    vocabulary fewer for the max and one for the exponentials, per decode step.
    """
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        tokens = greedy_tokens(logits)
        return tokens, token_logprob(logits, tokens)
    scaled = logits if tempered else logits / sampling.temperature
    uniforms = jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)
    vocab = logits.shape[-1]
    if 0 < sampling.top_k < vocab or sampling.top_p < 1.0 or sampling.min_p > 0.0:
        tokens = inverse_cdf_tokens(truncate_logits(scaled, sampling), uniforms)
        return tokens, token_logprob(scaled, tokens)
    tokens, top, mass = _inverse_cdf(scaled, uniforms)
    picked = jnp.take_along_axis(scaled, tokens[:, None], axis=-1)[:, 0]
    return tokens, picked - top - jnp.log(mass)


def _cdf_block(vocab: int) -> int:
    """Block width of the two-level CDF search: the largest power of two that divides the
    vocabulary, at most 256 (32,000 -> 256, 151,936 -> 128); 64 with zero padding when
    that is below 16 (small odd vocabularies)."""
    b = min(vocab & -vocab, 256)
    return b if b >= 16 else 64


def inverse_cdf_tokens(logits: Array, uniforms: Array) -> Array:
    """Draws one token per row by inverse transform sampling: [N, V], [N] -> [N] int32.

    Token i is picked when u * sum(p) falls in [c_{i-1}, c_i), c the cumulative sum of
    p = exp(logits - max), so each token has probability softmax(logits)_i. One uniform per
    row instead of Gumbel-max's V random draws (threefry bits for [N, V] noise are costly).
    The search is two-level (block sums, the block that crosses, then the crossing inside
    it): one cumsum over the whole vocabulary costs more than the draw it replaces.

    Tokens with logit -inf (truncated) have p = 0 and are never picked, whatever the float
    rounding of the sums (a crossing must hold mass; if rounding leaves none, the last token
    with mass is taken). fp32 resolves probabilities down to about 1e-7 of the row's mass, the
    same range as fp32 Gumbel noise (whose largest draw is about 16.6, e^-16.6 ~ 6e-8). A row
    with NaN logits yields a valid id.
    """
    return _inverse_cdf(logits, uniforms)[0]


def _inverse_cdf(logits: Array, uniforms: Array) -> tuple[Array, Array, Array]:
    """`inverse_cdf_tokens` -> (tokens [N], the row max [N], the row's total mass
    sum(exp(logits - max)) [N]), so that a caller gets log_softmax(logits)[token] as
    logits[token] - max - log(mass) without another pass over the vocabulary."""
    N, V = logits.shape
    top = jnp.max(logits, axis=-1, keepdims=True)
    p = jnp.exp(logits - top)  # [N, V], 0 where -inf
    width = _cdf_block(V)
    blocks = -(-V // width)
    if blocks * width != V:
        p = jnp.pad(p, ((0, 0), (0, blocks * width - V)))
    p = p.reshape(N, blocks, width)
    block_mass = jnp.sum(p, axis=-1)                            # [N, blocks]
    cum = jnp.cumsum(block_mass, axis=-1)
    target = uniforms.astype(p.dtype) * cum[:, -1]              # [N]

    def first_crossing(cum, mass, target):
        """First index whose cumulative mass exceeds target and that holds mass, else the
        last index with mass (else 0): [N, M] -> [N]."""
        idx = jnp.arange(mass.shape[-1], dtype=jnp.int32)
        hit = jnp.min(jnp.where((cum > target[:, None]) & (mass > 0), idx, mass.shape[-1]),
                      axis=-1)
        last = jnp.max(jnp.where(mass > 0, idx, 0), axis=-1)
        return jnp.where(hit < mass.shape[-1], hit, last)

    block = first_crossing(cum, block_mass, target)             # [N]
    inside = jnp.take_along_axis(p, block[:, None, None], axis=1)[:, 0]  # [N, width]
    before = jnp.where(block > 0, jnp.take_along_axis(
        cum, jnp.maximum(block - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    offset = first_crossing(before[:, None] + jnp.cumsum(inside, axis=-1), inside, target)
    return jnp.minimum(block * width + offset, V - 1), top[:, 0], cum[:, -1]


def greedy_tokens(logits: Array) -> Array:
    """argmax over the last axis (first index of the max): [N, V] -> [N] int32.

    Written as a max and a min over indices: XLA's CPU backend runs jnp.argmax's two-operand
    reduce much slower than two one-operand reduces."""
    top = jnp.max(logits, axis=-1, keepdims=True)  # NaN if the row holds a NaN
    V = logits.shape[-1]
    # As jnp.argmax, a NaN counts as the maximum (the row's first NaN wins), so broken
    # params still yield valid token ids.
    hit = (logits == top) | jnp.isnan(logits)
    return jnp.min(jnp.where(hit, jnp.arange(V, dtype=jnp.int32), V), axis=-1)


def token_logprob(logits: Array, tokens: Array) -> Array:
    """log_softmax(logits)[tokens] without materializing the [N, V] log-softmax: [N]."""
    top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    lse = top[:, 0] + jnp.log(jnp.sum(jnp.exp(logits - top), axis=-1))
    return jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0] - lse


def row_keys(key: Array, step: Array | int, rows: Array) -> Array:
    """[N] keys for response step `step`: fold_in(fold_in(key, step), row)."""
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda r: jax.random.fold_in(step_key, r))(rows)


# ----------------------------------------------------------------------------- pure core


@flax.struct.dataclass
class _DecodeState:
    step: Array  # int32 scalar: tokens generated so far
    cache: transformer.KVCache
    last: Array  # [N] int32: the token to feed next
    done: Array  # [N] bool
    all_done: Array  # bool scalar: the loop's exit test, refreshed every stop_check_every steps
    tokens: Array  # [N, R] int32
    mask: Array  # [N, R] bool
    logprobs: Array  # [N, R] float32
    finish: Array  # [N] int32


def generate(params: Any, prompt_tokens: Array, prompt_mask: Array, key: Array, *,
             cfg: ModelConfig, sampling: SamplingParams, stop_ids: tuple[int, ...],
             pad_id: int, stop_check_every: int = 1) -> Rollout:
    """Samples `sampling.n` responses per prompt. Pure and jittable.

    Args:
      params: the transformer's params (any sharding).
      prompt_tokens: [B, P] int32, left padded.
      prompt_mask: [B, P] bool. A row with no True entry is a dummy (batch padding): it
        produces no tokens (length 0, FINISH_STOP) and does not keep the loop running.
      key: PRNG key (see the module docstring for how per-token keys derive from it).
      cfg: the model config.
      sampling: static sampling parameters; R = sampling.max_new_tokens.
      stop_ids: token ids that end a response (included in it, masked in).
      pad_id: fills the response after it stops.
      stop_check_every: the loop tests whether every row has stopped after every this many
        steps. With the batch sharded over devices the test is an all-reduce, a rendezvous of
        the devices; `Sampler` then tests every `SHARDED_STOP_CHECK` steps, which may run up to
        that many minus one extra steps (emitting pads) once every row has stopped. Without
        stop ids only the dummy rows are ever done, and the loop never tests.

    Returns:
      A Rollout with B*n rows, group-major.
    """
    B, P = prompt_tokens.shape
    n, R = sampling.n, sampling.max_new_tokens
    N = B * n
    if P + R > cfg.max_seq_len:
        raise ValueError(f"prompt length {P} + max_new_tokens {R} exceeds the model's "
                         f"max_seq_len {cfg.max_seq_len}")
    model = transformer.Transformer(cfg)
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    prompt_mask = prompt_mask.astype(bool)

    # Prefill: one forward pass over the prompts writes cache slots 0..P-1. Only the last
    # column's logits are needed (prompts are left padded), so the LM head runs on it alone.
    phase_ends = _decode_phase_ends(R)
    cache = transformer.init_cache(cfg, B, P + phase_ends[0])
    hidden, cache = model.apply(lora.variables(params), prompt_tokens,
                                transformer.positions_from_mask(prompt_mask), prompt_mask,
                                cache, return_hidden=True)

    def next_logits(hidden):  # [rows, 1, D] -> [rows, V], divided by T unless greedy
        # As the trainer scores them (`tempered_lm_head`); no [rows, V] division per step.
        return transformer.tempered_lm_head(cfg, lora.base_params(params), hidden,
                                            sampling.score_temperature)[:, 0]

    logits = next_logits(hidden[:, -1:])  # [B, V]

    # Share the prefill: row b*n + i continues prompt b.
    def rep(x, axis=0):
        return x if n == 1 else jnp.repeat(x, n, axis=axis)

    cache = cache.repeat_batch(n)
    logits = rep(logits)
    prompt_len = rep(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32))
    rows = jnp.arange(N, dtype=jnp.int32)
    stops = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

    def choose(step, logits):
        return sample_with_logprob(logits, row_keys(key, step, rows), sampling, tempered=True)

    def record(state: _DecodeState, tok: Array, logp: Array, cache) -> _DecodeState:
        active = ~state.done
        tok = jnp.where(active, tok, pad_id)
        logp = jnp.where(active, logp, 0.0)
        stopped = active & jnp.any(tok[:, None] == stops[None, :], axis=-1)
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=state.step,
                                axis=1)
        done = state.done | stopped
        if stops.size and stop_check_every == 1:
            all_done = jnp.all(done)
        elif stops.size:
            all_done = jax.lax.cond((state.step + 1) % stop_check_every == 0, jnp.all,
                                    lambda d: jnp.zeros((), bool), done)
        else:
            all_done = state.all_done
        return _DecodeState(
            step=state.step + 1, cache=cache, last=tok, done=done, all_done=all_done,
            tokens=put(state.tokens, tok[:, None]), mask=put(state.mask, active[:, None]),
            logprobs=put(state.logprobs, logp[:, None]),
            finish=jnp.where(stopped, FINISH_STOP, state.finish))

    dummy = prompt_len == 0
    state = _DecodeState(
        step=jnp.zeros((), jnp.int32), cache=cache, last=jnp.zeros((N,), jnp.int32),
        done=dummy, all_done=jnp.all(dummy), tokens=jnp.full((N, R), pad_id, jnp.int32),
        mask=jnp.zeros((N, R), bool),
        logprobs=jnp.zeros((N, R), jnp.float32),
        finish=jnp.where(dummy, FINISH_STOP, FINISH_LENGTH).astype(jnp.int32))
    state = record(state, *choose(0, logits), cache)

    def body(state: _DecodeState) -> _DecodeState:
        # Feed the previous token (response index step-1) at slot P + step - 1.
        positions = prompt_len + state.step - 1
        hidden, cache = model.apply(lora.variables(params), state.last[:, None],
                                    positions[:, None], jnp.ones((N, 1), bool), state.cache,
                                    return_hidden=True)
        return record(state, *choose(state.step, next_logits(hidden)), cache)

    # One loop per phase, each over a cache just long enough for it: attention reads every
    # slot of the cache each step, so early steps do not pay for the slots of late ones.
    for i, end in enumerate(phase_ends):
        if i:
            state = state.replace(cache=state.cache.grow(P + end))
        state = jax.lax.while_loop(
            lambda s, end=end: (s.step < end) & ~s.all_done, body, state)
    return Rollout(prompt_tokens=rep(prompt_tokens), prompt_mask=rep(prompt_mask),
                   response_tokens=state.tokens, response_mask=state.mask,
                   logprobs=state.logprobs, lengths=jnp.sum(state.mask, -1, dtype=jnp.int32),
                   finish_reason=state.finish, group_ids=rows // n)


# ----------------------------------------------------------------------------- host wrapper


def _decode_phase_ends(max_new_tokens: int) -> tuple[int, ...]:
    """Where the decode loop's phases end (see `generate`): halfway and at the end when
    there are at least DECODE_PHASE_MIN new tokens, else one phase."""
    if max_new_tokens < DECODE_PHASE_MIN:
        return (max_new_tokens,)
    return (max_new_tokens // 2, max_new_tokens)


class Sampler:
    """Host-side wrapper around `generate`: shape bucketing, compile cache, mesh placement.

    Prompt widths are padded (more left padding) up to a bucket and the batch up to a bucket
    (dummy rows, removed from the output), so repeated calls compile one program per
    (prompt bucket, batch bucket, SamplingParams, params layout); `num_compilations` counts
    them. With a mesh, prompts are placed with `parallel.batch_sharding(mesh)` and every batch
    bucket must be a multiple of `parallel.batch_divisor(mesh)`; params are used in whatever
    sharding they already have. `stop_check_every` (see `generate`) defaults to 1 on one
    device and to `SHARDED_STOP_CHECK` when the batch is split over several.
    """

    def __init__(self, cfg: ModelConfig, *, pad_id: int, stop_ids: Sequence[int],
                 mesh: jax.sharding.Mesh | None = None,
                 prompt_buckets: Sequence[int] | None = None,
                 batch_buckets: Sequence[int] | None = None,
                 stop_check_every: int | None = None):
        self.cfg = cfg
        self.pad_id = int(pad_id)
        self.stop_ids = tuple(int(s) for s in stop_ids)
        self.mesh = mesh
        divisor = 1 if mesh is None else parallel.batch_divisor(mesh)
        if stop_check_every is None:
            stop_check_every = default_stop_check_every(divisor)
        if stop_check_every < 1:
            raise ValueError(f"stop_check_every must be >= 1, got {stop_check_every}")
        self.stop_check_every = int(stop_check_every)
        if prompt_buckets is None:
            prompt_buckets = length_buckets(cfg.max_seq_len)
        if batch_buckets is None:  # powers of two times the mesh's batch divisor
            batch_buckets = tuple(divisor * b for b in length_buckets(4096, smallest=1))
        self.prompt_buckets = tuple(sorted(int(b) for b in prompt_buckets))
        self.batch_buckets = tuple(sorted(int(b) for b in batch_buckets))
        for name, given in (("prompt", self.prompt_buckets), ("batch", self.batch_buckets)):
            if not given or given[0] < 1:
                raise ValueError(f"{name}_buckets must be positive, got {given}")
        bad = [b for b in self.batch_buckets if b % divisor]
        if bad:
            raise ValueError(f"batch buckets {bad} are not multiples of the mesh's batch "
                             f"divisor {divisor}")
        self._compiled: dict[Any, Any] = {}
        self.num_compilations = 0

    @property
    def programs(self) -> list[Any]:
        """The compiled programs so far (e.g. for `memory_analysis()` in benchmarks)."""
        return list(self._compiled.values())

    def generate(self, params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
                 sampling: SamplingParams, key: Array) -> Rollout:
        """Samples `sampling.n` responses for each of the B left-padded prompts.

        Args:
          params: transformer params.
          prompt_tokens: [B, P] int, left padded. prompt_mask: [B, P] bool.
          sampling: SamplingParams.
          key: PRNG key.
        Returns:
          A Rollout of numpy arrays with B*n rows (prompt arrays keep the input width P).

        With several processes (multi-host), every host calls this with its own B prompts
        (the same B everywhere); they are sampled as one global batch, and each host gets its
        own B*n rows back.
        """
        tokens = np.asarray(prompt_tokens)
        mask = np.asarray(prompt_mask).astype(bool)
        if tokens.ndim != 2 or tokens.shape != mask.shape:
            raise ValueError(f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape} must "
                             "be 2-D and of the same shape")
        B, P = tokens.shape
        if B == 0:
            raise ValueError("Sampler.generate got an empty batch")
        lengths = mask.sum(-1)
        if (lengths == 0).any():
            raise ValueError(f"prompt rows {np.flatnonzero(lengths == 0).tolist()} are empty")
        if (np.diff(mask.astype(np.int8), axis=-1) < 0).any():
            raise ValueError("prompt_mask must be left padded (pads first, then tokens)")
        R = sampling.max_new_tokens
        hosts = jax.process_count()
        if hosts > 1 and self.mesh is None:
            raise ValueError("a multi-host Sampler needs the global mesh (Sampler(mesh=...))")
        limit = min(self.cfg.max_seq_len - R, self.prompt_buckets[-1])
        padded, padded_mask = self._padded_prompts(
            tokens, mask, limit, f"min(model max_seq_len {self.cfg.max_seq_len} - "
            f"max_new_tokens {R}, largest prompt bucket {self.prompt_buckets[-1]})",
            "Sampler.generate")
        rows = padded.shape[0]
        if self.mesh is None:
            args = (jnp.asarray(padded), jnp.asarray(padded_mask), key)
        else:
            args = (parallel.host_to_global(padded, self.mesh),
                    parallel.host_to_global(padded_mask, self.mesh),
                    parallel.put(key, parallel.replicated(self.mesh)))
        out = self.program(params, args, sampling)(params, *args)
        keep = B * sampling.n
        # Host p's prompts are the p-th block of the global batch, and so are its n responses
        # each (rows are prompt-major): gather, then keep this host's rows.
        out = parallel.global_to_host(out)
        start = parallel.host_row_block(self.mesh, rows * hosts).start * sampling.n if (
            hosts > 1) else 0
        out = jax.tree.map(lambda x: x[start:start + keep], out)
        return Rollout(
            prompt_tokens=np.repeat(tokens.astype(np.int32), sampling.n, axis=0),
            prompt_mask=np.repeat(mask, sampling.n, axis=0),
            response_tokens=out.response_tokens, response_mask=out.response_mask,
            logprobs=out.logprobs, lengths=out.lengths, finish_reason=out.finish_reason,
            group_ids=out.group_ids - out.group_ids[0])

    def _padded_prompts(self, tokens: np.ndarray, mask: np.ndarray, limit: int,
                        limit_note: str, caller: str) -> tuple[np.ndarray, np.ndarray]:
        """This host's B left-padded prompts [B, P] re-padded to [rows, width] for the
        programs: width the prompt bucket of the longest prompt (at most `limit`, which
        `limit_note` explains in the error), rows this host's share of the batch bucket of
        B x hosts, the extra rows empty (already finished). With several hosts they first
        agree (one allgather) on the longest prompt and check they hold as many prompts, so
        every host runs the same programs. Keeps the last `width` columns, where every real
        token is."""
        B, P = tokens.shape
        longest = int(mask.sum(-1).max())
        hosts = jax.process_count()
        if hosts > 1:
            sizes = parallel.global_to_host(np.array([[B, longest]], np.int64))
            if (sizes[:, 0] != B).any():
                raise ValueError(f"{caller} got different batch sizes per host "
                                 f"{sizes[:, 0].tolist()}; every host must pass as many prompts")
            longest = int(sizes[:, 1].max())
        if longest > limit:
            raise ValueError(f"prompt of {longest} tokens is longer than the limit {limit} = "
                             f"{limit_note}")
        if B * hosts > self.batch_buckets[-1]:
            raise ValueError(f"batch of {B * hosts} prompts exceeds the largest batch bucket "
                             f"{self.batch_buckets[-1]}")
        width = min(bucket(longest, self.prompt_buckets), limit)
        rows = bucket(B * hosts, self.batch_buckets) // hosts  # this host's rows
        padded = np.full((rows, width), self.pad_id, np.int32)
        padded_mask = np.zeros((rows, width), bool)
        take = min(width, P)
        padded[:B, width - take:] = tokens[:, P - take:]
        padded_mask[:B, width - take:] = mask[:, P - take:]
        return padded, padded_mask

    def program(self, params: Any, args: tuple[Array, ...], sampling: SamplingParams):
        """The compiled `generate` for these shapes, shardings and sampling params (AOT, so a
        layout this cache key misses fails loudly instead of silently recompiling). `params`
        and `args` (prompt tokens [B, P], prompt mask [B, P], key) may be arrays or
        ShapeDtypeStructs with shardings (experiments/benchmarks/memory_plan.py)."""
        def sig(x):
            return (x.shape, str(x.dtype), getattr(x, "sharding", None))

        cache_key = (sampling, jax.tree.structure(params),
                     tuple(sig(x) for x in jax.tree.leaves(params)),
                     tuple(sig(x) for x in args))
        if cache_key not in self._compiled:
            fn = jax.jit(parallel.in_mesh(functools.partial(
                generate, cfg=self.cfg, sampling=sampling, stop_ids=self.stop_ids,
                pad_id=self.pad_id, stop_check_every=self.stop_check_every), self.mesh))
            self._compiled[cache_key] = fn.lower(params, *args).compile()
            self.num_compilations += 1
        return self._compiled[cache_key]
