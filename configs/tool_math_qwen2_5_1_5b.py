"""GRPO on GSM8K with a Python tool, Qwen2.5-1.5B-Instruct, for a TPU/GPU mesh.

    python -m lrmjax.main --config configs/tool_math_qwen2_5_1_5b.py --workdir gs://.../run \
        --config.model.hf_path=/models/Qwen2.5-1.5B-Instruct \
        --config.data.path=/data/gsm8k/train.jsonl --config.data.eval_path=/data/gsm8k/test.jsonl

    # CPU smoke run: a tiny random Qwen2-shaped checkpoint made on the fly, shipped fixtures.
    python -m lrmjax.main --config configs/tool_math_qwen2_5_1_5b.py:runlocal --workdir /tmp/t

Episodes of up to 4 turns: the model may call the `python` tool (Qwen2.5's `<tool_call>` JSON
format; the code runs in the sandbox, stateless per call, and its output comes back as a
`tool` message rendered by Qwen2.5's own chat template, `env.chat_template = 'qwen2_5'`)
before it answers in \\boxed{}; math-verify scores the final turn. Every turn ends at the
model's EOS; observation tokens are the template's delta for the tool messages and the next
generation prompt (`lrmjax.envs.chat`), and stay out of the loss.
"""

from lrmjax import config as config_lib
from lrmjax.data import FIXTURES_DIR

PROMPT = ("{prompt}\nYou may run Python code with the python tool. Put your final answer "
          "within \\boxed{{}}.")


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
    c.env.name = "tools"
    c.env.kwargs = {"tools": ("python",), "fmt": "qwen", "max_turns": 4, "max_calls": 2,
                    "max_result_chars": 1000}
    c.env.chat_template = "qwen2_5"
    c.env.turn_tokens = 768
    c.env.observation_tokens = 384
    c.env.num_workers = 8
    c.env.timeout_s = 20.0                 # above the python tool's 5 s sandbox limit
    c.reward.fns = {"math": 1.0}
    c.reward.num_workers = 8
    c.sampling.n = 8
    c.sampling.max_new_tokens = 2048       # the episode: model turns and tool results
    c.sampling.max_prompt_len = 640        # Qwen2.5's tool system prompt + the question
    c.rl.kl_coef = 0.001
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
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
        c.env.kwargs = {"tools": ("python",), "fmt": "qwen", "max_turns": 2, "max_calls": 1,
                        "max_result_chars": 200}
        # The tiny checkpoint's own ChatML template: Qwen2.5's tool system prompt alone is
        # 600 tokens of its 512-token BPE, past the tiny model's length (the Qwen2.5
        # template's deltas are tested in tests/test_envs_chat.py).
        c.env.chat_template = ""
        c.env.turn_tokens = 16
        c.env.observation_tokens = 48
        c.env.num_workers = 1
        c.reward.num_workers = 0
        c.sampling.n = 2
        c.sampling.max_new_tokens = 64
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
        raise ValueError(f"tool_math_qwen2_5_1_5b: unknown argument {arg!r}; valid: 'runlocal'")
    return c
