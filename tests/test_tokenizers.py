"""Tokenizers: CharTokenizer by hand; HFTokenizer and chat templates against transformers."""

from __future__ import annotations

import datetime
import json
import pathlib
import shutil

import jinja2
import numpy as np
import pytest
import transformers
from hf_fixtures import CHATML_TEMPLATE, CONVERSATION, make_tokenizer
from tokenizers import Tokenizer

from lrmjax.tokenizers import (
    CharTokenizer,
    HFTokenizer,
    left_pad,
    load_tokenizer,
    render_chat_template,
)

# ----------------------------------------------------------------------------- CharTokenizer


def test_left_pad_by_hand():
    tokens, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8]])
    np.testing.assert_array_equal(mask, [[True, True, True], [False, False, True]])
    assert tokens.dtype == np.int32
    tokens, mask = left_pad([[1], []], pad_id=9, length=2)
    np.testing.assert_array_equal(tokens, [[9, 1], [9, 9]])
    np.testing.assert_array_equal(mask, [[False, True], [False, False]])
    with pytest.raises(ValueError, match="3 tokens, more than the length 2"):
        left_pad([[1, 2, 3]], 0, length=2)


def test_char_tokenizer():
    tok = CharTokenizer("ab+")
    assert tok.vocab_size == 6 and tok.stop_ids == (2,)
    assert tok.encode("ba+", add_bos=True, add_eos=True) == [1, 4, 3, 5, 2]
    assert tok.decode([1, 4, 3, 2, 3]) == "ba"  # stops at EOS
    assert tok.decode([1, 4, 2], skip_special=False) == "<bos>b<eos>"
    tokens, mask = tok.batch_encode(["ab", "b"])
    np.testing.assert_array_equal(tokens, [[1, 3, 4], [0, 1, 4]])
    assert tok.batch_decode(tokens, mask) == ["ab", "b"]
    with pytest.raises(ValueError, match=r"\['c'\]"):
        tok.encode("abc")


# ----------------------------------------------------------------------------- HFTokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tok")
    make_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def pair(tok_dir):
    """(transformers tokenizer, ours), both loaded from the same saved directory."""
    return transformers.AutoTokenizer.from_pretrained(tok_dir), HFTokenizer.from_pretrained(
        tok_dir)


def _ids(out) -> list[int]:
    return list(out["input_ids"] if isinstance(out, dict | transformers.BatchEncoding) else out)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_transformers(pair, add_generation_prompt):
    ref_tok, tok = pair
    ref = ref_tok.apply_chat_template(CONVERSATION, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
    ours = tok.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt)
    assert ours == ref
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt
    assert tok.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt,
                                   tokenize=True) == _ids(ref_tok.apply_chat_template(
                                       CONVERSATION, add_generation_prompt=add_generation_prompt))


def test_chat_template_without_system_message(pair):
    ref_tok, tok = pair
    chat = CONVERSATION[1:2]
    assert tok.apply_chat_template(chat, add_generation_prompt=True) == (
        ref_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))


def test_template_in_tokenizer_config(tok_dir, pair, tmp_path):
    """The older layout: the template inside tokenizer_config.json, no chat_template.jinja."""
    ref_tok, _ = pair
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = CHATML_TEMPLATE
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer.from_pretrained(tmp_path)
    assert tok.apply_chat_template(CONVERSATION) == ref_tok.apply_chat_template(
        CONVERSATION, tokenize=False)


@pytest.mark.parametrize("template,kwargs", [
    # {% generation %} (assistant masks in transformers), a template kwarg, loop controls.
    ("{% for m in messages %}{% if m.role == 'tool' %}{% continue %}{% endif %}"
     "{% generation %}{{ m.content | upper }}{% endgeneration %}{% endfor %}"
     "{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}",
     {"enable_thinking": False}),
    # Special tokens are template variables; tojson keeps non-ASCII and takes arguments.
    ("{{ eos_token }}{{ pad_token }}{{ bos_token }}|{{ messages | tojson(indent=2) }}", {}),
    # Reasoning passed as `thinking` reaches a template reading reasoning_content.
    ("{% for m in messages %}{{ m.reasoning_content }}{% endfor %}", {}),
])
def test_template_features_match_transformers(pair, template, kwargs):
    ref_tok, tok = pair
    chat = CONVERSATION + [{"role": "assistant", "content": "21", "thinking": "84/4"}]
    ref = ref_tok.apply_chat_template(chat, chat_template=template, tokenize=False, **kwargs)
    assert render_chat_template(template, chat, **tok.special_tokens, **kwargs) == ref


def test_template_helpers(pair):
    ref_tok, tok = pair
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role narrator"):
        tok.apply_chat_template([{"role": "narrator", "content": "x"}])
    with pytest.raises(jinja2.exceptions.TemplateError, match="unknown role narrator"):
        ref_tok.apply_chat_template([{"role": "narrator", "content": "x"}], tokenize=False)
    year = render_chat_template("{{ strftime_now('%Y') }}", [])
    assert year == str(datetime.date.today().year)
    with pytest.raises(jinja2.exceptions.SecurityError):  # sandboxed, like transformers
        render_chat_template("{{ messages.append(1) }}", [])


def test_encode_decode_match_transformers(pair):
    ref_tok, tok = pair
    for text in ["What is 12 * 7?", "<|im_start|>user\nhi<|im_end|>", "ünïcode  spaces\n\t",
                 ""]:
        ids = tok.encode(text)
        assert ids == ref_tok.encode(text, add_special_tokens=False), text
        assert tok.decode(ids, skip_special=False) == ref_tok.decode(ids), text
    ids = tok.encode("a<|im_end|>b")
    assert tok.decode(ids) == "a"  # stops at the stop token, like CharTokenizer
    assert tok.vocab_size == len(ref_tok)
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (ref_tok.eos_token_id,
                                                   ref_tok.pad_token_id, None)


def test_batch_encode_matches_transformers_left_padding(pair):
    ref_tok, tok = pair
    texts = ["What is 12 * 7?", "step", "The quick brown fox jumps"]
    tokens, mask = tok.batch_encode(texts)
    ref = ref_tok(texts, padding=True, padding_side="left", add_special_tokens=False,
                  return_tensors="np")
    np.testing.assert_array_equal(tokens, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
    assert tokens.dtype == np.int32 and mask.dtype == bool
    assert tok.batch_decode(tokens, mask) == texts


def test_stop_ids_from_generation_config(tok_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, tmp_path / name)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    tok = HFTokenizer.from_pretrained(tmp_path)
    assert tok.stop_ids == (2, 0, 1)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(CONVERSATION)


def test_bos_added_once(tok_dir):
    """A Llama-style tokenizer (with BOS): batch_encode adds BOS, but not on top of a BOS
    a chat template already wrote."""
    tok = HFTokenizer(Tokenizer.from_file(str(tok_dir / "tokenizer.json")),
                      {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"})
    assert tok.bos_id == 0 and tok.pad_id == tok.eos_id == 2  # no pad token: pad with eos
    assert tok.encode("step", add_bos=True)[0] == 0
    assert tok.encode("<|endoftext|>step", add_bos=True) == tok.encode("step", add_bos=True)
    tokens, mask = tok.batch_encode(["step", "What"])
    assert [row[m][0] for row, m in zip(tokens, mask, strict=True)] == [0, 0]
    with pytest.raises(ValueError, match="bos_token '<nope>'"):
        HFTokenizer(Tokenizer.from_file(str(tok_dir / "tokenizer.json")),
                    {"bos_token": "<nope>"})


def test_save_pretrained_read_by_transformers(pair, tmp_path):
    _, tok = pair
    tok.save_pretrained(tmp_path)
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ref.apply_chat_template(CONVERSATION, tokenize=False) == tok.apply_chat_template(
        CONVERSATION)
    assert (ref.eos_token_id, ref.pad_token_id) == (tok.eos_id, tok.pad_id)


def test_load_tokenizer(tok_dir, tmp_path):
    assert isinstance(load_tokenizer("char"), CharTokenizer)
    assert load_tokenizer("char:xyz").vocab_size == 6
    assert isinstance(load_tokenizer(None), CharTokenizer)
    assert isinstance(load_tokenizer(tok_dir), HFTokenizer)
    with pytest.raises(ValueError, match="Unknown tokenizer"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- char_ends


def test_char_tokenizer_char_ends_by_hand():
    tok = CharTokenizer()
    ids = tok.encode("12+3") + [tok.EOS] + tok.encode("9")
    assert tok.char_ends(ids) == [1, 2, 3, 4, 4, 4]  # nothing after the stop token
    assert tok.char_ends([tok.BOS] + tok.encode("ab")) == [0, 1, 2]
    assert tok.char_ends([]) == []


def _gpt2_byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), inverted."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@pytest.mark.parametrize("text", ["What is 12 * 7?", "ünïcode  spaces\n\t", "∑ 3 → ☃ done"])
def test_hf_char_ends_follow_the_bytes_each_token_completes(pair, text):
    ref_tok, tok = pair
    byte_of = _gpt2_byte_alphabet()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # Reference: bytes of each token from its byte-level spelling; character c is complete
    # once the tokens so far hold all of its UTF-8 bytes.
    token_bytes = np.cumsum([len(ref_tok.convert_ids_to_tokens(i)) for i in ids])
    assert all(ch in byte_of for i in ids for ch in ref_tok.convert_ids_to_tokens(i))
    char_bytes = np.cumsum([len(ch.encode()) for ch in text])
    want = [int(np.searchsorted(char_bytes, b, side="right")) for b in token_bytes]
    assert tok.char_ends(ids) == want
    assert want[-1] == len(text)


def test_hf_char_ends_stop_at_the_stop_token(pair):
    _, tok = pair
    ids = tok.encode("ab") + [tok.eos_id] + tok.encode("cd")
    ends = tok.char_ends(ids)
    assert ends[len(tok.encode("ab")) - 1:] == [2] * (len(ids) - len(tok.encode("ab")) + 1)


def test_length_buckets_and_bucket():
    from lrmjax.tokenizers import bucket, length_buckets

    assert length_buckets(100) == (16, 32, 64, 100)
    assert length_buckets(64) == (16, 32, 64)
    assert length_buckets(8) == (8,)
    assert length_buckets(5, smallest=1) == (1, 2, 4, 5)
    assert [bucket(s, (16, 32, 100)) for s in (1, 16, 17, 100)] == [16, 16, 32, 100]
    with pytest.raises(ValueError, match="size 101 exceeds the largest bucket 100"):
        bucket(101, (16, 32, 100))
