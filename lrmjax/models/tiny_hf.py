"""Tiny random checkpoints in Hugging Face format, made offline without torch.

The real-model configs (`configs/*_qwen2_5_*.py`) point `model.hf_path` at a local directory
on a TPU/GPU host; their `:runlocal` variants use `model.hf_path = "tiny-random:<arch>"`,
which the trainer resolves with `make_tiny_checkpoint` into the workdir: a byte-level BPE
tokenizer trained on the shipped GSM8K/MATH fixtures (with a ChatML chat template, eos
`<|im_end|>` like Qwen2.5-Instruct) and random weights of a Qwen2-, Qwen3- or Llama-shaped
model, written by `hf.save_pretrained` (which the HF parity tests check transformers loads).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from lrmjax.models.presets import ModelConfig, RopeScaling

PREFIX = "tiny-random:"

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_SHAPES = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
               mlp_dim=128, max_seq_len=512)
ARCHS = {
    "qwen2": dict(qkv_bias=True, rope_theta=1_000_000.0),
    "qwen3": dict(qk_norm=True, rope_theta=1_000_000.0, head_dim=32),
    "llama": dict(rope_theta=500_000.0, rms_eps=1e-5, tie_embeddings=False,
                  rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64)),
}


def _corpus() -> list[str]:
    from lrmjax.data import FIXTURES_DIR

    texts = []
    for name in sorted(os.listdir(FIXTURES_DIR)):
        with open(os.path.join(FIXTURES_DIR, name), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                texts.extend(str(v) for v in row.values())
    return texts


def make_tokenizer(path: str, vocab_size: int = 512) -> Any:
    """Trains a byte-level BPE on the fixtures and saves it as an HF tokenizer at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lrmjax.tokenizers import HFTokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer)
    hf_tok = HFTokenizer(tok, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
                         chat_template=CHATML_TEMPLATE)
    hf_tok.save_pretrained(path)
    return hf_tok


def make_tiny_checkpoint(path: str, arch: str = "qwen2", seed: int = 0) -> str:
    """Writes a random tiny `arch` model plus tokenizer at `path` (idempotent) and returns it."""
    from lrmjax.models import hf, transformer

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; valid: {sorted(ARCHS)}")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tokenizer = make_tokenizer(path)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, name=f"tiny-{arch}",
                      **{**_SHAPES, **ARCHS[arch]})
    params = transformer.init_params(cfg, jax.random.key(seed))
    hf.save_pretrained(cfg, jax.device_get(params), path, tokenizer=tokenizer)
    return path


def resolve(hf_path: str, workdir: str) -> str:
    """`tiny-random:<arch>` -> a tiny checkpoint made under `workdir`; other paths unchanged."""
    if not hf_path.startswith(PREFIX):
        return hf_path
    arch = hf_path[len(PREFIX):]
    return make_tiny_checkpoint(os.path.join(workdir, f"tiny_hf_{arch}"), arch)
