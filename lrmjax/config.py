"""Experiment configuration: defaults for every group, and validation that names the bad key.

An experiment file under `configs/` starts from `base_config(algorithm)`, changes what it needs
and returns the ConfigDict. `main.py` applies the command-line overrides, calls `validate`
(`lrmjax.config_validation`: an unknown key, a wrong type, a number out of range, ... is a
ValueError naming the key) before anything runs, then locks the config. The config is never
mutated at run time; derived values live in the trainer's own objects.
"""

from __future__ import annotations

import ml_collections

from lrmjax.config_validation import (  # noqa: F401 (config_lib.mixture_components, ...)
    FREE_FORM_GROUPS,
    eval_set_entries,
    longest_answer,
    mixture_components,
)
from lrmjax.models import presets
from lrmjax.rl import algorithms


def base_config(algorithm: str = "grpo") -> ml_collections.ConfigDict:
    """Defaults for every config group, with the RL knobs of `algorithm`'s preset."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"          # a name in lrmjax.models.presets.PRESETS
    c.model.hf_path = ""             # a local HF checkpoint dir; overrides `preset` when set
    c.model.dtype = "float32"        # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = "float32"
    # What each block keeps for the backward pass (the rest is recomputed): a name in
    # lrmjax.models.transformer.REMAT_POLICIES ('none', 'full', 'save_dots', ...).
    c.model.remat = "none"
    c.model.scan_layers = False
    # ModelConfig fields to replace in the preset, e.g. {'num_layers': 2}. vocab_size -1 means
    # "the tokenizer's vocabulary size".
    c.model.overrides = ml_collections.ConfigDict({"vocab_size": -1})
    # LoRA (lrmjax/models/lora.py): rank 0 = full fine-tuning; rank r in 1..128 trains only
    # adapters (x @ A) @ B * alpha / r on the `targets` projections, the base frozen. The
    # reference policy is then the base itself (no copy), checkpoints hold the adapters, and
    # the export writes merged HF weights and a PEFT adapter directory. `use_lora` applies the
    # literature's preset (rank 32 on every linear layer, lr 10x full fine-tuning).
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = 0
    c.model.lora.alpha = 32.0
    c.model.lora.targets = presets.ALL_LORA_TARGETS  # names in presets.LORA_TARGETS
    # Sample from W + (alpha / r) A @ B merged once per rollout (one more copy of the base
    # weights in param_dtype) instead of running the adapters in every decode step.
    c.model.lora.merge_for_sampling = False
    c.model.lora.base_dtype = ""     # store the frozen base in this dtype ('' = param_dtype)

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "char"        # 'char' (procedural tasks) or 'hf' (tokenizer.json)
    c.tokenizer.path = ""            # for 'hf'; defaults to model.hf_path
    c.tokenizer.chat_template = False  # wrap prompts with the tokenizer's chat template

    c.data = ml_collections.ConfigDict()
    # 'task', 'task_mixture', 'gsm8k_jsonl', 'math_jsonl' or 'code_jsonl' (rows for the code reward)
    c.data.source = "task"
    c.data.task = "arithmetic"       # for source 'task': a name in lrmjax.data.tasks
    c.data.task_kwargs = ml_collections.ConfigDict()
    # For source 'task_mixture': {label: {'task': name (default: the label), 'weight': share
    # of the train and held-out sets (default 1), 'kwargs': {...}}}. Evaluation reports every
    # metric per label too (eval/<label>/...).
    c.data.mixture = ml_collections.ConfigDict()
    c.data.path = ""                 # for the JSONL sources
    c.data.eval_path = ""
    # For the JSONL sources, several held-out sets instead of eval_path: {label: {'path':
    # file, 'source': 'gsm8k_jsonl' | 'math_jsonl' | 'code_jsonl' (default: data.source)}},
    # the first eval.size rows of each; evaluation reports every metric per label
    # (eval/<label>/...).
    c.data.eval_sets = ml_collections.ConfigDict()
    c.data.prompt_template = "{prompt}"  # applied to each Example.prompt
    c.data.train_size = 100_000      # examples generated for a procedural train set
    c.data.eval_size = 500           # held-out examples (a disjoint seed)
    c.data.eval_seed = 1_000_003
    c.data.curriculum = "none"       # 'none', 'band' (PRIME), 'weighted' (Kimi k1.5)
    c.data.band_low = 0.0
    c.data.band_high = 1.0

    c.sampling = ml_collections.ConfigDict()
    c.sampling.n = 8                 # responses per prompt (the group size)
    c.sampling.temperature = 1.0
    c.sampling.top_k = 0
    c.sampling.top_p = 1.0
    c.sampling.min_p = 0.0
    c.sampling.max_new_tokens = 16
    c.sampling.max_prompt_len = 32

    # Multi-turn episodes (lrmjax/envs): 'none' samples one response per prompt; a
    # registered environment ('tools', 'guess_number', ...) plays episodes in which the model
    # acts over turns and reads observations. sampling.max_new_tokens is then the episode's
    # budget of tokens after the prompt (model and observation tokens).
    c.env = ml_collections.ConfigDict()
    c.env.name = "none"
    c.env.kwargs = ml_collections.ConfigDict()  # the environment's constructor arguments
    c.env.turn_tokens = 0            # most model tokens per turn (0 = the episode budget)
    c.env.observation_tokens = 32    # observations are cut to this many tokens (counted)
    c.env.num_workers = 2            # processes that step the environments; 0 = in-process
    c.env.timeout_s = 10.0           # per step; a step past it ends the episode (reward 0)
    c.env.max_observation_chars = 20_000  # cut in the worker, before tokenizing
    # Chat models (tokenizer.chat_template): the template episodes are rendered with, a name
    # in lrmjax/envs/templates ('qwen2_5', 'qwen3_multiturn', ...) or '' for the tokenizer's.
    c.env.chat_template = ""

    c.rl = algorithms.get(algorithm)
    # Presets are written for long responses (DAPO's overlong buffer is 4096 tokens): the
    # default ramp is at most the last half of the response budget, and starts past the
    # default task's longest answer and EOS (the rule `config_validation.check_overlong_buffer`
    # enforces): 8 of 16 tokens for 3-digit addition's 4-digit sums.
    if c.rl.overlong_buffer_len > 0:
        answer = longest_answer(c)
        room = c.sampling.max_new_tokens - (answer[0] + 1 if answer else 0)
        c.rl.overlong_buffer_len = min(c.rl.overlong_buffer_len,
                                       c.sampling.max_new_tokens // 2, room)
    c.algorithm = algorithm

    c.reward = ml_collections.ConfigDict()
    # Reward functions and weights. 'task' scores with the procedural task's own verifier.
    c.reward.fns = ml_collections.ConfigDict({"task": 1.0})
    # Process (step-level) rewards and weights (lrmjax.rewards.process), added per token on
    # top of the outcome reward; they need a token-level rl.adv_estimator.
    c.reward.process_fns = ml_collections.ConfigDict()
    c.reward.num_workers = 0         # 0 = in-process (no timeouts); >0 = worker processes
    c.reward.timeout_s = 10.0
    # A reward that fails (raises, times out) on every row of this many consecutive scoring
    # calls stops the run with its error, instead of training on zeros (0 = never).
    c.reward.max_failing_calls = 3
    # The `code` reward's sandbox (lrmjax/rewards/sandbox.py) isolates programs only as root
    # with util-linux unshare/setpriv; elsewhere the run refuses to start, naming what is
    # missing, unless allow_unisolated (then programs run as plain child processes with this
    # process's uid, network and filesystem, a warning is logged and reward/sandbox_isolated
    # reads 0).
    c.reward.sandbox = ml_collections.ConfigDict()
    c.reward.sandbox.allow_unisolated = False
    # A control experiment: permute the rewards across the batch before computing advantages,
    # so they carry no information about the responses (learning should then stall).
    c.reward.shuffle_control = False
    # A spurious-reward control (Shao et al. 2025, arXiv:2506.10947): with p > 0 every response
    # is rewarded 1 with probability p, independently of what it says (the verifier's score is
    # still logged). The device-reward path only (lrmjax.train.sweep, experiments/sweep.py).
    c.reward.random_p = 0.0

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6
    c.optim.schedule = "constant"    # 'constant' or 'cosine' (both after linear warmup)
    c.optim.warmup_steps = 0
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 1.0
    c.optim.critic_lr = 1e-5
    c.optim.critic_warmup_steps = 0

    c.sft = ml_collections.ConfigDict()
    c.sft.steps = 0                  # 0 = no supervised warm start
    c.sft.batch_size = 64
    c.sft.lr = 1e-3
    c.sft.warmup_steps = 20
    c.sft.eval_every = 50
    c.sft.target_accuracy = 1.0      # stop once held-out greedy accuracy reaches this
    c.sft.eval_size = 200            # held-out examples checked every sft.eval_every steps
    # Demonstrations from the procedural task with these kwargs over data.task_kwargs (a pool
    # of its own, held-out prompts removed); {} = the RL train set's. data.source 'task' only.
    c.sft.task_kwargs = ml_collections.ConfigDict()
    # Another run's workdir whose finished warm start this run starts RL from, instead of
    # training one (RL ablations from one warm start). Its model and tokenizer config must
    # equal this one's; the seed may differ.
    c.sft.from_workdir = ""

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.batch_prompts = 16       # prompts per RL step (x sampling.n responses)
    c.train.ppo_epochs = 1
    c.train.minibatches = 1          # optimizer steps per epoch
    c.train.microbatches = 1         # gradient accumulation inside one optimizer step
    # The log-prob and value passes run over a step's rows in this many slices, one after
    # another (each split over the devices), so they hold 1/k of the rows' activations.
    c.train.logprob_microbatches = 1
    # The update and log-prob passes run the LM head in chunks of tokens when a pass's fp32
    # logits would exceed this many MB, so [tokens, vocab] logits never exist in full
    # (steps.head_logprobs; 0 = never chunk). Small vocabularies never reach it.
    c.train.logits_chunk_mb = 256
    # Each group's prompt runs once, not n times, in the reference/old logprob passes and (with
    # one minibatch) the update: exact, and n-1 of n prompt token-passes fewer.
    c.train.shared_prompt_forward = True
    # Sequence packing (lrmjax/train/packing.py): > 0 runs the log-prob, reference, value and
    # update forwards on rows of this many tokens, each holding several whole sequences
    # (prompt + response) end to end, instead of one padded [P + R] row per sequence. The
    # losses are the padded ones (to float rounding); 0 = padded rows. At least
    # sampling.max_prompt_len + sampling.max_new_tokens, so every sequence fits a row.
    c.train.pack_tokens = 0
    c.train.max_refill_rounds = 4    # dynamic sampling: extra sampling rounds per step
    c.train.max_nonfinite = 5        # consecutive skipped (non-finite) updates before stopping
    c.train.log_every = 10
    c.train.rollout_log_every = 50
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2
    c.train.export_hf = True         # save_pretrained at the end when the model is HF-compatible
    c.train.progress = True          # console progress bar
    c.train.peak_tflops = 0.44       # per device, for perf/mfu (2-core CPU fp32 matmul: ~0.44)

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 100               # 0 = only before and after training
    c.eval.size = 500
    c.eval.k = 4                     # samples per prompt for pass@k / maj@k (0 = greedy only)
    c.eval.temperature = 1.0
    c.eval.batch_size = 256

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # CPU only: XLA devices to split the host into (set by `lrmjax.main` before jax starts),
    # so that the sharded code paths run on a CPU as they would on a device mesh. Which count
    # is fastest depends on the model (experiments/benchmarks/HISTORY.md, "Sampler throughput").
    c.mesh.cpu_devices = 8
    # CPU hosts: glibc malloc keeps XLA's per-call buffers instead of unmapping them after every
    # call and page-faulting them back in (see lrmjax/host.py).
    c.mesh.cpu_retain_freed_memory = True
    # Multi-host: call jax.distributed.initialize(). Empty address / -1 let JAX detect the
    # cluster (TPU pods, SLURM, ...); on CPU hosts set all three.
    c.mesh.distributed = False
    c.mesh.coordinator_address = ""
    c.mesh.num_processes = -1
    c.mesh.process_id = -1
    return c


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of the config file at `path`: lets one config build on another."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"lrmjax_config_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load a config from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def set_by_path(cfg: ml_collections.ConfigDict, path: str, text: str) -> None:
    """Sets `cfg.<path>` from command-line text, parsed as a Python literal (a bare word stays a
    string), the way `--config.key=value` does for `main.py`. Unknown paths raise ValueError."""
    import ast

    *groups, key = path.split(".")
    node = cfg
    for i, name in enumerate(groups):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ValueError(f"Unknown config key {'.'.join(groups[:i + 1])!r}")
        node = node[name]
    free = ".".join(groups) in FREE_FORM_GROUPS  # e.g. model.overrides.tie_embeddings
    if not isinstance(node, ml_collections.ConfigDict) or (key not in node and not free):
        raise ValueError(f"Unknown config key {path!r}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key in node and isinstance(node[key], float) and is_int:
        value = float(value)
    node[key] = value


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> presets.ModelConfig:
    """The ModelConfig a run uses (for presets; HF checkpoints bring their own shapes, to
    which `run_fields` apply)."""
    overrides = dict(cfg.model.overrides)
    if overrides.get("vocab_size", -1) == -1:
        overrides["vocab_size"] = vocab_size
    return presets.get(cfg.model.preset, **run_fields(cfg), **overrides)


def run_fields(cfg: ml_collections.ConfigDict) -> dict[str, object]:
    """The ModelConfig fields the run's config sets (dtypes, remat, scan, LoRA), whichever
    preset or checkpoint gives the shapes."""
    import jax.numpy as jnp

    m = cfg.model
    return dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype),
                remat=m.remat, scan_layers=m.scan_layers, lora_rank=m.lora.rank,
                lora_alpha=float(m.lora.alpha), lora_targets=tuple(m.lora.targets))


# "LoRA Without Regret" (Schulman and Thinking Machines Lab, 2025): LoRA on every linear layer
# (attention and MLP) matches full fine-tuning in RL even at low rank, with alpha fixed at 32
# and a learning rate about 10x full fine-tuning's (their optimal LoRA/FullFT lr ratio is
# roughly 10 across model sizes). Hu et al. 2021 introduced the rank/alpha parametrization.
LORA_PRESET = {"rank": 32, "alpha": 32.0, "targets": presets.ALL_LORA_TARGETS}
LORA_LR_MULTIPLIER = 10.0


def use_lora(cfg: ml_collections.ConfigDict, rank: int = LORA_PRESET["rank"]) -> None:
    """Switches the experiment `cfg` (being built) to the literature's LoRA preset: rank 32 by
    default, alpha 32, adapters on q, k, v, o, gate, up and down, `optim.lr` x 10."""
    cfg.model.lora.rank = rank
    cfg.model.lora.alpha = LORA_PRESET["alpha"]
    cfg.model.lora.targets = LORA_PRESET["targets"]
    cfg.optim.lr = cfg.optim.lr * LORA_LR_MULTIPLIER


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None,
             num_processes: int | None = None) -> None:
    """Raises ValueError naming the first bad key: unknown key, wrong type, a number outside
    its range, a model or reward that cannot be built, sizes that do not divide, inconsistent
    algorithm knobs (all listed in `lrmjax.config_validation`). `num_devices` /
    `num_processes` (known once JAX has started) add the mesh checks."""
    from lrmjax import config_validation

    config_validation.validate(cfg, base_config, num_devices, num_processes)
