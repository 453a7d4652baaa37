"""Sequence packing and token-budget microbatches.

A padded batch holds each sequence in its own [P + R] row: a left-padded prompt and a
right-padded response, so a long-tailed length distribution (reasoning responses: median a
few hundred tokens, a tail to the budget) spends most token slots on padding. With
`train.pack_tokens` = T > 0 the log-prob, reference, value and update passes instead run the
model on packed rows [rows, T]: each sequence's real tokens (prompt, then response) form one
segment, segments are placed by first-fit-decreasing on the host (`first_fit_decreasing`),
attention stays within a segment (`Transformer(segment_ids=...)`) and positions restart at 0
in each. Per-token outputs are gathered back to the padded [N, R] layout (`unpack`) before
any loss, so every loss and aggregation mode sees exactly the arrays it sees unpacked, and
its normalizer (token or sequence counts of the whole minibatch, or Dr. GRPO's constant) is
computed from the same masks: packed and padded updates agree to float rounding.

A plan (`plan`) is a few int32 arrays, built on the host from the [N, P+R] mask and sent
with the batch:

  gather    [rows, blocks, T]  flat index into the batch's tokens [N * (P+R)]; 0 on padding
  segments  [rows, blocks, T]  1, 2, ... per sequence within a row; 0 on padding
  positions [rows, blocks, T]  RoPE position within the segment; 0 on padding
  sequences [N, 3]             per sequence: its block; the flat index, in its block's
                               [rows, T] slots, of the slot that predicts its first response
                               token; its number of response tokens

(rows first, so that the batch sharding splits every block's rows over the devices).

Blocks are the update's microbatches, by tokens rather than by rows (token-budget
microbatches): the rows, fullest first, are cut into as few blocks of at most `micro_rows`
rows as hold them (as many token slots as a padded microbatch of the config,
`train.microbatches`), with the rows spread evenly over the blocks. A microbatch never needs
more memory than its padded counterpart, packing shrinks the *number* of microbatches (at
most `train.microbatches`), and a run compiles one program per (blocks, rows) it meets. Each
block's loss is the whole minibatch's loss with the mask narrowed to the block's sequences
(`micro_view`): every sequence falls in one block, so the blocks' losses and gradients sum to
the minibatch's (the loss divides by the whole minibatch's normalizer). The log-prob passes
run one block whose row count is bucketed (`row_buckets`: multiples of the mesh's batch
divisor, four sizes per octave, at most a quarter of a bucket wasted), so a run compiles a
handful of programs. Indices are global, so a plan means the same on any mesh; only integers
and per-token scalars cross devices, never hidden states.
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
PLAN_KEYS = ("gather", "segments", "positions", "sequences")


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
    """Row counts a one-block plan is padded to: `multiple` (the mesh's batch divisor) times
    `length_buckets(ceil(max_rows / multiple), 1, ROW_BUCKETS_PER_OCTAVE)`."""
    top = -(-max_rows // multiple)
    return tuple(multiple * b for b in length_buckets(top, 1, ROW_BUCKETS_PER_OCTAVE))


def micro_rows(num_seqs: int, seq_len: int, budget: int, microbatches: int,
               multiple: int) -> int:
    """Packed rows per update microbatch: the token slots of a padded microbatch
    (num_seqs / microbatches rows of seq_len) in rows of `budget`, rounded down to a multiple
    of the mesh's batch divisor (at least one row per shard)."""
    rows = num_seqs // microbatches * seq_len // budget
    return max(multiple, rows // multiple * multiple)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A packing of N sequences (see the module docstring for the arrays).

    Attributes:
      gather, segments, positions: [rows, blocks, T] int32.
      sequences: [N, 3] int32 (block, first predicting slot, response tokens).
      blocks, rows: blocks (update microbatches), and packed rows per block.
      tokens: real tokens placed (the prompt and response tokens of every sequence).
    """

    gather: np.ndarray
    segments: np.ndarray
    positions: np.ndarray
    sequences: np.ndarray
    blocks: int
    rows: int
    tokens: int

    @property
    def slots(self) -> int:
        """Token slots the packed forwards run on: blocks * rows * T."""
        return int(self.segments.size)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in PLAN_KEYS}


def plan(mask: np.ndarray, prompt_len: int, budget: int, rows_per_block: int = 0,
         row_multiple: int = 1) -> Plan:
    """Packs the sequences of a [N, P+R] mask (prompts left padded, responses right padded)
    into rows of `budget` tokens by first-fit-decreasing. With `rows_per_block` the rows are
    cut into as few blocks of at most that many rows as hold them, with the same number of
    rows each, a multiple of `row_multiple` (the update's microbatches); without, they form
    one block of a bucket of `row_buckets(N, row_multiple)` rows (the log-prob and value
    passes)."""
    mask = np.asarray(mask, bool)
    N, L = mask.shape
    P, T = prompt_len, budget
    p, r = sequence_lengths(mask, P)
    row, offset, used = first_fit_decreasing(p + r, T)
    if rows_per_block:
        # As few blocks as hold the rows, the rows spread evenly over them: fewer than
        # `blocks` rows (plus the divisor's rounding) stay empty.
        blocks = max(1, -(-used // rows_per_block))
        rows = -(-max(used, 1) // blocks)
        rows = -(-rows // row_multiple) * row_multiple
    else:
        rows, blocks = bucket(max(used, 1), row_buckets(N, row_multiple)), 1
    gather = np.zeros(blocks * rows * T, np.int32)
    segments = np.zeros(blocks * rows * T, np.int32)
    positions = np.zeros(blocks * rows * T, np.int32)
    sequences = np.zeros((N, 3), np.int32)
    seg_in_row = np.zeros(blocks * rows, np.int32)
    for i in range(N):
        n = int(p[i] + r[i])
        if n == 0:
            continue
        start = int(row[i] * T + offset[i])
        seg_in_row[row[i]] += 1
        segments[start:start + n] = seg_in_row[row[i]]
        positions[start:start + n] = np.arange(n)
        # The prompt's real slots P-p .. P-1, then the response's P .. P+r-1.
        gather[start:start + n] = i * L + np.concatenate([np.arange(P - p[i], P),
                                                          P + np.arange(r[i])])
        # Response token t is predicted by the segment's slot p + t - 1.
        sequences[i] = (row[i] // rows, start % (rows * T) + p[i] - 1, r[i])
    def layout(x):  # block-major rows -> [rows, blocks, T]
        return x.reshape(blocks, rows, T).transpose(1, 0, 2)

    return Plan(layout(gather), layout(segments), layout(positions), sequences, blocks, rows,
                int((p + r).sum()))


def put(pl: Plan, mesh: Any) -> dict[str, Array]:
    """The plan's arrays as global arrays sharded over the batch axes of `mesh` (this host
    contributes its block of rows; every host computed the same plan)."""
    def one(x: np.ndarray) -> Array:
        return parallel.host_to_global(x[parallel.host_row_block(mesh, x.shape[0])], mesh)

    return {k: one(v) for k, v in pl.arrays().items()}


def spec(num_seqs: int, budget: int, mesh: Any, rows_per_block: int = 0
         ) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of the largest plan of `num_seqs` sequences (every sequence in a row of its
    own; `rows_per_block` as in `plan`): what a program is compiled for ahead of the loop,
    and its memory bound."""
    if rows_per_block:
        blocks = -(-num_seqs // rows_per_block)
        rows = -(-num_seqs // blocks)
        rows = -(-rows // parallel.batch_divisor(mesh)) * parallel.batch_divisor(mesh)
    else:
        rows, blocks = row_buckets(num_seqs, parallel.batch_divisor(mesh))[-1], 1
    packed = jax.ShapeDtypeStruct((rows, blocks, budget), jnp.int32,
                                  sharding=parallel.batch_sharding(mesh, 3))
    return {"gather": packed, "segments": packed, "positions": packed,
            "sequences": jax.ShapeDtypeStruct((num_seqs, 3), jnp.int32,
                                              sharding=parallel.batch_sharding(mesh, 2))}


def padded_slots(mask: Any, prompt_len: int, group_size: int = 1) -> tuple[Any, int]:
    """(real tokens, token slots) of a padded forward over a [N, P+R] bool mask (numpy, or a
    jax array: the count is then a device scalar): N * (P+R) slots, or with the shared-prompt
    layout (`steps.grouped_hidden`, n = group_size, each prompt once and each response but its
    last slot) N/n * (P + n * (R-1))."""
    N, L = mask.shape
    total = N * L if group_size == 1 else N // group_size * (prompt_len
                                                             + group_size * (L - prompt_len - 1))
    # A jax array is counted in one jitted program: sliced eagerly, each slice's start indices
    # would be a host-to-device copy, which the RL loop's transfer guard refuses.
    count = _real_slots_device if isinstance(mask, jax.Array) else _real_slots
    return count(mask, prompt_len, group_size), total


def _real_slots(mask: Any, prompt_len: int, group_size: int) -> Any:
    if group_size == 1:
        return mask.sum()
    return mask[::group_size, :prompt_len].sum() + mask[:, prompt_len:-1].sum()


_real_slots_device = jax.jit(_real_slots, static_argnums=(1, 2))


# ------------------------------------------------------------------------------ device side


def _rows(x: Array) -> Array:
    """A one-block plan array, [rows, 1, T] (as planned) or [rows, T] (a `micro_slices`
    slice), as [rows, T]."""
    return x.reshape(x.shape[0], x.shape[-1])


def packed_tokens(tokens: Array, pack: dict[str, Array]) -> Array:
    """The packed rows [rows, T] of one block of the batch's tokens [N, P+R]."""
    return jnp.take(tokens.reshape(-1), _rows(pack["gather"]), axis=0)


def unpack(x: Array, pack: dict[str, Array], response_len: int) -> Array:
    """Per-slot outputs of a block's packed rows [rows, T] -> the padded [N, R] layout of the
    response tokens, 0 where a sequence has no token or lies in another block (its gradient
    scatters back to the predicting slots). `pack["block"]` (default 0) picks the block."""
    block, start, length = (pack["sequences"][:, k] for k in range(3))
    t = jnp.arange(response_len)
    here = (block == pack.get("block", 0))[:, None] & (t[None, :] < length[:, None])
    index = jnp.where(here, start[:, None] + t[None, :], x.size)
    return jnp.take(x.reshape(-1), index, axis=0, mode="fill", fill_value=0)


def micro_slices(pack: dict[str, Array]) -> dict[str, Array]:
    """What the update's microbatch scan runs over: each block's rows [blocks, rows, T] and
    its index [blocks] (`micro_view` completes a block's batch)."""
    out = {k: jnp.swapaxes(pack[k], 0, 1) for k in ("gather", "segments", "positions")}
    return out | {"block": jnp.arange(pack["gather"].shape[1], dtype=jnp.int32)}


def micro_view(batch: dict[str, Array], block: dict[str, Array]) -> dict[str, Array]:
    """One block's microbatch: the whole minibatch `batch` ([N, ...] arrays) with its
    loss_mask kept on the block's sequences only, and the block's plan as `pack` (a
    `micro_slices` slice and the sequences)."""
    pack = batch["pack"]
    here = pack["sequences"][:, 0] == block["block"]
    return {**batch, "loss_mask": jnp.where(here[:, None], batch["loss_mask"], 0.0),
            "pack": {**block, "sequences": pack["sequences"]}}


def packed_hidden(model_cfg: ModelConfig, params: Any, tokens: Array, pack: dict[str, Array]
                  ) -> tuple[Array, Array]:
    """Final hidden states of one block's packed rows and the token each slot predicts (the
    next slot's; meaningful where `unpack` reads it): ([rows, T, D], [rows, T] int32)."""
    packed, segments = packed_tokens(tokens, pack), _rows(pack["segments"])
    hidden, _ = Transformer(model_cfg).apply(
        {"params": params}, packed, _rows(pack["positions"]), segments > 0,
        return_hidden=True, segment_ids=segments)
    targets = jnp.concatenate([packed[:, 1:], jnp.zeros_like(packed[:, :1])], axis=1)
    return hidden, targets


def packed_values(model_cfg: ModelConfig, critic_params: Any, tokens: Array,
                  pack: dict[str, Array], response_len: int) -> Array:
    """Critic values V(s_t) of each response token [n, R] from the packed rows (the slot that
    predicts token t, as `steps.response_values` reads slot P+t-1)."""
    segments = _rows(pack["segments"])
    values = heads.ScalarHeadModel(model_cfg).apply(
        {"params": critic_params}, packed_tokens(tokens, pack), _rows(pack["positions"]),
        segments > 0, segment_ids=segments)
    return unpack(values, pack, response_len)
