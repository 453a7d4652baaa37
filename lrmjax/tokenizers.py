"""Tokenizers: a character tokenizer for procedural tasks, HF `tokenizer.json` tokenizers, and
chat templates rendered the way transformers renders them.

Every tokenizer here has the same interface: `encode(text) -> list[int]`,
`decode(ids) -> str`, `batch_encode(texts, ...)` (left padded), `vocab_size`, `pad_id`,
`eos_id`, `bos_id` (or None), and `stop_ids` (ids that end a response).
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import pathlib
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

# The default alphabet: digits and operators first (arithmetic uses only these), then the
# rest of printable ASCII so any task prompt can be encoded.
DEFAULT_ALPHABET = (
    "0123456789+-*/=()<>[]{}.,:;!?#$%&'\"@^_`|~\\ \n"
    + string.ascii_lowercase
    + string.ascii_uppercase
)


def length_buckets(limit: int, smallest: int = 16, per_octave: int = 1) -> tuple[int, ...]:
    """Padding sizes: powers of two from `smallest` (doubling) below `limit`, then `limit`.

    With `per_octave` k > 1, each octave [x, 2x) is cut into k equal steps where x allows
    (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, ... for k = 4): padding wastes at most 1/k of
    a bucket instead of half, for k times as many sizes."""
    out, x = [], smallest
    while x < limit:
        step = max(x // per_octave, 1)
        out.extend(v for v in range(x, 2 * x, step) if v < limit)
        x *= 2
    return tuple(sorted(set(out))) + (limit,)


def bucket(size: int, buckets: Sequence[int]) -> int:
    """The smallest of the ascending `buckets` that holds `size`; ValueError if none does."""
    for b in buckets:
        if b >= size:
            return b
    raise ValueError(f"size {size} exceeds the largest bucket {buckets[-1]}")


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

    def char_ends(self, ids: Sequence[int]) -> list[int]:
        """len(decode(ids[:j + 1])) for every j: where each token's text ends in the decoded
        response (what process rewards' character offsets are mapped back through)."""
        ends, n, stopped = [], 0, False
        for i in ids:
            i = int(i)
            stopped = stopped or i == self.EOS
            n += 0 if stopped or i < len(self._SPECIAL) else 1
            ends.append(n)
        return ends

    def batch_encode(self, texts: Sequence[str], add_bos: bool = True,
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encodes and left-pads. Returns tokens [B, L] int32 and mask [B, L] bool."""
        return left_pad([self.encode(t, add_bos=add_bos) for t in texts], self.PAD, length)

    def batch_decode(self, ids: np.ndarray, mask: np.ndarray | None = None) -> list[str]:
        """Decodes rows of [B, L] ids, keeping only positions where `mask` is True."""
        ids = np.asarray(ids)
        if mask is not None:
            return [self.decode(row[np.asarray(m, bool)]) for row, m in zip(ids, mask, strict=True)]
        return [self.decode(row) for row in ids]


# ----------------------------------------------------------------------------- HF tokenizers


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, an AddedToken dict or None."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


class HFTokenizer:
    """A `tokenizer.json` tokenizer (the `tokenizers` library) with CharTokenizer's interface.

    Special tokens come from tokenizer_config.json (bos/eos/pad tokens); stop ids are the eos
    token plus every `eos_token_id` of generation_config.json and config.json (Qwen2.5-Instruct
    stops on both <|im_end|> and <|endoftext|>). Without a pad token, pad_id falls back to the
    eos id (pads are masked out, so any valid id works). The chat template comes from
    chat_template.jinja (transformers >= 4.43 / 5) or tokenizer_config.json's `chat_template`.
    """

    def __init__(self, tokenizer: Any, config: dict | None = None,
                 chat_template: str | None = None, extra_stop_ids: Sequence[int] = ()):
        self._tok = tokenizer
        self._config = dict(config or {})
        self.chat_template = chat_template
        self.special_tokens = {
            key: tok for key in ("bos_token", "eos_token", "unk_token", "sep_token",
                                 "pad_token", "cls_token", "mask_token")
            if (tok := _token_str(self._config.get(key))) is not None}
        self._bos = self._id_of("bos_token")
        self._eos = self._id_of("eos_token")
        pad = self._id_of("pad_token")
        self._pad = pad if pad is not None else self._eos
        stops = ([self._eos] if self._eos is not None else []) + list(extra_stop_ids)
        self._stops = tuple(dict.fromkeys(stops))  # ordered, no duplicates

    def _id_of(self, key: str) -> int | None:
        tok = self.special_tokens.get(key)
        if tok is None:
            return None
        idx = self._tok.token_to_id(tok)
        if idx is None:
            raise ValueError(f"{key} {tok!r} from tokenizer_config.json is not in the vocabulary")
        return int(idx)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> HFTokenizer:
        """Reads tokenizer.json, tokenizer_config.json, chat_template.jinja,
        generation_config.json and config.json (the last three optional) from `path`."""
        from tokenizers import Tokenizer

        path = pathlib.Path(path)
        if not (path / "tokenizer.json").exists():
            raise FileNotFoundError(f"No tokenizer.json in {path}")
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            template = {t["name"]: t["template"] for t in template}.get("default")
        if (path / "chat_template.jinja").exists():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        stops = (_id_list(_read_json(path / "generation_config.json").get("eos_token_id"))
                 + _id_list(_read_json(path / "config.json").get("eos_token_id")))
        return cls(tok, config, template, stops)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Writes tokenizer.json, tokenizer_config.json and chat_template.jinja (if any)."""
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path / "tokenizer.json"))
        config = {k: v for k, v in self._config.items() if k != "chat_template"}
        config.update(self.special_tokens)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        if self.chat_template is not None:
            (path / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    @property
    def pad_id(self) -> int | None:
        return self._pad

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int | None:
        return self._eos

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self._stops

    def token_id(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"{token!r} is not a token of this tokenizer")
        return int(idx)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>` from a
        chat template) become their ids; the tokenizer's own post-processor is not applied,
        BOS/EOS are added only when asked (and only if the tokenizer has them)."""
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        # A chat template may already start with the BOS token; never add a second one.
        if add_bos and self._bos is not None and ids[:1] != [self._bos]:
            ids = [self._bos] + ids
        if add_eos and self._eos is not None:
            ids = ids + [self._eos]
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of `ids`; with skip_special, stops at the first stop id and drops special
        tokens (like CharTokenizer.decode)."""
        ids = [int(i) for i in ids]
        if skip_special:
            stop = next((k for k, i in enumerate(ids) if i in self._stops), len(ids))
            ids = ids[:stop]
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def char_ends(self, ids: Sequence[int]) -> list[int]:
        """len(decode(ids[:j + 1])) for every j: where each token's text ends in the decoded
        response (what process rewards' character offsets are mapped back through).

        Streams the ids through the tokenizer's decoder (a token that completes no character
        yet, e.g. half of a UTF-8 sequence, adds 0, and the token that completes it owns the
        character); if the streamed text differs from `decode(ids)` it falls back to the
        length of every prefix's decode."""
        from tokenizers.decoders import DecodeStream

        ids = [int(i) for i in ids]
        stop = next((k for k, i in enumerate(ids) if i in self._stops), len(ids))
        stream, text, ends = DecodeStream(skip_special_tokens=True), [], []
        for i in ids[:stop]:
            text.append(stream.step(self._tok, i) or "")
            ends.append((ends[-1] if ends else 0) + len(text[-1]))
        ends += [ends[-1] if ends else 0] * (len(ids) - stop)
        if "".join(text) != self.decode(ids):
            ends = [len(self.decode(ids[:j + 1])) for j in range(len(ids))]
        return ends

    def batch_encode(self, texts: Sequence[str], add_bos: bool = True,
                     length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Encodes and left-pads. Returns tokens [B, L] int32 and mask [B, L] bool."""
        if self._pad is None:
            raise ValueError("tokenizer has neither a pad nor an eos token to pad with")
        return left_pad([self.encode(t, add_bos=add_bos) for t in texts], self._pad, length)

    def batch_decode(self, ids: np.ndarray, mask: np.ndarray | None = None,
                     skip_special: bool = True) -> list[str]:
        """Decodes rows of [B, L] ids, keeping only positions where `mask` is True."""
        ids = np.asarray(ids)
        if mask is not None:
            return [self.decode(row[np.asarray(m, bool)], skip_special)
                    for row, m in zip(ids, mask, strict=True)]
        return [self.decode(row, skip_special) for row in ids]

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False, **kwargs: Any) -> str | list[int]:
        """Renders `messages` with the tokenizer's chat template, as transformers'
        `apply_chat_template` does (same jinja environment and variables: messages, tools,
        documents, add_generation_prompt, the special tokens, then `kwargs`, e.g.
        enable_thinking=False for Qwen3). Returns the string, or its ids if `tokenize`."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template (no chat_template.jinja and "
                             "no chat_template in tokenizer_config.json)")
        text = render_chat_template(self.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    **{**self.special_tokens, **kwargs})
        return self.encode(text) if tokenize else text


# ----------------------------------------------------------------------------- chat templates


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> Any:
    """Compiles a chat template in the environment transformers uses: sandboxed, immutable,
    trim_blocks + lstrip_blocks, loop controls, and the helpers templates on the Hub call."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks in
        # transformers; rendering just emits the body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers replaces it with json.dumps.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(template)


# Names a message's reasoning may come under; templates (Qwen3) read `reasoning_content`.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render_chat_template(template: str, messages: Sequence[dict],
                         add_generation_prompt: bool = False, tools: list | None = None,
                         documents: list | None = None, **kwargs: Any) -> str:
    """Renders a jinja chat template over `messages` (list of {'role', 'content', ...})."""
    chat = []
    for m in messages:
        if not isinstance(m, dict):
            raise TypeError(f"chat messages must be dicts, got {m!r}")
        m = copy.deepcopy(dict(m))
        reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
        if reasoning is not None:  # the same keys, in the same order, as transformers
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        chat.append(m)
    return _compile_template(template).render(messages=chat, tools=tools, documents=documents,
                                              add_generation_prompt=add_generation_prompt,
                                              **kwargs)


def load_tokenizer(spec: str | os.PathLike | None) -> CharTokenizer | HFTokenizer:
    """A tokenizer from a spec: None or 'char' -> CharTokenizer (default alphabet),
    'char:<alphabet>' -> CharTokenizer(alphabet), a directory with tokenizer.json ->
    HFTokenizer.from_pretrained(dir)."""
    if spec is None or spec == "char":
        return CharTokenizer()
    spec = os.fspath(spec)
    if spec.startswith("char:"):
        return CharTokenizer(spec[len("char:"):])
    if (pathlib.Path(spec) / "tokenizer.json").exists():
        return HFTokenizer.from_pretrained(spec)
    raise ValueError(f"Unknown tokenizer {spec!r}: expected 'char', 'char:<alphabet>' or a "
                     "directory containing tokenizer.json")
