"""GRPO on Countdown (reach a target with given numbers and + - * /), CPU-tiny model.

    python -m lrmjax.main --config configs/countdown_grpo.py --workdir /tmp/countdown

The answer is an expression; the verifier parses it with `ast` (no eval) and checks each
number is used exactly once. A tiny model learns little here: this config is the template for
running Countdown on a real model (set model.hf_path, tokenizer.kind='hf' and
data.task_kwargs.template='tinyzero', whose prompt asks for <answer> tags).
"""

from lrmjax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config("grpo")
    c.model.preset = "tiny"
    c.model.overrides.max_seq_len = 128
    c.data.task = "countdown"
    c.data.task_kwargs.num_numbers = 3
    c.data.task_kwargs.template = "short"   # "12 45 67 -> 124": fits a character model
    c.sampling.n = 8
    c.sampling.max_new_tokens = 24
    c.sampling.max_prompt_len = 32
    c.train.batch_prompts = 16
    c.train.steps = 200
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.sft.steps = 300
    c.sft.lr = 1e-3
    c.sft.target_accuracy = 0.3
    c.eval.size = 200
    c.eval.every = 50
    if arg == "runlocal":
        c.train.steps = 2
        c.train.batch_prompts = 4
        c.sampling.n = 4
        c.sft.steps = 4
        c.sft.eval_every = 4
        c.eval.size = 8
        c.eval.k = 2
        c.eval.every = 0
    elif arg:
        raise ValueError(f"countdown_grpo: unknown config argument {arg!r}; valid: 'runlocal'")
    return c
