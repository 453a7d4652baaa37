"""GRPO with a search tool over the shipped corpus, Qwen2.5-1.5B-Instruct, for a TPU/GPU mesh.

    python -m lrmjax.main --config configs/search_qa_qwen2_5_1_5b.py --workdir gs://.../run \
        --config.model.hf_path=/models/Qwen2.5-1.5B-Instruct

    # CPU smoke run: a tiny random Qwen2-shaped checkpoint made on the fly.
    python -m lrmjax.main --config configs/search_qa_qwen2_5_1_5b.py:runlocal --workdir /tmp/s

Questions made from the corpus (data task `corpus_qa`: capitals, atomic numbers) whose
answers the `search` tool finds (BM25 with `bm25s` over `lrmjax/envs/corpus/facts.jsonl`).
Episodes of up to 3 turns in Qwen2.5's `<tool_call>` format; the task's verifier scores the
final turn's `<answer>` (exact, case-insensitive). A model that already knows the facts needs
no search: this config is the template for search-augmented RL (Search-R1 style) on a larger
corpus; swap the corpus with `env.kwargs.tool_options.search.corpus`.
"""

from lrmjax import config as config_lib

PROMPT = ("{prompt}\nUse the search tool if you need to. Give your final answer as "
          "<answer>...</answer>.")


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
    c.data.task = "corpus_qa"
    c.data.prompt_template = PROMPT
    c.env.name = "tools"
    c.env.kwargs = {"tools": ("search",), "fmt": "qwen", "max_turns": 3, "max_calls": 2,
                    "max_result_chars": 1000}
    c.env.chat_template = "qwen2_5"
    c.env.turn_tokens = 256
    c.env.observation_tokens = 384
    c.env.num_workers = 4
    c.reward.fns = {"task": 1.0}
    c.sampling.n = 8
    c.sampling.max_new_tokens = 1024       # the episode: model turns and search results
    c.sampling.max_prompt_len = 512        # Qwen2.5's tool system prompt + the question
    c.rl.kl_coef = 0.001
    c.optim.lr = 1e-6
    c.optim.warmup_steps = 10
    c.train.batch_prompts = 64
    c.train.steps = 200
    c.train.checkpoint_every = 50
    c.eval.every = 50
    c.eval.size = 100
    c.eval.k = 4
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.train.peak_tflops = 989.0            # H100 bf16 dense, for perf/mfu
    if arg == "runlocal":
        c.model.hf_path = "tiny-random:qwen2"
        c.model.dtype = "float32"
        c.model.remat = "none"
        # The tiny checkpoint's ChatML template: Qwen2.5's tool system prompt does not fit
        # the tiny model (see tool_math_qwen2_5_1_5b.py).
        c.env.chat_template = ""
        c.env.kwargs = {"tools": ("search",), "fmt": "qwen", "max_turns": 2, "max_calls": 1,
                        "max_result_chars": 200}
        c.env.turn_tokens = 16
        c.env.observation_tokens = 64
        c.env.num_workers = 1
        c.sampling.n = 2
        c.sampling.max_new_tokens = 96
        c.sampling.max_prompt_len = 96
        c.train.batch_prompts = 4
        c.train.steps = 2
        c.eval.size = 4
        c.eval.k = 2
        c.eval.every = 0
        c.mesh.data = -1
        c.mesh.fsdp = 1
        c.train.peak_tflops = 0.44
    elif arg:
        raise ValueError(f"search_qa_qwen2_5_1_5b: unknown argument {arg!r}; valid: 'runlocal'")
    return c
