"""Tokenizers: a character tokenizer for procedural tasks (HF tokenizers live beside it).

Every tokenizer here has the same interface: `encode(text) -> list[int]`,
`decode(ids) -> str`, `batch_encode(texts, ...)` (left padded), `vocab_size`, `pad_id`,
`eos_id`, `bos_id` (or None), and `stop_ids` (ids that end a response).
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

# The default alphabet: digits and operators first (arithmetic uses only these), then the
# rest of printable ASCII so any task prompt can be encoded.
DEFAULT_ALPHABET = (
    "0123456789+-*/=()<>[]{}.,:;!?#$%&'\"@^_`|~\\ \n"
    + string.ascii_lowercase
    + string.ascii_uppercase
)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists into one int32 array.

    Returns:
      tokens: [B, L] int32, each row right-aligned; L = `length` or the longest row.
      mask: [B, L] bool, True on real tokens.
    """
    longest = max((len(s) for s in seqs), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a sequence has {longest} tokens, more than the length {length}")
    tokens = np.full((len(seqs), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=bool)
    for i, s in enumerate(seqs):
        if len(s):
            tokens[i, length - len(s):] = np.asarray(s, dtype=np.int32)
            mask[i, length - len(s):] = True
    return tokens, mask


class CharTokenizer:
    """One token per character, plus <pad> (0), <bos> (1) and <eos> (2).

    Characters outside the alphabet raise a ValueError naming them (never silently dropped).
    """

    PAD, BOS, EOS = 0, 1, 2
    _SPECIAL = ("<pad>", "<bos>", "<eos>")

    def __init__(self, alphabet: str = DEFAULT_ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("CharTokenizer alphabet has repeated characters")
        self.alphabet = alphabet
        self._to_id = {c: i + len(self._SPECIAL) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self._SPECIAL) + len(self.alphabet)

    @property
    def pad_id(self) -> int:
        return self.PAD

    @property
    def bos_id(self) -> int:
        return self.BOS

    @property
    def eos_id(self) -> int:
        return self.EOS

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.EOS,)

    def token_id(self, char: str) -> int:
        return self._to_id[char]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        unknown = sorted({c for c in text if c not in self._to_id})
        if unknown:
            raise ValueError(f"CharTokenizer cannot encode characters {unknown!r} in {text!r}")
        ids = [self._to_id[c] for c in text]
        return ([self.BOS] if add_bos else []) + ids + ([self.EOS] if add_eos else [])

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i < len(self._SPECIAL):
                if i == self.EOS and skip_special:
                    break
                if not skip_special:
                    out.append(self._SPECIAL[i])
                continue
            out.append(self.alphabet[i - len(self._SPECIAL)])
        return "".join(out)

    def batch_encode(self, texts: Sequence[str], add_bos: bool = True,
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encodes and left-pads. Returns tokens [B, L] int32 and mask [B, L] bool."""
        return left_pad([self.encode(t, add_bos=add_bos) for t in texts], self.PAD, length)

    def batch_decode(self, ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
        """Decodes rows of [B, L] ids, keeping only positions where `mask` is True."""
        ids = np.asarray(ids)
        if mask is not None:
            return [self.decode(row[np.asarray(m, bool)]) for row, m in zip(ids, mask)]
        return [self.decode(row) for row in ids]
