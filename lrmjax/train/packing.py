"""Sequence packing: the update batch's sequences laid end to end in rows of a token budget.

A padded batch holds each sequence in its own [P + R] row: a left-padded prompt and a
right-padded response, so a long-tailed length distribution (reasoning responses: median a
few hundred tokens, a tail to the budget) spends most token slots on padding. With
`train.pack_tokens` = T > 0 the log-prob, reference, value and update passes instead run the
model on packed rows [rows, T]: each sequence's real tokens (prompt, then response) form one
segment, segments are placed by first-fit-decreasing on the host (`first_fit_decreasing`),
attention stays within a segment (`Transformer(segment_ids=...)`) and positions restart at 0
in each. Per-token outputs are gathered back to the padded [N, R] layout (`unpack`) before
any loss, so every loss and aggregation mode sees exactly the arrays it sees unpacked, and
its normalizer (token or sequence counts of the global minibatch, or Dr. GRPO's constant)
is computed from the same masks: packed and padded updates agree to float rounding.

A plan (`plan`) is a few int32 arrays, built on the host from the [N, P+R] mask and sent
with the batch:

  gather    [blocks*rows, T]  flat index into its block's tokens [n_b * (P+R)]; 0 on padding
  segments  [blocks*rows, T]  1, 2, ... per sequence within a row; 0 on padding
  positions [blocks*rows, T]  RoPE position within the segment; 0 on padding
  unpack    [N, R]            flat index into its block's outputs [rows * T] of the slot that
                              predicts response token t (the previous token of its segment);
                              rows * T (out of range: reads 0) where the response has none

The N sequences are cut into `blocks` consecutive blocks of n_b = N / blocks (the
microbatches of a gradient-accumulation scan, whose [blocks*rows, ...] arrays split the same
way as the [N, ...] ones), each packed into its own `rows` rows. `rows` is the most any block
needs, rounded up to a bucket (`row_buckets`: multiples of the mesh's batch divisor, four
sizes per octave), so a run compiles a handful of programs and wastes at most a quarter of a
bucket's rows. Indices are global (the whole block), so a plan means the same on any mesh;
only [rows, T] and [N, R] integers and per-token scalars cross devices, never hidden states.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrmjax import parallel
from lrmjax.models import heads
from lrmjax.models.presets import ModelConfig
from lrmjax.models.transformer import Transformer
from lrmjax.tokenizers import bucket, length_buckets

Array = jax.Array

# Row-count buckets per doubling (`length_buckets(per_octave=...)`).
ROW_BUCKETS_PER_OCTAVE = 4
PLAN_KEYS = ("gather", "segments", "positions", "unpack")


# ------------------------------------------------------------------------------ host side


def sequence_lengths(mask: np.ndarray, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Real prompt and response tokens of each row of a [N, P+R] bool mask: two [N] int64.

    Packing keeps a sequence's real tokens in order, which equals the padded forward only for
    the layout the sampler writes (prompt left padded, response right padded, at least one
    prompt token before a response); another mask raises ValueError."""
    mask = np.asarray(mask, bool)
    p = mask[:, :prompt_len].sum(1)
    r = mask[:, prompt_len:].sum(1)
    P, R = prompt_len, mask.shape[1] - prompt_len
    want = np.concatenate([np.arange(P)[None] >= (P - p)[:, None],
                           np.arange(R)[None] < r[:, None]], axis=1)
    bad = np.flatnonzero(np.any(want != mask, axis=1) | ((p == 0) & (r > 0)))
    if bad.size:
        raise ValueError(f"packing needs left-padded prompts of at least one token and "
                         f"right-padded responses; row {bad[0]} has mask "
                         f"{mask[bad[0]].astype(int).tolist()}")
    return p, r


def first_fit_decreasing(lengths: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray,
                                                                   int]:
    """Bins of `budget` tokens for items of `lengths` [N]: first fit, longest first.

    Returns (row [N], offset [N], rows used): item i occupies [offset, offset + length) of
    row `row[i]`. Empty items take no room (row 0, offset 0). Uses at most 11/9 OPT + 6/9
    rows (Dosa 2007). Raises ValueError if an item exceeds the budget."""
    lengths = np.asarray(lengths, np.int64)
    if lengths.size and lengths.max() > budget:
        raise ValueError(f"a sequence of {lengths.max()} tokens does not fit a packed row of "
                         f"{budget} (config 'train.pack_tokens')")
    row = np.zeros(len(lengths), np.int64)
    offset = np.zeros(len(lengths), np.int64)
    used = np.zeros(len(lengths), np.int64)  # tokens in each open row
    rows = 0
    for i in np.argsort(-lengths, kind="stable"):
        n = lengths[i]
        if n == 0:
            continue
        fits = np.flatnonzero(used[:rows] + n <= budget)
        r = int(fits[0]) if fits.size else rows
        rows = max(rows, r + 1)
        row[i], offset[i] = r, used[r]
        used[r] += n
    return row, offset, rows


def row_buckets(max_rows: int, multiple: int) -> tuple[int, ...]:
    """Row counts a plan is padded to: `multiple` (the mesh's batch divisor) times
    `length_buckets(ceil(max_rows / multiple), 1, ROW_BUCKETS_PER_OCTAVE)`."""
    top = -(-max_rows // multiple)
    return tuple(multiple * b for b in length_buckets(top, 1, ROW_BUCKETS_PER_OCTAVE))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A packing of N sequences (see the module docstring for the arrays).

    Attributes:
      gather, segments, positions: [blocks * rows, T] int32.
      unpack: [N, R] int32.
      blocks, rows: microbatch blocks, and packed rows per block.
      tokens: real tokens placed (the prompt and response tokens of every sequence).
    """

    gather: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    unpack: np.ndarray
    blocks: int
    rows: int
    tokens: int

    @property
    def slots(self) -> int:
        """Token slots the packed forward runs on: blocks * rows * T."""
        return int(self.segments.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in PLAN_KEYS}


def plan(mask: np.ndarray, prompt_len: int, budget: int, blocks: int = 1,
         row_multiple: int = 1) -> Plan:
    """Packs the sequences of a [N, P+R] mask (prompts left padded, responses right padded)
    into rows of `budget` tokens, block by block (`blocks` consecutive blocks of N / blocks
    sequences), with the row count a bucket of `row_buckets(N / blocks, row_multiple)`."""
    mask = np.asarray(mask, bool)
    N, L = mask.shape
    P, R, T = prompt_len, L - prompt_len, budget
    if N % blocks:
        raise ValueError(f"{N} sequences do not split into {blocks} blocks")
    nb = N // blocks
    p, r = sequence_lengths(mask, P)
    placed = [first_fit_decreasing((p + r)[k * nb:(k + 1) * nb], T) for k in range(blocks)]
    rows = bucket(max(used for _, _, used in placed), row_buckets(nb, row_multiple))
    gather = np.zeros((blocks, rows * T), np.int32)
    segments = np.zeros((blocks, rows * T), np.int32)
    positions = np.zeros((blocks, rows * T), np.int32)
    unpack = np.full((N, R), rows * T, np.int32)
    seg_in_row = np.zeros((blocks, rows), np.int32)
    for k, (row, offset, _) in enumerate(placed):
        for j in range(nb):
            i = k * nb + j
            n = int(p[i] + r[i])
            if n == 0:
                continue
            start = int(row[j] * T + offset[j])
            seg_in_row[k, row[j]] += 1
            segments[k, start:start + n] = seg_in_row[k, row[j]]
            positions[k, start:start + n] = np.arange(n)
            # The prompt's real slots P-p .. P-1, then the response's P .. P+r-1.
            gather[k, start:start + n] = j * L + np.concatenate(
                [np.arange(P - p[i], P), P + np.arange(r[i])])
            # Response token t is predicted by the segment's slot p + t - 1.
            unpack[i, :r[i]] = start + p[i] - 1 + np.arange(r[i])
    shape = (blocks * rows, T)
    return Plan(gather.reshape(shape), segments.reshape(shape), positions.reshape(shape),
                unpack, blocks, rows, int((p + r).sum()))


def put(pl: Plan, mesh: Any) -> dict[str, Array]:
    """The plan's arrays as global arrays sharded over the batch axes of `mesh` (this host
    contributes its block of rows; every host computed the same plan)."""
    def one(x: np.ndarray) -> Array:
        return parallel.host_to_global(x[parallel.host_row_block(mesh, x.shape[0])], mesh)

    return {k: one(v) for k, v in pl.arrays().items()}


def spec(num_seqs: int, seq_len: int, prompt_len: int, budget: int, blocks: int,
         mesh: Any) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the largest plan of `num_seqs` sequences (every sequence in a row of its
    own): what the train step is compiled for ahead of the loop, and its memory bound."""
    rows = row_buckets(num_seqs // blocks, parallel.batch_divisor(mesh))[-1]
    sh = parallel.batch_sharding(mesh, 2)
    packed = jax.ShapeDtypeStruct((blocks * rows, budget), jnp.int32, sharding=sh)
    return {"gather": packed, "segments": packed, "positions": packed,
            "unpack": jax.ShapeDtypeStruct((num_seqs, seq_len - prompt_len), jnp.int32,
                                           sharding=sh)}


def padded_slots(mask: np.ndarray, prompt_len: int, group_size: int = 1) -> tuple[int, int]:
    """(real tokens, token slots) of a padded forward over a [N, P+R] mask: N * (P+R) slots,
    or with the shared-prompt layout (`steps.grouped_hidden`, n = group_size, each prompt
    once and each response but its last slot) N/n * (P + n * (R-1))."""
    mask = np.asarray(mask, bool)
    N, L = mask.shape
    if group_size == 1:
        return int(mask.sum()), N * L
    prompts = int(mask[::group_size, :prompt_len].sum())
    responses = int(mask[:, prompt_len:-1].sum())
    return prompts + responses, N // group_size * (prompt_len + group_size * (L - prompt_len - 1))


# ------------------------------------------------------------------------------ device side


def packed_tokens(tokens: Array, pack: dict[str, Array]) -> Array:
    """The packed rows [rows, T] of a block's tokens [n, P+R]."""
    return jnp.take(tokens.reshape(-1), pack["gather"], axis=0)


def unpack(x: Array, pack: dict[str, Array]) -> Array:
    """Per-slot outputs of the packed rows [rows, T] -> the padded [n, R] layout, 0 where
    the response has no token (its gradient scatters back to the predicting slots)."""
    return jnp.take(x.reshape(-1), pack["unpack"], axis=0, mode="fill", fill_value=0)


def packed_hidden(model_cfg: ModelConfig, params: Any, tokens: Array, pack: dict[str, Array]
                  ) -> tuple[Array, Array]:
    """Final hidden states of the packed rows and the token each slot predicts (the next
    slot's; meaningful where `unpack` reads it): ([rows, T, D], [rows, T] int32)."""
    packed = packed_tokens(tokens, pack)
    hidden, _ = Transformer(model_cfg).apply(
        {"params": params}, packed, pack["positions"], pack["segments"] > 0,
        return_hidden=True, segment_ids=pack["segments"])
    targets = jnp.concatenate([packed[:, 1:], jnp.zeros_like(packed[:, :1])], axis=1)
    return hidden, targets


def packed_values(model_cfg: ModelConfig, critic_params: Any, tokens: Array,
                  pack: dict[str, Array]) -> Array:
    """Critic values V(s_t) of each response token [n, R] from the packed rows (the slot that
    predicts token t, as `steps.response_values` reads slot P+t-1)."""
    values = heads.ScalarHeadModel(model_cfg).apply(
        {"params": critic_params}, packed_tokens(tokens, pack), pack["positions"],
        pack["segments"] > 0, segment_ids=pack["segments"])
    return unpack(values, pack)
