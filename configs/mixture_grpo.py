"""GRPO on a mixture of procedural tasks, CPU-tiny model: 3-digit addition and Countdown.

    python -m lrmjax.main --config configs/mixture_grpo.py --workdir /tmp/mixture

`data.source = 'task_mixture'` draws each entry's share of the train and held-out sets
(`weight`), tags every example with its label, and the `task` reward scores each completion
with the verifier of the task that made its prompt. Evaluation reports every metric overall
and per label (`eval/add/greedy_pass@1`, `eval/countdown/greedy_pass@1`, ...). A tiny model
learns the addition and little of Countdown: this config is the template for mixing tasks
on a real model (set model.hf_path, tokenizer.kind='hf', and a prompt format per task).
"""

from lrmjax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config("grpo")
    c.model.preset = "tiny"
    c.model.overrides.num_layers = 2
    c.model.overrides.max_seq_len = 64
    c.mesh.cpu_devices = 1
    c.data.source = "task_mixture"
    c.data.mixture = {
        "add": {"task": "arithmetic", "weight": 3.0,
                "kwargs": {"digits": 3, "min_digits": 3, "ops": ("+",),
                           "reverse_answer": True}},
        "countdown": {"weight": 1.0, "kwargs": {"num_numbers": 3, "template": "short"}},
    }
    c.reward.fns = {"task": 1.0}
    c.sampling.n = 8
    c.sampling.max_new_tokens = 16
    c.sampling.max_prompt_len = 24
    c.train.batch_prompts = 32
    c.train.steps = 400
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.rl.kl_mode = "none"
    c.rl.kl_coef = 0.0
    c.sft.steps = 3000
    c.sft.batch_size = 64
    c.sft.lr = 5e-4
    c.sft.eval_every = 25
    c.sft.target_accuracy = 0.3
    c.eval.every = 100
    c.eval.size = 400
    c.eval.k = 4
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
        raise ValueError(f"mixture_grpo: unknown config argument {arg!r}; valid: 'runlocal'")
    return c
