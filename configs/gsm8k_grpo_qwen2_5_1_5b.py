"""GRPO on GSM8K with Qwen2.5-1.5B-Instruct, for a TPU/GPU mesh.

    python -m lrmjax.main --config configs/gsm8k_grpo_qwen2_5_1_5b.py --workdir gs://.../run \
        --config.model.hf_path=/models/Qwen2.5-1.5B-Instruct \
        --config.data.path=/data/gsm8k/train.jsonl --config.data.eval_path=/data/gsm8k/test.jsonl

    # CPU smoke run: a tiny random Qwen2-shaped checkpoint made on the fly, shipped fixtures.
    python -m lrmjax.main --config configs/gsm8k_grpo_qwen2_5_1_5b.py:runlocal --workdir /tmp/g

Data files are GSM8K JSONL ({"question", "answer": "... #### 42"}). The reward is answer
equivalence through math-verify on the last \\boxed{} (or `#### n`) of the response.

Fits one host of 8 H100s, or 8 TPU v5e or v5p chips, fsdp over all of them (RESULTS.md
"Memory plan", from experiments/benchmarks/memory_plan.py).
"""

from lrmjax import config as config_lib
from lrmjax.data import FIXTURES_DIR

PROMPT = ("{prompt}\nPlease reason step by step, and put your final answer within "
          "\\boxed{{}}.")


def get_config(arg: str | None = None):
    c = config_lib.base_config("grpo")
    c.model.preset = ""                    # set model.hf_path to a local checkpoint
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    # Layers in one scanned block: compile time flat in depth, and each layer's activations
    # freed before the next (memory_plan.py; RESULTS.md "Memory plan").
    c.model.scan_layers = True
    c.tokenizer.kind = "hf"
    c.tokenizer.chat_template = True
    c.data.source = "gsm8k_jsonl"
    c.data.prompt_template = PROMPT
    c.reward.fns = {"math": 1.0}
    c.reward.num_workers = 8
    c.reward.timeout_s = 10.0
    c.sampling.n = 8
    c.sampling.temperature = 1.0
    c.sampling.max_new_tokens = 1024
    c.sampling.max_prompt_len = 384
    c.rl.kl_coef = 0.001
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.01
    c.train.batch_prompts = 64
    c.train.minibatches = 2
    c.train.microbatches = 4
    c.train.steps = 500
    c.train.checkpoint_every = 50
    c.eval.every = 50
    c.eval.size = 1319
    c.eval.k = 4
    c.eval.batch_size = 256
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.train.peak_tflops = 989.0            # H100 bf16 dense, for perf/mfu
    if arg == "runlocal":
        c.model.hf_path = "tiny-random:qwen2"
        c.model.dtype = "float32"
        c.model.remat = "none"
        c.data.path = f"{FIXTURES_DIR}/gsm8k_sample.jsonl"
        c.data.eval_path = f"{FIXTURES_DIR}/gsm8k_sample.jsonl"
        c.reward.num_workers = 0
        c.sampling.n = 2
        c.sampling.max_new_tokens = 16
        c.sampling.max_prompt_len = 160
        c.train.batch_prompts = 4
        c.train.minibatches = 1
        c.train.microbatches = 1
        c.train.steps = 2
        c.eval.size = 4
        c.eval.k = 2
        c.eval.every = 0
        c.mesh.data = -1
        c.mesh.fsdp = 1
        c.train.peak_tflops = 0.44
    elif arg:
        raise ValueError(f"gsm8k_grpo_qwen2_5_1_5b: unknown argument {arg!r}; valid: 'runlocal'")
    return c
