"""Everything a run builds from its config before training: mesh, tokenizer, model and its
initial params, data iterators, the reward path and the sampler, gathered in `Inputs`.

`Inputs` also owns the text <-> token conversions the trainer and evaluator share, so the
trainer itself never touches strings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from lrmjax import config as config_lib
from lrmjax import config_validation, parallel
from lrmjax import envs as envs_lib
from lrmjax import tokenizers as tok_lib
from lrmjax.data import curriculum as curriculum_lib
from lrmjax.data import datasets
from lrmjax.data import tasks as tasks_lib
from lrmjax.data.tasks import Example
from lrmjax.envs import chat as chat_lib
from lrmjax.envs.pool import EnvPool
from lrmjax.envs.runner import EpisodeBook
from lrmjax.episodes import EpisodeSampler
from lrmjax.models import sharding, tiny_hf, transformer
from lrmjax.models.presets import ModelConfig
from lrmjax.rewards import base as reward_base
from lrmjax.rewards import code as code_lib
from lrmjax.rewards import process as process_lib
from lrmjax.rewards.pool import RewardPool
from lrmjax.sampling import Rollout, Sampler, SamplingParams
from lrmjax.train import steps

log = logging.getLogger(__name__)

# Unsupervised rewards that read the policy's per-token statistics from the metadata.
TOKEN_STAT_REWARDS = frozenset({"mean_logprob", "neg_entropy", "self_certainty"})


@dataclasses.dataclass
class Played:
    """`Inputs.play`'s result: rollout, texts to score [N], and the EpisodeBook or None."""

    rollout: Rollout
    texts: list[str]
    book: EpisodeBook | None


@dataclasses.dataclass
class Inputs:
    cfg: ml_collections.ConfigDict
    mesh: Any
    tokenizer: Any
    model_cfg: ModelConfig
    init_params: Any
    sampler: Sampler
    train_source: Any
    data_iter: Any
    eval_examples: list[Example]
    pool: RewardPool
    task: Any
    hf_exportable: bool
    train_sampling: SamplingParams
    prompt_len: int
    token_stats_fn: Any = None  # jitted steps.response_token_stats, when a reward needs it
    process_pools: dict[str, tuple[RewardPool, float]] = dataclasses.field(
        default_factory=dict)  # reward.process_fns: name -> (its pool, weight)
    # Counts from loading the data (data/train_prompts, data/train_long_prompts_dropped, ...):
    # what `build_inputs` logged at startup, for a metrics row.
    data_stats: dict[str, float] = dataclasses.field(default_factory=dict)
    # Multi-turn episodes (config 'env'): the sampler that continues them from its KV cache
    # and the pool that steps the environments; None for single-turn runs.
    episode_sampler: EpisodeSampler | None = None
    env_pool: EnvPool | None = None
    hf_path: str = ""  # the HF checkpoint the model was loaded from (resolved), or ''
    # The warm start's examples (`warm_start_pool`); None without a warm start.
    sft_source: Any = None

    # ------------------------------------------------------------ sampling
    def play(self, params: Any, examples: Sequence[Example], sampling: SamplingParams,
             key: Any) -> Played:
        """`sampling.n` responses (single-turn) or episodes (config 'env') per example:
        the rollout [N = len(examples) * n rows, group-major], the texts the rewards score
        (the response, or an episode's last model turn) and, for episodes, their book."""
        if self.episode_sampler is None:
            tokens, mask = self.encode(examples)
            roll = self.sampler.generate(params, tokens, mask, sampling, key)
            return Played(roll, self.decode(roll), None)
        env_cfg, n = self.cfg.env, sampling.n
        rows = [ex for ex in examples for _ in range(sampling.n)]
        envs = [envs_lib.make_env(env_cfg.name, **env_cfg.kwargs.to_dict()) for _ in rows]
        tok = self.tokenizer
        chats: list[Any] = []

        def observation_ids(row: int, text: str, result: Any) -> list[int]:
            if not chats:  # plain text: the observation's own tokens
                return tok.encode(result.observation)
            messages = result.info.get("messages") or [{"role": "tool",
                                                        "content": result.observation}]
            return chats[row].observation_ids(text, messages)

        book = EpisodeBook(self.env_pool, envs, rows,
                           decode=functools.partial(_turn_text, tok,
                                                    bool(self.cfg.tokenizer.chat_template)),
                           encode_observation=observation_ids,
                           observation_cap=env_cfg.observation_tokens,
                           budget=sampling.max_new_tokens)
        prompts = book.reset()
        # A group's n episodes share the prompt its first environment's reset returned.
        firsts = [dataclasses.replace(ex, prompt=prompts[i * n])
                  for i, ex in enumerate(examples)]
        tokens, mask = self.encode(firsts)
        if self.cfg.tokenizer.chat_template:
            chats[:] = [episode_chat(self.cfg, tok, ex) for ex in firsts for _ in range(n)]
        roll = self.episode_sampler.run(params, tokens, mask, sampling, key, book.step)
        return Played(roll, book.final_texts(), book)

    # ------------------------------------------------------------ text <-> tokens
    def prompt_text(self, ex: Example) -> str:
        return prompt_text(self.cfg, self.tokenizer, ex)

    def encode(self, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
        """Left-pads the prompts to exactly `prompt_len` slots: [B, P] tokens and mask."""
        ids = [prompt_ids(self.cfg, self.tokenizer, ex) for ex in examples]
        for ex, seq in zip(examples, ids, strict=True):
            if len(seq) > self.prompt_len:
                raise ValueError(f"prompt of {len(seq)} tokens exceeds sampling.max_prompt_len="
                                 f"{self.prompt_len}: {ex.prompt[:80]!r}")
        return tok_lib.left_pad(ids, self.tokenizer.pad_id, self.prompt_len)

    def decode(self, roll: Rollout, skip_special: bool = True) -> list[str]:
        """The responses' text; `skip_special=False` keeps special tokens and goes on past
        stop ids (a multi-turn episode's transcript, with every turn's EOS)."""
        toks = np.asarray(roll.response_tokens)
        mask = np.asarray(roll.response_mask)
        return [self.tokenizer.decode(t[m], skip_special=skip_special)
                for t, m in zip(toks, mask, strict=True)]

    # ------------------------------------------------------------ rewards
    def reward_metadata(self, examples: Sequence[Example], roll: Rollout | None,
                        token_stats: dict[str, np.ndarray] | None = None
                        ) -> list[dict[str, Any]]:
        """Per-row metadata for reward functions: the example's own metadata plus `prompt`,
        `answer`, `group_id`, `response_tokens` and, when a reward asks for them, the
        per-token statistics of the response (token_logprobs, token_entropies,
        self_certainty)."""
        rows = []
        for i, ex in enumerate(examples):
            row = {**ex.metadata, "prompt": ex.prompt, "answer": ex.answer}
            if roll is not None:
                row["group_id"] = int(roll.group_ids[i])
                row["response_tokens"] = int(roll.lengths[i])
                for name, values in (token_stats or {}).items():
                    row[name] = values[i][np.asarray(roll.response_mask[i], bool)].tolist()
            rows.append(row)
        return rows

    def score(self, examples: Sequence[Example], completions: Sequence[str], roll: Rollout,
              params: Any = None) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
        """Rewards [N] for one rollout, their components, and the pool's error counts."""
        stats = None
        if self.token_stats_fn is not None and params is not None:
            tokens = np.concatenate([roll.prompt_tokens, roll.response_tokens], axis=1)
            mask = np.concatenate([roll.prompt_mask, roll.response_mask], axis=1)
            stats = parallel.apply_to_host_rows(self.token_stats_fn, params, tokens, mask,
                                                mesh=self.mesh)
        prompts = [ex.prompt for ex in examples]
        scores, metrics, components = self.pool.score(
            prompts, list(completions), self.reward_metadata(examples, roll, stats))
        return scores, components, metrics

    def process_rewards(self, examples: Sequence[Example], completions: Sequence[str],
                        roll: Rollout) -> tuple[np.ndarray, dict[str, float]]:
        """Per-token process rewards [N, R] float32 of this host's rows, from
        `reward.process_fns` (weighted and summed), and their counts: `reward/process_errors`
        and `reward/process_timeouts` (rows whose call raised, returned the wrong number of
        rows or timed out; they score no steps) and `reward/process_dropped` (steps outside
        the completion or non-finite)."""
        tokens, mask = np.asarray(roll.response_tokens), np.asarray(roll.response_mask, bool)
        char_ends = [self.tokenizer.char_ends(t[m]) for t, m in zip(tokens, mask, strict=True)]
        prompts = [ex.prompt for ex in examples]
        metadata = self.reward_metadata(examples, roll)
        total = np.zeros(tokens.shape, np.float32)
        counts = {"reward/process_errors": 0.0, "reward/process_timeouts": 0.0,
                  "reward/process_dropped": 0.0}
        for pool, weight in self.process_pools.values():
            # The pool logs each kind of failure once, with its message; the counts go to
            # the metrics every step.
            steps, failed = pool.score_steps(prompts, list(completions), metadata)
            rewards, dropped = process_lib.token_rewards(steps, char_ends, tokens.shape[1])
            total += weight * rewards
            counts["reward/process_errors"] += failed["errors"]
            counts["reward/process_timeouts"] += failed["timeouts"]
            counts["reward/process_dropped"] += dropped
        return total, counts

    def score_texts(self, examples: Sequence[Example], completions: Sequence[str]
                    ) -> list[float]:
        """Correctness for evaluation: the task's verifier, else the reward functions."""
        if self.task is not None:
            return [tasks_lib.verify_example(ex, c)
                    for ex, c in zip(examples, completions, strict=True)]
        scores, _, _ = self.pool.score([ex.prompt for ex in examples], list(completions),
                                       self.reward_metadata(examples, None))
        return list(np.asarray(scores))

    def observe(self, examples: Sequence[Example], rewards: np.ndarray) -> None:
        """Feeds a step's rewards to the curriculum (per-prompt running accuracy)."""
        if isinstance(self.data_iter, curriculum_lib.CurriculumDataset):
            n = len(rewards) // len(examples)
            self.data_iter.update([ex for ex in examples for _ in range(n)], rewards.tolist())

    def close(self) -> None:
        """Stops the worker processes of every reward pool (the outcome pool and the process
        pools) and of the environment pool. Idempotent."""
        for pool in [self.pool, *(p for p, _ in self.process_pools.values())]:
            pool.close()
        if self.env_pool is not None:
            self.env_pool.close()

    # ------------------------------------------------------------ accounting and export
    def step_flops(self, rows: int, length: int, epochs: int, with_ref: bool,
                   with_critic: bool) -> float:
        """FLOPs of one RL step: sampling forward + (ref, critic) forwards + 3x per update."""
        fwd = rows * length * self.model_cfg.flops_per_token(length // 2)
        return fwd * (1 + int(with_ref) + 3 * epochs * (1 + int(with_critic)) + int(with_critic))

    def export(self, params: Any, path: str) -> None:
        from lrmjax.models import hf

        hf.save_pretrained(self.model_cfg, jax.device_get(params), path,
                           tokenizer=self.tokenizer if self.cfg.tokenizer.kind == "hf" else None)


def prompt_text(cfg: ml_collections.ConfigDict, tokenizer: Any, ex: Example) -> str:
    """The text the policy is prompted with: `data.prompt_template` applied to the example's
    prompt, then (with `tokenizer.chat_template`) the tokenizer's chat template, or for
    episodes (config 'env') the episode's template with the environment's tools."""
    if cfg.tokenizer.chat_template and cfg.env.name != "none":
        return episode_chat(cfg, tokenizer, ex).text
    text = cfg.data.prompt_template.format(prompt=ex.prompt)
    if cfg.tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                             add_generation_prompt=True)
    return text


@functools.lru_cache(maxsize=8)
def _env_chat_setup(name: str, kwargs_json: str, template: str) -> tuple[Any, str | None]:
    """(the environment's tool schemas or None, the template text or None) for episodes."""
    tools = envs_lib.make_env(name, **json.loads(kwargs_json)).tools() or None
    return tools, (chat_lib.load_template(template) if template else None)


def episode_chat(cfg: ml_collections.ConfigDict, tokenizer: Any, ex: Example
                 ) -> chat_lib.ChatEpisode:
    """The chat bookkeeping of one episode on `ex`: the user message (`data.prompt_template`
    applied), the environment's tools, `env.chat_template` (or the tokenizer's)."""
    e = cfg.env
    tools, template = _env_chat_setup(e.name, json.dumps(e.kwargs.to_dict(), sort_keys=True),
                                      e.chat_template)
    text = cfg.data.prompt_template.format(prompt=ex.prompt)
    return chat_lib.ChatEpisode(tokenizer, [{"role": "user", "content": text}], tools,
                                template)


def _turn_text(tokenizer: Any, chat: bool, ids: Sequence[int]) -> str:
    """A model turn's text, without the stop id that ended it; for a chat model with its
    special tokens (a tool-call tag may be one, and the chat bookkeeping re-renders the turn
    as written), for a plain one without (a character model's BOS or PAD never reaches the
    environment)."""
    ids = list(ids)
    if ids and ids[-1] in tokenizer.stop_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special=not chat)


def prompt_ids(cfg: ml_collections.ConfigDict, tokenizer: Any, ex: Example) -> list[int]:
    """Token ids of the example's prompt, as `Inputs.encode` pads them and the data filter
    (`fitting_prompts`) measures them: `prompt_text`, then BOS when the tokenizer has one and
    no chat template (which writes its own) is used."""
    add_bos = tokenizer.bos_id is not None and not cfg.tokenizer.chat_template
    return tokenizer.encode(prompt_text(cfg, tokenizer, ex), add_bos=add_bos)


def _tokenizer(cfg: ml_collections.ConfigDict, hf_path: str) -> Any:
    if cfg.tokenizer.kind == "char":
        return tok_lib.CharTokenizer()
    return tok_lib.HFTokenizer.from_pretrained(cfg.tokenizer.path or hf_path)


def _model(cfg: ml_collections.ConfigDict, hf_path: str, tokenizer: Any, mesh: Any
           ) -> tuple[ModelConfig, Any, bool]:
    if hf_path:
        import jax.numpy as jnp

        from lrmjax.models import hf

        model_cfg, params = hf.load_pretrained(hf_path,
                                               dtype=jnp.dtype(cfg.model.dtype),
                                               param_dtype=jnp.dtype(cfg.model.param_dtype),
                                               mesh=mesh, scan_layers=cfg.model.scan_layers)
        fields = config_lib.run_fields(cfg)
        model_cfg = dataclasses.replace(model_cfg, remat=fields["remat"],
                                        **{k: v for k, v in fields.items()
                                           if k.startswith("lora_")})
        return model_cfg, params, True
    model_cfg = config_lib.model_config(cfg, tokenizer.vocab_size)
    params = sharding.init_sharded_params(model_cfg, jax.random.key(cfg.seed), mesh)
    exportable = cfg.tokenizer.kind == "hf"
    if exportable and cfg.train.export_hf:
        from lrmjax.models import hf

        # Said now, not found when the run ends and save_pretrained would raise.
        if reason := hf.unexportable_reason(model_cfg):
            log.warning("train.export_hf: no HF checkpoint will be written at the end: %s",
                        reason)
            exportable = False
    return model_cfg, params, exportable


def without_prompts(examples: Sequence[Example], held_out: Sequence[Example]) -> list[Example]:
    """`examples` less those whose prompt is a held-out prompt: held-out prompts never appear in
    training or in the warm start's demonstrations (checked, not assumed)."""
    seen = {ex.prompt for ex in held_out}
    return [ex for ex in examples if ex.prompt not in seen]


def _examples(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[Any, list[Example], Any]:
    """(train source, eval examples, task or None)."""
    d = cfg.data
    if d.source == "task_mixture":
        return _mixture_examples(cfg)
    if d.source == "task":
        task = tasks_lib.get_task(d.task, **d.task_kwargs.to_dict())
        train = task.sample(np.random.default_rng([cfg.seed, 1]), d.train_size)
        held_out = task.sample(np.random.default_rng(d.eval_seed), cfg.eval.size)
        return without_prompts(train, held_out), held_out, task
    data_dir = os.path.join(workdir, "tfds")
    kind = d.source
    train = datasets.make_source(kind, data_dir=data_dir, path=d.path)
    held_out: list[Example] = []
    if d.eval_path:
        ev = datasets.make_source(kind, data_dir=data_dir, path=d.eval_path)
        held_out = [ev[i] for i in range(min(len(ev), cfg.eval.size))]
    for label, set_kind, path in (config_lib.eval_set_entries(d) if d.eval_sets else []):
        ev = datasets.make_source(set_kind, data_dir=data_dir, path=path)
        held_out += [_tagged(ev[i], label) for i in range(min(len(ev), cfg.eval.size))]
    if d.eval_sets:  # seeded shuffle, so any prefix (the warm start's check) mixes the sets
        order = np.random.default_rng(d.eval_seed).permutation(len(held_out))
        held_out = [held_out[i] for i in order]
    return train, held_out, None


def _tagged(example: Example, label: str) -> Example:
    """`example` with metadata['subset'] = label (what evaluation groups its metrics by)."""
    return dataclasses.replace(example, metadata={**example.metadata, "subset": label})


def _mixture_examples(cfg: ml_collections.ConfigDict) -> tuple[list[Example], list[Example],
                                                                tuple[Any, ...]]:
    """(train examples, held-out examples, tasks) of config 'data.mixture'.

    Each entry gets its weight's share of `data.train_size` and of `eval.size` (largest
    remainders, so the totals are exact), drawn with its own seeds, and every example is
    tagged `metadata['subset'] = label` for the per-label evaluation. No held-out prompt of
    any entry appears in training. The held-out set is shuffled once (seeded), so any prefix
    of it (the warm start checks `eval_examples[:sft.eval_size]`) mixes the entries.
    """
    d = cfg.data
    parts = config_lib.mixture_components(d.mixture)
    weights = [w for _, _, w, _ in parts]
    n_train = datasets.split_counts(d.train_size, weights)
    n_eval = datasets.split_counts(cfg.eval.size, weights)
    train, held_out, tasks = [], [], []
    for i, (label, name, _, kwargs) in enumerate(parts):
        try:
            task = tasks_lib.get_task(name, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config 'data.mixture.{label}': {e}") from e

        train += [_tagged(ex, label)
                  for ex in task.sample(np.random.default_rng([cfg.seed, 1, i]), n_train[i])]
        held_out += [_tagged(ex, label)
                     for ex in task.sample(np.random.default_rng([d.eval_seed, i]), n_eval[i])]
        tasks.append(task)
    train = without_prompts(train, held_out)
    order = np.random.default_rng([d.eval_seed, len(parts)]).permutation(len(held_out))
    return train, [held_out[i] for i in order], tuple(tasks)


def fitting_prompts(cfg: ml_collections.ConfigDict, tokenizer: Any, source: Any, what: str
                    ) -> tuple[Any, int]:
    """`source` (a list of examples or a random-access source) without the examples whose
    prompt is longer than `sampling.max_prompt_len` tokens (`prompt_ids`, exactly what
    `Inputs.encode` would refuse mid-run), and how many were dropped. One warning gives the
    count and an example. A source comes back wrapped in a `datasets.SubsetSource` whose name
    records the limit (the data position saved in a checkpoint is then only restored into
    the same subset); unchanged when nothing is dropped.

    Deterministic in the data and the config: every host of a multi-host run builds the same
    data and so drops the same rows (no collective needed).

    Raises ValueError, naming the key, when no prompt of the set fits.
    """
    limit = cfg.sampling.max_prompt_len
    keep, first = [], None
    for i in range(len(source)):
        ex = source[i]
        n = len(prompt_ids(cfg, tokenizer, ex))
        if n <= limit:
            keep.append(i)
        elif first is None:
            first = (n, ex.prompt)
    dropped = len(source) - len(keep)
    if not dropped:
        return source, 0
    example = f"e.g. {first[0]} tokens: {first[1][:200]!r}"
    if not keep:
        raise ValueError(f"every one of the {len(source)} {what} prompts is longer than config "
                         f"'sampling.max_prompt_len' = {limit} tokens ({example})")
    log.warning("dropped %d of %d %s prompts longer than sampling.max_prompt_len=%d tokens "
                "(prompt template, chat template and BOS included), %s", dropped, len(source),
                what, limit, example)
    if isinstance(source, list):
        return [source[i] for i in keep], dropped
    name = f"{getattr(source, 'name', 'source')}:max_prompt_len={limit}"
    return datasets.SubsetSource(source, keep, name), dropped


def warm_start_pool(cfg: ml_collections.ConfigDict, tokenizer: Any, train: Any,
                    held_out: Sequence[Example]) -> Any:
    """The examples the warm start imitates: `train` itself, or with 'sft.task_kwargs' a pool
    of its own from the procedural task with those kwargs over 'data.task_kwargs' (seeded apart
    from the RL train set, as many examples as the warm start can use, held-out prompts
    removed, over-long prompts dropped)."""
    if not cfg.sft.task_kwargs:
        return train
    d, s = cfg.data, cfg.sft
    task = tasks_lib.get_task(d.task, **config_validation.warm_start_task_kwargs(cfg))
    pool = task.sample(np.random.default_rng([cfg.seed, 2]),
                       min(d.train_size, s.steps * s.batch_size))
    pool = without_prompts(pool, held_out)
    return fitting_prompts(cfg, tokenizer, pool, "warm-start")[0]


def _fit_data(cfg: ml_collections.ConfigDict, tokenizer: Any, train: Any,
              held_out: list[Example]) -> tuple[Any, list[Example], dict[str, float]]:
    """The train source and held-out examples without over-long prompts
    (`fitting_prompts`), and their counts (logged once here, kept in `Inputs.data_stats`)."""
    train, train_long = fitting_prompts(cfg, tokenizer, train, "train")
    held_out, eval_long = (fitting_prompts(cfg, tokenizer, held_out, "held-out")
                           if held_out else (held_out, 0))
    hosts = jax.process_count()
    extra = len(held_out) % hosts
    if extra:
        # Every host evaluates an equal block of each chunk: a remainder (dropped prompts, or
        # a file shorter than eval.size) would stop the run at its first evaluation. The same
        # rows on every host (the data is the same on every host).
        log.warning("held-out set: the last %d of %d prompts left out so that it splits over "
                    "%d hosts", extra, len(held_out), hosts)
        held_out = held_out[:len(held_out) - extra]
    stats = {"data/train_prompts": len(train), "data/train_long_prompts_dropped": train_long,
             "data/train_rows_skipped": getattr(train, "stats", {}).get("skipped", 0),
             "data/eval_prompts": len(held_out), "data/eval_long_prompts_dropped": eval_long}
    log.info("data: %s", ", ".join(f"{k[len('data/'):]}={v}" for k, v in stats.items()))
    return train, held_out, {k: float(v) for k, v in stats.items()}


def build_inputs(cfg: ml_collections.ConfigDict, workdir: str, warm_start: bool = True
                 ) -> Inputs:
    """Everything a run reads (see `Inputs`). `warm_start=False` leaves out the warm start's
    demonstrations (`sft_source` None; with 'sft.task_kwargs' a pool of its own, up to
    sft.steps x sft.batch_size examples to draw and tokenize), for a caller that only samples
    and evaluates."""
    mesh = parallel.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp,
                               "tensor": cfg.mesh.tensor})
    # Files under the shared workdir (a tiny test checkpoint, TFDS caches) are written by
    # host 0 first, then read by the others.
    hf_path = ""
    if cfg.model.hf_path:
        hf_path = parallel.main_host_first(
            lambda: tiny_hf.resolve(cfg.model.hf_path, workdir), "tiny_hf")
    if hf_path:  # its length is known from its config.json: check before loading weights
        from lrmjax.models import hf

        config_validation.check_response_budget(
            hf.read_config(hf_path).max_seq_len, cfg.sampling, f"the checkpoint {hf_path}")
    tokenizer = _tokenizer(cfg, hf_path)
    model_cfg, params, exportable = _model(cfg, hf_path, tokenizer, mesh)
    train_source, eval_examples, task = parallel.main_host_first(
        lambda: _examples(cfg, workdir), "datasets")
    train_source, eval_examples, data_stats = _fit_data(cfg, tokenizer, train_source,
                                                        list(eval_examples))
    sft_source = (warm_start_pool(cfg, tokenizer, train_source, eval_examples)
                  if warm_start and cfg.sft.steps > 0 else None)
    if sft_source is not None and sft_source is not train_source:
        data_stats["data/warm_start_prompts"] = float(len(sft_source))
        log.info("data: warm_start_prompts=%d (sft.task_kwargs %s)", len(sft_source),
                 cfg.sft.task_kwargs.to_dict())

    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    per_host = cfg.train.batch_prompts // jax.process_count()
    if cfg.data.curriculum == "none":
        data_iter = iter(datasets.PromptDataset(train_source, per_host, seed=cfg.seed, **shard))
    else:
        band = (cfg.data.band_low, cfg.data.band_high) if cfg.data.curriculum == "band" else None
        mode = "weighted" if cfg.data.curriculum == "weighted" else "uniform"
        data_iter = curriculum_lib.CurriculumDataset(train_source, per_host, seed=cfg.seed,
                                                     mode=mode, band=band, **shard)

    fns = {name: float(w) for name, w in cfg.reward.fns.items()}
    pool_options = dict(num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s,
                        max_failing_calls=cfg.reward.max_failing_calls)
    pool = RewardPool(outcome_reward(cfg), **pool_options)
    process_pools = {name: (RewardPool(process_lib.get_process(name), **pool_options),
                            float(weight))
                     for name, weight in cfg.reward.process_fns.items()}

    prompt_len = cfg.sampling.max_prompt_len
    sampler = Sampler(model_cfg, pad_id=tokenizer.pad_id, stop_ids=tokenizer.stop_ids,
                      mesh=mesh, prompt_buckets=(prompt_len,))
    s = cfg.sampling
    sampling = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              min_p=s.min_p, max_new_tokens=s.max_new_tokens, n=s.n)
    episode_sampler, env_pool = _episodes(cfg, model_cfg, tokenizer, prompt_len, mesh)
    token_stats_fn = None
    if set(fns) & TOKEN_STAT_REWARDS:
        token_stats_fn = jax.jit(parallel.in_mesh(functools.partial(
            steps.response_token_stats, model_cfg=model_cfg, prompt_len=prompt_len,
            temperature=sampling.score_temperature), mesh))
    log.info("model %s: %s params", model_cfg.name,
             f"{transformer.count_params(params):,}")
    return Inputs(cfg=cfg, mesh=mesh, tokenizer=tokenizer, model_cfg=model_cfg,
                  init_params=params, sampler=sampler, train_source=train_source,
                  data_iter=data_iter,
                  eval_examples=list(eval_examples), pool=pool, task=task,
                  hf_exportable=exportable, train_sampling=sampling, prompt_len=prompt_len,
                  token_stats_fn=token_stats_fn, process_pools=process_pools,
                  data_stats=data_stats, episode_sampler=episode_sampler, env_pool=env_pool,
                  hf_path=hf_path, sft_source=sft_source)


def _episodes(cfg: ml_collections.ConfigDict, model_cfg: ModelConfig, tokenizer: Any,
              prompt_len: int, mesh: Any) -> tuple[EpisodeSampler | None, EnvPool | None]:
    """The episode sampler and environment pool of config 'env' (None, None without one).
    A turn ends at the tokenizer's stop ids or at the environment's stop strings (e.g. a
    tool call's closing tag), tokenized."""
    e = cfg.env
    if e.name == "none":
        return None, None
    env = envs_lib.make_env(e.name, **e.kwargs.to_dict())
    # A chat model ends every turn with its EOS (after a tool call too); a plain model's turn
    # also ends at the environment's stop strings (a tool call's closing tag).
    stops = () if cfg.tokenizer.chat_template else getattr(env, "stop_strings", lambda: ())()
    sampler = EpisodeSampler(
        model_cfg, pad_id=tokenizer.pad_id, stop_ids=tokenizer.stop_ids,
        stop_sequences=[tokenizer.encode(s) for s in stops],
        turn_cap=e.turn_tokens or cfg.sampling.max_new_tokens,
        observation_cap=e.observation_tokens, max_turns=env.max_turns, mesh=mesh,
        prompt_buckets=(prompt_len,))
    if prompt_len + sampler.slots > model_cfg.max_seq_len:
        raise ValueError(
            f"config 'env': an episode needs sampling.max_prompt_len {prompt_len} + "
            f"{sampler.slots} cache slots (max_turns {env.max_turns} * env.turn_tokens "
            f"{sampler.turn_cap} + {env.max_turns - 1} * env.observation_tokens "
            f"{e.observation_tokens}) = {prompt_len + sampler.slots}, more than the model's "
            f"max_seq_len {model_cfg.max_seq_len}")
    pool = EnvPool(num_workers=e.num_workers, timeout_s=e.timeout_s,
                   max_observation_chars=e.max_observation_chars)
    return sampler, pool


def outcome_reward(cfg: ml_collections.ConfigDict) -> reward_base.RewardFn:
    """The outcome reward of `reward.fns`: one registered reward, or their weighted sum.

    Names resolve here, in the trainer process, to function objects, which reach the pool's
    worker processes by reference (the worker imports the defining module): a custom reward
    registered by a module the config imported works alone, weighted or combined. Rewards
    with options in the config get them bound (``reward.sandbox.allow_unisolated`` -> the
    `code` reward), so they also reach the workers. Raises ValueError for an unknown name,
    and RuntimeError for the `code` reward where the sandbox cannot isolate programs and the
    config does not allow that: a run refuses to start rather than score every row as an
    error.
    """
    fns = {name: float(w) for name, w in cfg.reward.fns.items()}
    for name in fns:
        reward_base.get(name)  # unknown name -> ValueError listing the registry
    options = {"code": {"allow_unisolated": cfg.reward.sandbox.allow_unisolated}}
    if "code" in fns:
        code_lib.check_sandbox(**options["code"])  # raises naming the missing capability
    parts = {(reward_base.get(name, **options[name]) if name in options else name): w
             for name, w in fns.items()}
    if list(fns.values()) == [1.0]:
        return reward_base.resolve(next(iter(parts)))
    return reward_base.combine(parts)


def demonstrations(inp: Inputs, examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """SFT batch of `examples` for run `inp` (`demonstration_arrays`)."""
    return demonstration_arrays(inp.cfg, inp.tokenizer, inp.prompt_len, examples)


def demonstration_arrays(cfg: ml_collections.ConfigDict, tokenizer: Any, prompt_len: int,
                         examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """SFT batch: prompt + demonstration + EOS, left padded to prompt_len + max_new_tokens.

    The demonstration is `metadata['demonstration_turns']` when present (a multi-turn
    episode as [text, is_model] segments: the environment's segments are in the sequence but
    not in the targets, so the model never learns to predict an observation), else
    `metadata['demonstration']` (e.g. a worked GSM8K solution), else the reference answer.
    Returns tokens, mask and target_mask [N, L].
    """
    tok = tokenizer
    budget = cfg.sampling.max_new_tokens
    length = prompt_len + budget
    seqs, targets = [], []
    for ex in examples:
        prompt = prompt_ids(cfg, tok, ex)
        if len(prompt) > prompt_len:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds sampling.max_prompt_len="
                             f"{prompt_len}: {ex.prompt[:80]!r}")
        segments = ex.metadata.get("demonstration_turns") or [
            [ex.metadata.get("demonstration", ex.answer), True]]
        answer, target = [], []
        for text, is_model in segments:
            ids = tok.encode(text)
            answer += ids
            target += [int(bool(is_model))] * len(ids)
        answer, target = answer + [tok.eos_id], target + [1]
        answer, target = answer[:budget], target[:budget]
        seqs.append(prompt + answer)
        targets.append([0] * len(prompt) + target)
    tokens, mask = tok_lib.left_pad(seqs, tok.pad_id, length)
    target_mask, _ = tok_lib.left_pad(targets, 0, length)
    return {"tokens": tokens, "mask": mask, "target_mask": target_mask.astype(np.float32)}
