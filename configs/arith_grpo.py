"""GRPO on 3-digit addition with the CPU-tiny model: the embedded default (`make demo`).

    python -m lrmjax.main --config configs/arith_grpo.py --workdir /tmp/arith_grpo
    python -m lrmjax.main --config configs/arith_grpo.py:runlocal --workdir /tmp/arith_smoke

A 2-layer, width-128 decoder with a character tokenizer is first trained on demonstrations
until it answers about a third of held-out problems (SFT warm start), then GRPO with a
right/wrong reward from the exact verifier takes over. Answers are written least-significant
digit first, which makes carries learnable left to right.
"""

from lrmjax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config("grpo")
    c.model.preset = "tiny"
    c.model.overrides.num_layers = 2
    c.model.overrides.max_seq_len = 64
    # One XLA device: the update and the sampler of this small model are fastest unsplit
    # (experiments/benchmarks/HISTORY.md, "Sampler throughput and the machine's limits").
    c.mesh.cpu_devices = 1
    c.data.task = "arithmetic"
    c.data.task_kwargs.digits = 3
    c.data.task_kwargs.min_digits = 3       # both operands have exactly 3 digits
    c.data.task_kwargs.ops = ("+",)
    c.data.task_kwargs.reverse_answer = True
    c.sampling.n = 8
    c.sampling.max_new_tokens = 6           # a 4-digit sum and EOS; longer answers are wrong
    c.sampling.max_prompt_len = 10          # BOS + "123+456="
    c.sampling.temperature = 1.0
    c.train.batch_prompts = 32
    c.train.steps = 400
    c.train.log_every = 10
    c.train.checkpoint_every = 100
    c.train.rollout_log_every = 50
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"              # decaying to 0 steadies the late steps
    c.optim.min_lr_ratio = 0.0
    c.optim.grad_clip = 1.0
    c.rl.kl_mode = "none"
    c.rl.kl_coef = 0.0
    c.sft.steps = 3000
    c.sft.batch_size = 64
    c.sft.lr = 5e-4                          # 1e-3 stalls on a plateau for some seeds
    c.sft.eval_every = 10                    # stops within a few points of the target
    c.sft.target_accuracy = 0.35
    c.eval.every = 200
    c.eval.size = 500
    c.eval.k = 4
    if arg == "runlocal":
        c.train.steps = 4
        c.train.batch_prompts = 8
        c.sampling.n = 4
        c.sft.steps = 10
        c.sft.eval_every = 5
        c.eval.size = 16
        c.eval.every = 2
        c.train.checkpoint_every = 2
        c.train.rollout_log_every = 2
    elif arg:
        raise ValueError(f"arith_grpo: unknown config argument {arg!r}; valid: 'runlocal'")
    return c
