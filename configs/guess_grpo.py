"""GRPO over multi-turn feedback, CPU-tiny model: guess a number from higher/lower replies.

    python -m lrmjax.main --config configs/guess_grpo.py --workdir /tmp/guess

Each episode hides a secret in 1-32 (data task `guess_number`); the model guesses, one
number per turn, and the environment answers "higher" or "lower" until the guess is right or
6 guesses are spent (binary search needs at most 6). The warm start imitates binary-search
demonstrations (trained on the guesses only, not the replies) until a third of the held-out
episodes succeed; GRPO then rewards success (the task's verifier on the last guess). The
metrics show turns per episode (`env/turns`) next to success.
"""

from lrmjax import config as config_lib


def get_config(arg: str | None = None):
    c = config_lib.base_config("grpo")
    c.model.preset = "tiny"
    c.model.overrides.num_layers = 2
    c.model.overrides.max_seq_len = 96
    c.mesh.cpu_devices = 1                   # this small model samples fastest unsplit
    c.data.task = "guess_number"
    c.data.task_kwargs.high = 32
    c.env.name = "guess_number"
    c.env.kwargs = {"max_turns": 6, "reward": 0.0}   # success is scored by the task
    c.env.turn_tokens = 4                    # "16\n"
    c.env.observation_tokens = 8             # "higher\n"
    c.env.num_workers = 1
    c.sampling.n = 8
    c.sampling.max_new_tokens = 64           # 6 guesses and 5 replies
    c.sampling.max_prompt_len = 16           # BOS + "#0412 1-32?\n"
    c.train.batch_prompts = 16
    c.train.steps = 200
    c.train.rollout_log_every = 25
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"
    c.optim.min_lr_ratio = 0.0
    c.rl.kl_mode = "none"
    c.rl.kl_coef = 0.0
    c.sft.steps = 2000
    c.sft.batch_size = 32
    c.sft.lr = 1e-3
    c.sft.eval_every = 25
    c.sft.eval_size = 100
    c.sft.target_accuracy = 0.3
    c.eval.every = 50
    c.eval.size = 200
    c.eval.k = 4
    if arg == "runlocal":
        c.train.steps = 2
        c.train.batch_prompts = 4
        c.sampling.n = 4
        c.sft.steps = 4
        c.sft.eval_every = 4
        c.sft.eval_size = 8
        c.eval.size = 8
        c.eval.k = 2
        c.eval.every = 0
    elif arg:
        raise ValueError(f"guess_grpo: unknown config argument {arg!r}; valid: 'runlocal'")
    return c
