"""Tiny random Hugging Face checkpoints and tokenizers, made locally (no hub) for the HF tests.

Every model is built by `transformers` itself from a fixed torch seed, so the reference logits
and generations in tests/test_hf.py come from an implementation independent of lrmjax.
"""

from __future__ import annotations

import pathlib

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Shared tiny dimensions: hidden 64, 2 layers, 4 query heads, 2 KV heads.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)

# A Qwen2.5-style ChatML template, written for these tests: default system prompt, tool calls
# and tool responses, and the generation prompt. It uses the features transformers' renderer
# must support (trim_blocks / lstrip_blocks whitespace control, `tojson`, `raise_exception`,
# loop variables and a namespace).
CHATML_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- set loop_messages = messages %}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in loop_messages %}
    {%- if message['role'] not in ['user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if message['role'] == 'tool' %}
        {{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] }}
        {{- '\\n</tool_response><|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] }}
        {%- if message.tool_calls is defined %}
            {%- for call in message.tool_calls %}
                {{- '\\n<tool_call>\\n' + call | tojson + '\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
        {%- set ns.turns = ns.turns + 1 %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CONVERSATION = [
    {"role": "system", "content": "You are a careful mathematician."},
    {"role": "user", "content": "What is 12 * 7? Think step by step."},
    {"role": "assistant", "content": "12 * 7 = 84.",
     "tool_calls": [{"name": "calc", "arguments": {"expr": "12*7", "note": "ünïcode"}}]},
    {"role": "tool", "content": "84"},
    {"role": "user", "content": "And 84 / 4?"},
]

_CORPUS = [
    "What is 12 * 7? Think step by step. The answer is 84.",
    "You are a helpful assistant. You are a careful mathematician.",
    "<tool_call> calc expr note arguments name </tool_call> <tool_response>",
    "The quick brown fox jumps over the lazy dog 0123456789 + - * / = ( )",
] * 4

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer(path: pathlib.Path | str, vocab_size: int = 200
                   ) -> transformers.PreTrainedTokenizerFast:
    """Trains a tiny byte-level BPE, wraps it in PreTrainedTokenizerFast with the ChatML
    template (eos <|im_end|>, pad <|endoftext|>, no BOS, like Qwen2.5-Instruct) and saves it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE)
    hf.save_pretrained(str(path))
    return hf


def make_model(path: pathlib.Path | str, arch: str, seed: int = 0, dtype=torch.float32,
               **overrides) -> transformers.PreTrainedModel:
    """Builds a random tiny `arch` model ('qwen2', 'qwen3', 'llama') with transformers and saves
    it to `path` as safetensors. `overrides` replace config fields (e.g. tie_word_embeddings).

    The norm weights are randomized too (HF initializes them to ones, which would hide a
    norm that is loaded into the wrong place).
    """
    kw = {**TINY, **overrides}
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(rope_theta=10000.0, **kw)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        cfg = transformers.Qwen3Config(head_dim=kw.pop("head_dim", 32), rope_theta=1e6, **kw)
        cls = transformers.Qwen3ForCausalLM
    elif arch == "llama":
        cfg = transformers.LlamaConfig(rope_theta=500000.0, rms_norm_eps=1e-5, **kw)
        cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model = model.to(dtype)
    model.save_pretrained(str(path))
    return model
