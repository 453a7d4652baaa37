"""DAPO on MATH-style problems with Qwen2.5-Math-7B, for a TPU/GPU mesh (as in the DAPO
paper's recipe: clip-higher 0.28, dynamic sampling, token-mean loss, soft overlong penalty,
no KL).

    python -m lrmjax.main --config configs/math_dapo_qwen2_5_math_7b.py --workdir gs://.../run \
        --config.model.hf_path=/models/Qwen2.5-Math-7B \
        --config.data.path=/data/math/train.jsonl --config.data.eval_path=/data/math/test.jsonl

    # CPU smoke run: a tiny random checkpoint made on the fly, shipped MATH fixtures.
    python -m lrmjax.main --config configs/math_dapo_qwen2_5_math_7b.py:runlocal --workdir /tmp/m

Data files are MATH JSONL ({"problem", "solution" with a final \\boxed{}}).

Sized for 16 H100s or more, fsdp over all of them (RESULTS.md "Memory plan", from
experiments/benchmarks/memory_plan.py): a step samples 4,096 rows of 512 + 3,072 slots at once.
"""

from lrmjax import config as config_lib
from lrmjax.data import FIXTURES_DIR
from lrmjax.rl import algorithms

PROMPT = ("{prompt}\nPlease reason step by step, and put your final answer within "
          "\\boxed{{}}.")


def get_config(arg: str | None = None):
    c = config_lib.base_config("dapo")
    c.model.preset = ""                    # set model.hf_path to a local checkpoint
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    # Layers in one scanned block: compile time flat in depth, and each layer's activations
    # freed before the next (memory_plan.py; RESULTS.md "Memory plan").
    c.model.scan_layers = True
    c.tokenizer.kind = "hf"
    c.tokenizer.chat_template = True
    c.data.source = "math_jsonl"
    c.data.prompt_template = PROMPT
    c.reward.fns = {"math": 1.0}
    c.reward.num_workers = 16
    c.sampling.n = 16
    c.sampling.temperature = 1.0
    c.sampling.top_p = 1.0
    c.sampling.max_new_tokens = 3072
    c.sampling.max_prompt_len = 512
    c.rl = algorithms.get("dapo", overlong_buffer_len=512)
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.1
    c.train.batch_prompts = 256
    c.train.minibatches = 16
    c.train.microbatches = 4
    c.train.logprob_microbatches = 16      # all 4,096 rows' activations at once: 600+ GiB
    c.train.max_refill_rounds = 3
    c.train.steps = 1000
    c.train.checkpoint_every = 50
    c.eval.every = 50
    c.eval.size = 500
    c.eval.k = 16
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.train.peak_tflops = 989.0
    if arg == "runlocal":
        c.model.hf_path = "tiny-random:qwen2"
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.data.path = f"{FIXTURES_DIR}/math_sample.jsonl"
        c.data.eval_path = f"{FIXTURES_DIR}/math_sample.jsonl"
        c.reward.num_workers = 0
        c.sampling.n = 4
        c.sampling.max_new_tokens = 16
        c.sampling.max_prompt_len = 192
        c.rl.overlong_buffer_len = 4
        c.train.batch_prompts = 4
        c.train.minibatches = 2
        c.train.microbatches = 1
        c.train.logprob_microbatches = 1
        c.train.max_refill_rounds = 1
        c.train.steps = 2
        c.eval.size = 4
        c.eval.k = 2
        c.eval.every = 0
        c.mesh.data = -1
        c.mesh.fsdp = 1
        c.train.peak_tflops = 0.44
    elif arg:
        raise ValueError(f"math_dapo_qwen2_5_math_7b: unknown argument {arg!r}; valid: "
                         "'runlocal'")
    return c
