"""The arithmetic task's device reward: exact match on token ids, jittable.

`arithmetic_device_reward` agrees exactly with the host verifier `ArithmeticTask.verify` on
every completion a `CharTokenizer` can decode, and serves the end-to-end jitted RL step
(`lrmjax.train.pure`, described in DESIGN.md); `encode_answers` builds its answer arrays on the
host. It lives apart from `arithmetic.py` because it needs JAX, and reward workers, which
import the host verifier, must not.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lrmjax.tokenizers import CharTokenizer

_DEFAULT_TOKENIZER = CharTokenizer()


def encode_answers(answers: Sequence[str], tokenizer: CharTokenizer = _DEFAULT_TOKENIZER,
                   length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encodes reference answers for `arithmetic_device_reward` (host side).

    Returns:
      answer_tokens: [B, A] int32, each answer right-padded with `tokenizer.pad_id`; A =
        `length` or the longest answer.
      answer_mask: [B, A] bool, True on the answer's tokens (a prefix of each row).
    """
    ids = [tokenizer.encode(a) for a in answers]
    if any(not seq for seq in ids):
        raise ValueError("encode_answers: an answer is empty")
    longest = max((len(s) for s in ids), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"encode_answers: an answer has {longest} tokens, more than {length}")
    tokens = np.full((len(ids), length), tokenizer.pad_id, dtype=np.int32)
    mask = np.zeros((len(ids), length), dtype=bool)
    for i, seq in enumerate(ids):
        tokens[i, :len(seq)] = seq
        mask[i, :len(seq)] = True
    return tokens, mask


def _isin(x: jax.Array, ids: Sequence[int]) -> jax.Array:
    out = jnp.zeros(x.shape, bool)
    for i in ids:
        out = out | (x == i)
    return out


def arithmetic_device_reward(
    response_tokens: jax.Array,
    response_mask: jax.Array,
    answer_tokens: jax.Array,
    answer_mask: jax.Array,
    *,
    eos_id: int = CharTokenizer.EOS,
    skip_ids: Sequence[int] = (CharTokenizer.PAD, CharTokenizer.BOS),
    strip_ids: Sequence[int] = (_DEFAULT_TOKENIZER.token_id(" "),
                                _DEFAULT_TOKENIZER.token_id("\n")),
) -> jax.Array:
    """Exact-match reward on token ids, jittable; mirrors `ArithmeticTask.verify` on decoded text.

    The response is read the way `CharTokenizer.decode` reads it: positions where
    `response_mask` is True, up to the first `eos_id`, dropping `skip_ids` (pad/bos, which
    decode to nothing); then leading/trailing `strip_ids` (whitespace) are removed. The reward is
    1.0 iff what remains equals the answer's tokens exactly. Because answers are canonical,
    exact token equality is the same test as the host verifier's canonical-integer check.

    Args:
      response_tokens: [B, R] int32 sampled response ids.
      response_mask: [B, R] bool/int, True on generated positions.
      answer_tokens: [B, A] int32 reference answers (from `encode_answers`).
      answer_mask: [B, A] bool/int, True on answer tokens (a prefix of each row).
      eos_id, skip_ids, strip_ids: static token ids (defaults: the default CharTokenizer).

    Returns:
      [B] float32 rewards in {0, 1}.
    """

    def one(resp, rmask, ans, amask):
        r = resp.shape[0]
        rmask = rmask.astype(bool)
        amask = amask.astype(bool)
        before_eos = jnp.cumsum((resp == eos_id) & rmask) == 0
        keep = rmask & before_eos & ~_isin(resp, skip_ids)
        # Compact the kept tokens to the front (a scatter; dropped ones go out of bounds).
        dest = jnp.where(keep, jnp.cumsum(keep) - 1, r)
        compact = jnp.full((r,), -1, resp.dtype).at[dest].set(resp, mode="drop")
        idx = jnp.arange(r)
        content = (idx < keep.sum()) & ~_isin(compact, strip_ids)
        start = jnp.argmax(content)
        stop = r - jnp.argmax(content[::-1])
        length = jnp.where(content.any(), stop - start, 0)
        window = compact[jnp.clip(start + jnp.arange(ans.shape[0]), 0, r - 1)]
        same = jnp.all((window == ans) | ~amask)
        return ((length == amask.sum()) & same).astype(jnp.float32)

    return jax.vmap(one)(jnp.asarray(response_tokens), jnp.asarray(response_mask),
                         jnp.asarray(answer_tokens), jnp.asarray(answer_mask))
