"""Multi-turn sampling: episodes decoded turn by turn from one persistent KV cache.

An episode is a prompt followed by turns: the model writes until it ends its turn (a stop id
such as EOS, or a stop sequence such as `</calculator>`), the host runs the environment on
what it wrote, and the environment's observation tokens are appended to the row's cache
before the model writes its next turn. Earlier turns' keys and values are never recomputed:
each turn costs its own decode steps plus one forward pass over the new observation tokens.

Three jitted programs over one device state (`EpisodeState`), driven by the host
(`EpisodeSampler.run` with a `step_fn` callback that plays the environments):

* `start`: prefill the B left-padded prompts into a cache of P + S slots, repeat it n times
  (rows b*n .. b*n+n-1 continue prompt b, as in `sampling.generate`).
* `decode_turn`: a `lax.while_loop` of one-token steps for the rows still in their turn;
  rows not in a turn write masked slots. A row leaves its turn on a stop id, a stop
  sequence, its per-turn cap, or the episode budget.
* `append`: one forward pass over the observation tokens [N, O] (left padded; rows without
  an observation have an all-False mask), written at the next O cache slots.

Slots and positions: all rows advance through the cache's slots together (`KVCache.index`
is shared), so a row's tokens sit in slots with masked gaps (the slots it did not use while
other rows were still writing). RoPE positions count only a row's real tokens, and attention
reads only masked-in slots, so the gaps change nothing: the trainer recomputes the same
log-probs from the compact sequence `prompt + turn 1 + observation 1 + turn 2 ...`
(tests/test_episodes.py checks it). The slots an episode may use, S, are bounded by
`max_turns * turn_cap + (max_turns - 1) * observation_cap` (a turn's decode takes at most
`turn_cap` steps, an observation at most `observation_cap` slots).

Randomness: the model token of row r at decode step t (counted over the whole episode, so
every turn draws fresh keys) uses `sampling.row_keys(key, t, rows)`, the numbering of
`sampling.generate`: a one-turn episode draws from the same keys as `generate`.

The result is a `sampling.Rollout` whose response holds the compact episode after the
prompt (model and observation tokens, right padded to the budget R) with
`observation_mask` True on the environment's tokens (loss mask 0, log-prob 0).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrmjax import parallel
from lrmjax.models import lora, transformer
from lrmjax.models.presets import ModelConfig
from lrmjax.sampling import (
    FINISH_LENGTH,
    FINISH_STOP,
    Rollout,
    Sampler,
    SamplingParams,
    row_keys,
    sample_with_logprob,
)
from lrmjax.tokenizers import bucket, length_buckets

Array = jax.Array

# Why a row left its turn (`EpisodeState.ended_by`).
RUNNING, BY_STOP_ID, BY_STOP_SEQUENCE, BY_TURN_CAP, BY_BUDGET = 0, 1, 2, 3, 4
# Slot kinds (`EpisodeState.kinds`).
EMPTY, MODEL, OBSERVATION = 0, 1, 2


@flax.struct.dataclass
class EpisodeState:
    """The device state of N episodes between host calls. S = slots after the prompt.

    Attributes:
      cache: KV cache of P + S slots; `cache.index` is the next free slot (shared).
      hidden: [N, 1, D] the final hidden state after each row's last real token.
      position: [N] int32, the RoPE position of each row's next token (its real tokens so far).
      tokens: [N, S] int32, the token in each slot after the prompt (pad where unused).
      kinds: [N, S] int8, EMPTY / MODEL / OBSERVATION per slot.
      logprobs: [N, S] float32, the sampler's log-prob of each model token (0 elsewhere).
      total: [N] int32, real tokens after the prompt (model + observation).
      turn_len: [N] int32, model tokens in the current turn.
      active: [N] bool, rows still writing their current turn.
      tail: [N, W] int32, the row's last W model tokens of this turn (-1 before any), for
        stop-sequence matching.
      ended_by: [N] int32, why the row left its last turn (RUNNING while in it).
      step: int32 scalar, decode steps so far (the key numbering).
      row_ids: [N] int32, each row's episode (its index in the first batch): the key of its
        tokens, which stays the same when finished rows leave the batch (`take_rows`).
    """

    cache: transformer.KVCache
    hidden: Array
    position: Array
    tokens: Array
    kinds: Array
    logprobs: Array
    total: Array
    turn_len: Array
    active: Array
    tail: Array
    ended_by: Array
    step: Array
    row_ids: Array


def take_rows(state: EpisodeState, rows: Array) -> EpisodeState:
    """The state of rows `rows` [M] only: the batch shrinks to M (finished episodes leave it,
    so later turns do not decode them)."""
    take = functools.partial(jnp.take, indices=rows, axis=0)
    batch_axis = 0 if isinstance(state.cache.k, tuple) else 1  # scan layout: [L, B, ...]
    cache = state.cache.replace(
        k=jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis), state.cache.k),
        v=jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis), state.cache.v),
        mask=take(state.cache.mask))
    return state.replace(cache=cache, **{
        f: take(getattr(state, f)) for f in ("hidden", "position", "tokens", "kinds",
                                             "logprobs", "total", "turn_len", "active", "tail",
                                             "ended_by", "row_ids")})


def stop_sequence_array(stop_sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """[K, W] int32 of the token sequences, right-aligned, -1 (matches anything) on the left;
    W >= 1 (a [1, 1] array of -2, which never matches, when there are none)."""
    seqs = [list(s) for s in stop_sequences if len(s)]
    if not seqs:
        return np.full((1, 1), -2, np.int32)
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), -1, np.int32)
    for i, s in enumerate(seqs):
        out[i, width - len(s):] = s
    return out


def start(params: Any, prompt_tokens: Array, prompt_mask: Array, *, cfg: ModelConfig, n: int,
          slots: int, tail_width: int, pad_id: int) -> EpisodeState:
    """Prefills the prompts [B, P] into a cache of P + `slots` slots; N = B * n rows."""
    B, P = prompt_tokens.shape
    model = transformer.Transformer(cfg)
    prompt_mask = prompt_mask.astype(bool)
    cache = transformer.init_cache(cfg, B, P + slots)
    hidden, cache = model.apply(lora.variables(params), prompt_tokens.astype(jnp.int32),
                                transformer.positions_from_mask(prompt_mask), prompt_mask,
                                cache, return_hidden=True)
    N = B * n
    cache = cache.repeat_batch(n)
    length = jnp.repeat(jnp.sum(prompt_mask, axis=-1, dtype=jnp.int32), n)
    return EpisodeState(
        cache=cache, hidden=jnp.repeat(hidden[:, -1:], n, axis=0), position=length,
        tokens=jnp.full((N, slots), pad_id, jnp.int32), kinds=jnp.zeros((N, slots), jnp.int8),
        logprobs=jnp.zeros((N, slots), jnp.float32), total=jnp.zeros((N,), jnp.int32),
        turn_len=jnp.zeros((N,), jnp.int32), active=length > 0,  # dummy rows never start
        tail=jnp.full((N, tail_width), -1, jnp.int32),
        ended_by=jnp.zeros((N,), jnp.int32), step=jnp.zeros((), jnp.int32),
        row_ids=jnp.arange(N, dtype=jnp.int32))


def decode_turn(params: Any, state: EpisodeState, key: Array, *, cfg: ModelConfig,
                sampling: SamplingParams, stop_ids: tuple[int, ...], stop_sequences: np.ndarray,
                turn_cap: int, budget: int, prompt_len: int, pad_id: int) -> EpisodeState:
    """Decodes the active rows until each has left its turn (see the module docstring).

    A row leaves its turn when it emits a stop id, when its last tokens equal a stop
    sequence, after `turn_cap` tokens, or when its episode reaches `budget` tokens; the loop
    also ends when the cache's slots run out (the row is then ended by BY_BUDGET).
    """
    model = transformer.Transformer(cfg)
    S = state.tokens.shape[1]
    stops = jnp.asarray(stop_ids, jnp.int32).reshape(-1)

    def body(s: EpisodeState) -> EpisodeState:
        logits = transformer.tempered_lm_head(cfg, lora.base_params(params), s.hidden,
                                              sampling.score_temperature)[:, 0]
        tok, logp = sample_with_logprob(logits, row_keys(key, s.step, s.row_ids), sampling,
                                        tempered=True)
        act = s.active
        tok = jnp.where(act, tok, pad_id)
        slot = s.cache.index - prompt_len
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=slot, axis=1)
        hidden, cache = model.apply(lora.variables(params), tok[:, None], s.position[:, None],
                                    act[:, None], s.cache, return_hidden=True)
        tail = jnp.where(act[:, None], jnp.concatenate([s.tail[:, 1:], tok[:, None]], 1),
                         s.tail)
        turn_len, total = s.turn_len + act, s.total + act
        by_id = act & jnp.any(tok[:, None] == stops[None, :], axis=-1)
        seq = jnp.asarray(stop_sequences)[None]  # [1, K, W], a constant of the program
        by_seq = act & jnp.any(jnp.all((tail[:, None, :] == seq) | (seq == -1), -1), -1)
        by_cap = act & (turn_len >= turn_cap)
        by_budget = act & ((total >= budget) | (cache.index >= prompt_len + S))
        ended_by = jnp.select([by_id, by_seq, by_budget, by_cap],
                              [BY_STOP_ID, BY_STOP_SEQUENCE, BY_BUDGET, BY_TURN_CAP],
                              s.ended_by)
        return EpisodeState(
            cache=cache, hidden=jnp.where(act[:, None, None], hidden, s.hidden),
            position=s.position + act,
            tokens=put(s.tokens, tok[:, None]),
            kinds=put(s.kinds, jnp.where(act, MODEL, EMPTY).astype(jnp.int8)[:, None]),
            logprobs=put(s.logprobs, jnp.where(act, logp, 0.0)[:, None]),
            total=total, turn_len=turn_len,
            active=act & ~(by_id | by_seq | by_cap | by_budget), tail=tail,
            ended_by=ended_by, step=s.step + 1, row_ids=s.row_ids)

    state = state.replace(turn_len=jnp.zeros_like(state.turn_len),
                          tail=jnp.full_like(state.tail, -1),
                          ended_by=jnp.where(state.active, RUNNING, state.ended_by))
    return jax.lax.while_loop(lambda s: jnp.any(s.active), body, state)


def append(params: Any, state: EpisodeState, obs_tokens: Array, obs_mask: Array, *,
           cfg: ModelConfig, prompt_len: int) -> EpisodeState:
    """Writes the observations [N, O] (left padded) at the next O slots; the rows with one
    start their next turn (`active`), the others stay ended."""
    model = transformer.Transformer(cfg)
    obs_mask = obs_mask.astype(bool)
    count = jnp.sum(obs_mask, axis=-1, dtype=jnp.int32)
    positions = state.position[:, None] + jnp.cumsum(obs_mask, axis=-1, dtype=jnp.int32) - 1
    hidden, cache = model.apply(lora.variables(params), obs_tokens.astype(jnp.int32),
                                jnp.maximum(positions, 0), obs_mask, state.cache,
                                return_hidden=True)
    has = count > 0
    slot = state.cache.index - prompt_len
    put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=slot, axis=1)
    kinds = jnp.where(obs_mask, OBSERVATION, EMPTY).astype(jnp.int8)
    return state.replace(
        cache=cache, hidden=jnp.where(has[:, None, None], hidden[:, -1:], state.hidden),
        position=state.position + count, tokens=put(state.tokens, obs_tokens.astype(jnp.int32)),
        kinds=put(state.kinds, kinds), logprobs=put(state.logprobs, jnp.zeros_like(
            obs_tokens, jnp.float32)), total=state.total + count, active=has)


def _keep_results(done: dict[str, np.ndarray], host: dict[str, np.ndarray], ids: np.ndarray,
                  rows: np.ndarray, episodes: int) -> None:
    """Copies device rows `rows` of `host` (slot arrays and ended_by) into `done` ([episodes,
    ...] each), indexed by episode id (filler rows, id -1, are skipped)."""
    rows = rows[ids[rows] >= 0]
    for k in ("tokens", "kinds", "logprobs", "ended_by"):
        if k not in done:
            done[k] = np.zeros((episodes, *host[k].shape[1:]), host[k].dtype)
        done[k][ids[rows]] = host[k][rows]


@dataclasses.dataclass
class TurnEnd:
    """What the host learns about one row after a turn (`EpisodeSampler.run`'s step_fn).

    Attributes:
      row: the row index in [0, N).
      tokens: the model tokens of this turn (numpy int32).
      ended_by: BY_STOP_ID, BY_STOP_SEQUENCE, BY_TURN_CAP or BY_BUDGET.
      total: the row's real tokens after the prompt so far.
      turn: 0-based turn index.
    """

    row: int
    tokens: np.ndarray
    ended_by: int
    total: int
    turn: int


class EpisodeSampler(Sampler):
    """Runs batches of multi-turn episodes (host loop over the jitted programs above).

    Shares `Sampler`'s prompt and batch bucketing and its compile cache. With a mesh the
    rows are placed with `parallel.batch_sharding(mesh)` like `Sampler`'s (batch buckets are
    multiples of the mesh's batch divisor); one process only for now (multi-host episodes
    would need every host to run the same number of turns).

    Args (beyond `Sampler`'s):
      stop_sequences: token sequences that end a turn (e.g. the tokens of `</calculator>`).
      turn_cap: most model tokens in one turn.
      observation_cap: most observation tokens appended after one turn (the caller truncates).
      max_turns: most model turns per episode.
      shrink: finished episodes leave the batch between turns when the rest fit a smaller
        batch bucket (their cache rows are dropped; the same tokens either way, since each
        row's keys follow its episode). False keeps every row to the end (benchmarks).
    """

    def __init__(self, cfg: ModelConfig, *, pad_id: int, stop_ids: Sequence[int],
                 stop_sequences: Sequence[Sequence[int]] = (), turn_cap: int,
                 observation_cap: int, max_turns: int, mesh: Any = None, shrink: bool = True,
                 **kwargs: Any):
        if jax.process_count() > 1 and mesh is None:
            raise ValueError("a multi-host EpisodeSampler needs the global mesh (mesh=...)")
        super().__init__(cfg, pad_id=pad_id, stop_ids=stop_ids, mesh=mesh, **kwargs)
        if min(turn_cap, observation_cap + 1, max_turns) < 1:
            raise ValueError(f"EpisodeSampler: need turn_cap >= 1, observation_cap >= 0 and "
                             f"max_turns >= 1, got {turn_cap}, {observation_cap}, {max_turns}")
        self.stop_sequences = stop_sequence_array(stop_sequences)
        self.turn_cap, self.observation_cap = int(turn_cap), int(observation_cap)
        self.max_turns, self.shrink = int(max_turns), bool(shrink)
        self.slots = max_turns * turn_cap + (max_turns - 1) * observation_cap

    def _put(self, x: np.ndarray) -> Array:
        """A host array on the device, or split over the mesh's batch axes (with several
        hosts, this host's rows: the p-th block of the global batch)."""
        return jax.device_put(x) if self.mesh is None else parallel.host_to_global(x, self.mesh)

    def _fetch(self, state: EpisodeState, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """This host's rows of the state's per-row arrays `fields` (all rows, one host), and
        `index`, the cache's next free slot: read from this host's own devices."""
        out = {f: getattr(state, f) for f in fields} | {"index": state.cache.index}
        if jax.process_count() == 1:
            return jax.device_get(out)
        return parallel.host_rows(out, self.mesh)

    def _compiled_call(self, name: str, fn: Callable[..., Any], *args: Any,
                       donate: int | None = None) -> Any:
        """fn(*args) through a program compiled once per (name, argument layout). `donate`:
        the index of the argument (the episode state) whose buffers the call may reuse, so
        the program writes the KV cache in place instead of copying it in full first."""
        def sig(x):
            return (x.shape, x.dtype, getattr(x, "sharding", None))

        cache_key = (name, tuple(sig(x) for x in jax.tree.leaves(args)))
        if cache_key not in self._compiled:
            jitted = jax.jit(parallel.in_mesh(fn, self.mesh),
                             donate_argnums=() if donate is None else (donate,))
            self._compiled[cache_key] = jitted.lower(*args).compile()
            self.num_compilations += 1
        return self._compiled[cache_key](*args)

    def run(self, params: Any, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
            sampling: SamplingParams, key: Array,
            step_fn: Callable[[list[TurnEnd]], dict[int, list[int]]]) -> Rollout:
        """Plays B * n episodes; returns the compact Rollout (see the module docstring).

        `step_fn(turn_ends)` gets every row that left its turn this round (rows ended by the
        budget included, so the caller can close them) and returns {row: observation token
        ids} for the rows whose episode goes on; a row left out is finished. Observations
        longer than `observation_cap` or than what the budget leaves raise ValueError (the
        caller truncates them). R = sampling.max_new_tokens is the episode budget.
        """
        tokens = np.asarray(prompt_tokens)
        mask = np.asarray(prompt_mask).astype(bool)
        B, P = tokens.shape
        R, n = sampling.max_new_tokens, sampling.n
        if P == 0 or B == 0 or (mask.sum(-1) == 0).any():
            raise ValueError("EpisodeSampler.run needs B >= 1 non-empty prompts")
        limit = min(self.cfg.max_seq_len - self.slots, self.prompt_buckets[-1])
        padded, padded_mask = self._padded_prompts(
            tokens, mask, limit, f"model max_seq_len {self.cfg.max_seq_len} - episode slots "
            f"{self.slots} (max_turns * turn_cap + (max_turns-1) * observation_cap)",
            "EpisodeSampler.run")
        rows, width = padded.shape
        hosts = jax.process_count()
        N = rows * n
        tail_width = self.stop_sequences.shape[1]
        state = self._compiled_call(
            f"start/{n}", functools.partial(start, cfg=self.cfg, n=n, slots=self.slots,
                                            tail_width=tail_width, pad_id=self.pad_id),
            params, self._put(padded), self._put(padded_mask))
        key = key if self.mesh is None else parallel.put(key, parallel.replicated(self.mesh))
        decode = functools.partial(
            decode_turn, cfg=self.cfg, sampling=sampling, stop_ids=self.stop_ids,
            stop_sequences=self.stop_sequences, turn_cap=self.turn_cap,
            budget=R, prompt_len=width, pad_id=self.pad_id)
        appendf = functools.partial(append, cfg=self.cfg, prompt_len=width)
        written_until = 0  # slots after the prompt already reported to step_fn
        keep = B * n
        # Device row i plays episode ids[i] (-1: a filler row). Finished episodes leave the
        # batch when it then fits a smaller bucket; their results wait in `done`.
        ids = np.where(np.arange(N) < keep, np.arange(N), -1)
        done: dict[str, np.ndarray] = {}
        for turn in range(self.max_turns):
            state = self._compiled_call(f"decode/{sampling}", decode, params, state, key,
                                        donate=1)
            # Every slot's token and kind (small next to the cache), so that the slice this
            # turn wrote is cut on the host and no per-turn slice program is compiled.
            host = self._fetch(state, ("tokens", "kinds", "logprobs", "ended_by", "total"))
            written = slice(written_until, int(host["index"]) - width)
            written_until = written.stop
            wrote = host["kinds"][:, written] == MODEL
            ends = [TurnEnd(int(ids[i]), host["tokens"][i, written][wrote[i]],
                            int(host["ended_by"][i]), int(host["total"][i]), turn)
                    for i in range(len(ids)) if ids[i] >= 0 and wrote[i].any()]
            observations = step_fn(ends) if ends else {}  # on the last turn too: it closes
            observations = {r: o for r, o in observations.items() if len(o)}
            live = np.flatnonzero(np.isin(ids, list(observations)))
            longest = max((len(o) for o in observations.values()), default=0)
            most_live = len(live)
            if hosts > 1:  # every host takes the same decisions: the next turn, its shapes
                agreed = parallel.global_to_host(np.array([[len(live), longest]], np.int64))
                most_live, longest = int(agreed[:, 0].max()), int(agreed[:, 1].max())
            if turn + 1 == self.max_turns or not most_live:
                break
            if longest > self.observation_cap:
                raise ValueError(f"an observation of {longest} tokens exceeds "
                                 f"observation_cap {self.observation_cap}")
            size = self._rows_bucket(most_live) if self.shrink else len(ids)
            if size < len(ids):  # the finished leave: later turns decode only the rest
                _keep_results(done, host, ids, np.setdiff1d(np.arange(len(ids)), live), keep)
                # Copies of a live row (or of row 0 on a host whose episodes all ended):
                # no observation, so inactive from the append on.
                fill = np.full(size - len(live), live[0] if len(live) else 0)
                order = np.concatenate([live, fill])
                # Indices into the global batch: this host's rows are its p-th block.
                offset = jax.process_index() * len(ids)
                state = self._compiled_call(f"take/{size}", take_rows, state,
                                            self._put((order + offset).astype(np.int32)))
                ids = np.concatenate([ids[live], np.full(len(fill), -1)])
                host = {k: v[order] for k, v in host.items() if k != "index"}
            # Bucketed widths: a handful of append programs, whatever the observations.
            block = bucket(longest, length_buckets(self.observation_cap, smallest=4))
            obs = np.full((len(ids), block), self.pad_id, np.int32)
            obs_mask = np.zeros((len(ids), block), bool)
            for i, r in enumerate(ids):
                o = observations.get(int(r)) if r >= 0 else None
                if not o:
                    continue
                if host["total"][i] + len(o) >= R:
                    raise ValueError(f"row {r}: an observation of {len(o)} tokens leaves no "
                                     f"room in the episode budget {R}")
                obs[i, block - len(o):] = o
                obs_mask[i, block - len(o):] = True
            state = self._compiled_call(f"append/{block}", appendf, params, state,
                                        self._put(obs), self._put(obs_mask), donate=1)
            written_until += block
        host = self._fetch(state, ("tokens", "kinds", "logprobs", "ended_by"))
        _keep_results(done, host, ids, np.arange(len(ids)), keep)
        return self._compact(done, tokens, mask, sampling, keep)

    def _rows_bucket(self, live: int) -> int:
        """The batch rows for `live` episodes: a power of two times the mesh's batch
        divisor (a handful of programs)."""
        # Per host: each host holds its block of the global batch.
        divisor = 1 if self.mesh is None else max(
            1, parallel.batch_divisor(self.mesh) // jax.process_count())
        return divisor * bucket(-(-live // divisor), length_buckets(1 << 30, smallest=1))

    def _compact(self, done: dict[str, np.ndarray], tokens: np.ndarray, mask: np.ndarray,
                 sampling: SamplingParams, keep: int) -> Rollout:
        """The episodes' real tokens after the prompt, in order, right padded to R."""
        host = done
        R = sampling.max_new_tokens
        extra = max(0, R - host["kinds"].shape[1])  # fewer slots than the budget: pad to R
        host |= {k: np.pad(host[k], ((0, 0), (0, extra)), constant_values=v)
                 for k, v in (("tokens", self.pad_id), ("kinds", EMPTY), ("logprobs", 0))}
        # Each row's used slots first, in slot order (a stable sort on "slot is empty").
        order = np.argsort(host["kinds"] == EMPTY, axis=1, kind="stable")[:, :R]
        kinds = np.take_along_axis(host["kinds"], order, axis=1)
        real = kinds != EMPTY
        out_tokens = np.where(real, np.take_along_axis(host["tokens"], order, axis=1),
                              self.pad_id).astype(np.int32)
        logprobs = np.where(real, np.take_along_axis(host["logprobs"], order, axis=1), 0.0)
        out_mask, obs_mask = real, kinds == OBSERVATION
        finish = np.where(np.isin(host["ended_by"], (BY_TURN_CAP, BY_BUDGET)), FINISH_LENGTH,
                          FINISH_STOP).astype(np.int32)
        n = sampling.n
        return Rollout(prompt_tokens=np.repeat(tokens.astype(np.int32), n, axis=0),
                       prompt_mask=np.repeat(mask, n, axis=0), response_tokens=out_tokens,
                       response_mask=out_mask, logprobs=logprobs.astype(np.float32),
                       lengths=out_mask.sum(-1).astype(np.int32), finish_reason=finish,
                       group_ids=(np.arange(keep) // n).astype(np.int32),
                       observation_mask=obs_mask)
