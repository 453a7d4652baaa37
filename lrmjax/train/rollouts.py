"""One RL step's scored trajectories: sample n responses per prompt, score them, and (with
dynamic sampling) keep only groups that carry a learning signal.

`collect` is the one producer of scored trajectories the RL loop calls; everything that
decides what a trajectory is (how it is sampled, what scores it, which groups are kept)
lives here, and the loop only consumes `ScoredBatch`es. Rows are group-major: the n
responses to one prompt are n consecutive rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from lrmjax import parallel
from lrmjax.data.tasks import Example
from lrmjax.envs.runner import EpisodeBook
from lrmjax.rewards import shaping
from lrmjax.rl import advantages as adv_lib
from lrmjax.sampling import Rollout, SamplingParams
from lrmjax.train.inputs import Inputs


@dataclasses.dataclass
class ScoredBatch:
    """One step's scored responses, host side. N = groups * n rows, group-major.

    Attributes:
      examples: one per group.
      rollout: the sampler's arrays as numpy, [N, ...].
      completions: [N] decoded responses.
      rewards: [N] float32, after shaping (DAPO's overlong penalty).
      components: named reward parts, each [N] (for metrics).
      reward_metrics: the reward pool's counts and timings.
      early: what `collect`'s `on_rollout` dispatched to the devices before the responses were
        decoded and scored, or None.
      transcripts: [N] whole episodes as text (prompt excluded), for multi-turn runs; None
        for single-turn ones (the completions are the whole responses).
      env_token_rewards: [N, R] float32, the environments' step rewards at the tokens that
        ended their turns, for token-level estimators (else they are in `rewards`); or None.
    """

    examples: list[Example]
    rollout: Rollout
    completions: list[str]
    rewards: np.ndarray
    components: dict[str, np.ndarray]
    reward_metrics: dict[str, float]
    early: Any = None
    transcripts: list[str] | None = None
    env_token_rewards: np.ndarray | None = None

    def repeated_examples(self) -> list[Example]:
        """[N]: each group's example once per response."""
        n = len(self.completions) // len(self.examples)
        return [ex for ex in self.examples for _ in range(n)]


def fold_in(key: jax.Array, data: int) -> jax.Array:
    """`jax.random.fold_in(key, data)` with `data` put on the device explicitly (the RL loop
    runs under a transfer guard that refuses implicit host-to-device copies)."""
    return jax.random.fold_in(key, jax.device_put(np.uint32(data)))


def sample_and_score(inp: Inputs, params: Any, examples: list[Example], key: jax.Array,
                     sampling: SamplingParams,
                     on_rollout: Callable[[Rollout], Any] | None = None) -> ScoredBatch:
    """Samples `sampling.n` responses (or episodes, with config 'env') per example and
    scores them with the reward pool.

    `on_rollout(rollout)`, if given, runs as soon as the tokens are on the host: device work
    dispatched there overlaps the host's decoding and scoring; its result is the batch's
    `early`. DAPO's overlong penalty (`rl.overlong_buffer_len`) is added to the rewards here,
    as the component `overlong_penalty`.

    Episodes: the reward functions score each episode's last model turn; the environments'
    step rewards are added to the outcome (component `env`), or with a token-level estimator
    (`rl.advantages.TOKEN_REWARD_ESTIMATORS`) placed at the tokens that ended their turns
    instead. An episode whose environment failed (raised, timed out, returned garbage) scores
    0; the `env/*` counts join the reward metrics.
    """
    played = inp.play(params, examples, sampling, key)
    roll = played.rollout  # numpy
    early = on_rollout(roll) if on_rollout is not None else None
    completions = played.texts
    rep = [ex for ex in examples for _ in range(sampling.n)]
    rewards, components, rmetrics = inp.score(rep, completions, roll, params)
    transcripts = env_tokens = None
    if played.book is not None:
        book = played.book
        transcripts = inp.decode(roll, skip_special=False)
        env_total = book.total_rewards()
        components["env"] = env_total
        if inp.cfg.rl.adv_estimator in adv_lib.TOKEN_REWARD_ESTIMATORS:
            env_tokens = np.where(book.failed[:, None], 0.0,
                                  book.token_rewards(sampling.max_new_tokens))
        else:
            rewards = rewards + env_total
        rewards = np.where(book.failed, 0.0, rewards)
        rmetrics = {**rmetrics, **env_metrics(book, roll)}
    algo = inp.cfg.rl
    if algo.overlong_buffer_len > 0:
        penalty = shaping.overlong_penalty(roll.lengths, max_len=sampling.max_new_tokens,
                                           cache_len=algo.overlong_buffer_len,
                                           factor=algo.overlong_penalty_factor)
        components["overlong_penalty"] = np.asarray(penalty, np.float32)
        rewards = rewards + components["overlong_penalty"]
    return ScoredBatch(examples, roll, completions, np.asarray(rewards, np.float32), components,
                       rmetrics, early, transcripts, env_tokens)


def env_metrics(book: EpisodeBook, roll: Rollout) -> dict[str, float]:
    """The `env/*` metrics of every host's episodes: counts summed, `env/turns_max` the
    largest, the per-episode means averaged (every host plays as many episodes)."""
    local = book.metrics(roll.observation_mask, roll.response_mask)
    if jax.process_count() == 1:
        return local
    hosts = parallel.every_host(local)
    counts = {f"env/{k}" for k in book.counts}
    out = {}
    for key in sorted({k for h in hosts for k in h}):
        values = [h.get(key, 0.0) for h in hosts]
        if key in counts:
            out[key] = float(sum(values))
        elif key.endswith("_max"):
            out[key] = float(max(values))
        else:
            out[key] = float(np.mean(values))
    return out


def collect(inp: Inputs, params: Any, data_iter: Iterator[list[Example]], key: jax.Array,
            step_metrics: dict[str, float],
            on_rollout: Callable[[Rollout], Any] | None = None) -> ScoredBatch:
    """One step's batch of `train.batch_prompts` groups (this host's share of them).

    With dynamic sampling (DAPO) groups whose rewards are all equal (zero advantage, no
    gradient) are dropped and more prompts are sampled, at most `train.max_refill_rounds`
    extra rounds. If the batch is still short, dropped groups fill it (they add no gradient)
    and `filter_groups/unfilled` counts them; `filter_groups/dropped` and `/rounds` are
    written to `step_metrics`.

    `on_rollout` (see `sample_and_score`) is called only without dynamic sampling, where the
    first rollout is the batch.
    """
    cfg = inp.cfg
    n, want = cfg.sampling.n, cfg.train.batch_prompts // jax.process_count()  # per host
    batch = sample_and_score(inp, params, next(data_iter), key, inp.train_sampling,
                             None if cfg.rl.dynamic_sampling else on_rollout)
    if not cfg.rl.dynamic_sampling:
        return batch
    kept, dropped, rounds = [], [], 0
    while True:
        varied = batch.rewards.reshape(-1, n).std(axis=1) > 0
        kept.append((batch, np.flatnonzero(varied)))
        dropped.append((batch, np.flatnonzero(~varied)))
        have = sum(len(g) for _, g in kept)
        # Sampling is one program over all hosts: they stop refilling together.
        fewest = int(parallel.global_to_host(np.array([have])).min())
        if fewest >= want or rounds >= cfg.train.max_refill_rounds:
            break
        rounds += 1
        key = fold_in(key, rounds)
        batch = sample_and_score(inp, params, next(data_iter), key, inp.train_sampling)
    counts = parallel.global_to_host(np.array([sum(len(g) for _, g in dropped),
                                             max(0, want - sum(len(g) for _, g in kept))]))
    step_metrics["filter_groups/dropped"] = float(counts[0::2].sum())
    step_metrics["filter_groups/unfilled"] = float(counts[1::2].sum())
    step_metrics["filter_groups/rounds"] = float(rounds)
    parts, total = [], 0
    for b, groups in kept + dropped:
        groups = groups[: want - total]
        if len(groups):
            parts.append((b, groups))
            total += len(groups)
    out = _concat_groups(parts, n)
    # The pool's counts and time of every round sampled, kept or not.
    sampled = [b.reward_metrics for b, _ in kept]  # one entry per round
    out.reward_metrics = {**out.reward_metrics, **{
        k: float(sum(r.get(k, 0.0) for r in sampled))
        for k in (*POOL_COUNTS, "timing_s/reward")}}
    return out


def _group_rows(groups: np.ndarray, n: int) -> np.ndarray:
    """Row indices of whole groups: [G] group indices -> [G * n] rows."""
    return (groups[:, None] * n + np.arange(n)[None]).reshape(-1)


def _concat_groups(parts: list[tuple[ScoredBatch, np.ndarray]], n: int) -> ScoredBatch:
    """One batch of the chosen groups of several batches, in order, renumbered."""
    rows = [(b, _group_rows(g, n)) for b, g in parts]
    rolls = [jax.tree.map(lambda x, r=r: x[r], b.rollout) for b, r in rows]
    width = max(r.prompt_tokens.shape[1] for r in rolls)

    def pad_prompt(r):  # prompts of different rounds may be bucketed to different widths
        extra = width - r.prompt_tokens.shape[1]
        return r.replace(prompt_tokens=np.pad(r.prompt_tokens, ((0, 0), (extra, 0))),
                         prompt_mask=np.pad(r.prompt_mask, ((0, 0), (extra, 0))))

    rollout = jax.tree.map(lambda *xs: np.concatenate(xs), *[pad_prompt(r) for r in rolls])
    rollout = rollout.replace(group_ids=np.repeat(np.arange(len(rollout.group_ids) // n),
                                                  n).astype(np.int32))
    return ScoredBatch(
        examples=[b.examples[i] for b, g in parts for i in g],
        rollout=rollout,
        completions=[b.completions[i] for b, r in rows for i in r],
        rewards=np.concatenate([b.rewards[r] for b, r in rows]),
        components={k: np.concatenate([b.components[k][r] for b, r in rows])
                    for k in parts[0][0].components},
        reward_metrics=parts[0][0].reward_metrics,
        transcripts=(None if parts[0][0].transcripts is None else
                     [b.transcripts[i] for b, r in rows for i in r]),
        env_token_rewards=(None if parts[0][0].env_token_rewards is None else
                           np.concatenate([b.env_token_rewards[r] for b, r in rows])))


def process_token_rewards(inp: Inputs, batch: ScoredBatch, metrics: dict[str, float]
                          ) -> np.ndarray:
    """This host's per-token process rewards [N, R] float32 (`reward.process_fns`), and
    their mean and counts over every host's rows into `metrics`."""
    rewards, counts = inp.process_rewards(batch.repeated_examples(), batch.completions,
                                          batch.rollout)
    names = sorted(counts)
    g = parallel.global_to_host({"sums": rewards.sum(axis=1),
                                 "counts": np.array([[counts[k] for k in names]])})
    metrics["reward/process_mean"] = float(g["sums"].mean())
    metrics.update(zip(names, (float(x) for x in g["counts"].sum(axis=0)), strict=True))
    return rewards


def greedy_baseline(inp: Inputs, params: Any, batch: ScoredBatch, key: jax.Array
                    ) -> np.ndarray:
    """ReMax's baseline: the reward of each prompt's greedy response, once per row [N]."""
    greedy = sample_and_score(inp, params, batch.examples, key,
                              dataclasses.replace(inp.train_sampling, temperature=0.0, n=1))
    return np.repeat(greedy.rewards, len(batch.completions) // len(batch.examples))


# Reward-pool counters, summed over hosts.
POOL_COUNTS = ("reward/errors", "reward/timeouts", "reward/nonfinite")


def rollout_metrics(batch: ScoredBatch) -> dict[str, float]:
    """Reward and length statistics of the whole step's batch (every host's rows)."""
    local = {"rewards": batch.rewards, "lengths": np.asarray(batch.rollout.lengths),
             "finish": np.asarray(batch.rollout.finish_reason),
             "groups": np.array([len(batch.examples)]),
             "pool": np.array([[batch.reward_metrics.get(k, 0.0) for k in POOL_COUNTS]]),
             "components": {k: np.asarray(v, np.float64) for k, v in batch.components.items()}}
    g = parallel.global_to_host(local)
    r, lengths = g["rewards"], g["lengths"]
    out = dict(batch.reward_metrics)  # timing; the counts and means below are global
    out |= dict(zip(POOL_COUNTS, (float(x) for x in g["pool"].sum(axis=0)), strict=True))
    out |= {"batch/groups": float(g["groups"].sum()), "reward/mean": float(r.mean()),
            "reward/std": float(r.std()), "reward/max": float(r.max()),
            "reward/min": float(r.min()),
            "response_length/mean": float(lengths.mean()),
            "response_length/max": float(lengths.max()),
            "response_length/clip_ratio": float((g["finish"] == 1).mean())}
    for k, v in g["components"].items():
        out[f"reward/{k}"] = float(np.mean(v))
    return out


def check_groups_share_prompts(roll: Rollout, n: int) -> None:
    """Raises if the rows are not groups of n consecutive rows with one prompt (the layout
    the shared-prompt forward relies on; a bug if it fails)."""
    for name in ("prompt_tokens", "prompt_mask"):
        x = np.asarray(getattr(roll, name))
        groups = x.reshape(-1, n, x.shape[-1])
        if (groups != groups[:, :1]).any():
            raise RuntimeError(f"rollout {name} are not groups of {n} rows sharing a prompt; "
                               "set train.shared_prompt_forward=False to bypass")
