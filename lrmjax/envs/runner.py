"""The host side of a batch of episodes: environments, turns, observations and counts.

`EpisodeBook` is what `episodes.EpisodeSampler.run` calls back after every round of turns
(`step`): it decodes each row's turn, steps the environments of the rows that ended their
turn at a stop (in the `EnvPool`'s workers), turns their observations into token ids (cut to
the observation cap and to what the episode budget leaves, counted), and records rewards and
counts. After the episode, `final_texts()` are what the reward functions score (each row's
last model turn), `step_rewards` the environments' rewards at the tokens that ended their
turns, and `metrics()` the `env/*` counts.

Observation tokens: the plain tokenizer's `encode(observation)` (a character tokenizer
encodes text piecewise exactly), or with a chat template the delta the template renders for
the new messages (`ObservationEncoder`). Never a re-tokenization of the model's own tokens.
This module imports no JAX.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lrmjax.data.tasks.base import Example
from lrmjax.envs.base import Environment
from lrmjax.envs.pool import EnvPool

log = logging.getLogger(__name__)

# `episodes` turn-end codes (kept in sync by tests/test_envs.py; importing them
# would pull JAX into this module).
BY_STOP_ID, BY_STOP_SEQUENCE, BY_TURN_CAP, BY_BUDGET = 1, 2, 3, 4


class EpisodeBook:
    """Bookkeeping of N = len(envs) episodes, rows in the sampler's order.

    Args:
      pool: the EnvPool that runs reset/step.
      envs: one fresh environment per row.
      examples: the example of each row.
      decode: token ids -> text (the tokenizer's decode).
      encode_observation: (row, model turn text, StepResult) -> observation token ids.
      observation_cap: most observation tokens after one turn.
      budget: most tokens after the prompt per episode (sampling.max_new_tokens).
    """

    def __init__(self, pool: EnvPool, envs: Sequence[Environment], examples: Sequence[Example],
                 decode: Callable[[Sequence[int]], str],
                 encode_observation: Callable[[int, str, Any], list[int]],
                 observation_cap: int, budget: int):
        self.pool, self.envs = pool, list(envs)
        self.examples = list(examples)
        self.decode, self.encode_observation = decode, encode_observation
        self.observation_cap, self.budget = observation_cap, budget
        N = len(self.envs)
        self.turns: list[list[str]] = [[] for _ in range(N)]
        self.step_rewards: list[list[tuple[int, float]]] = [[] for _ in range(N)]
        self.failed = np.zeros(N, bool)
        self.counts = {"errors": 0.0, "timeouts": 0.0, "obs_truncated": 0.0,
                       "max_turns_hit": 0.0}
        self.info_sums: dict[str, np.ndarray] = {}
        self.open = np.ones(N, bool)  # the episode may go on
        self.logged: set[str] = set()

    def reset(self) -> list[str]:
        """Resets every environment; returns each row's prompt text (the example's prompt
        for a row whose reset failed: that episode is then played but scores 0)."""
        outcomes = self.pool.call(self.envs, "reset", self.examples)
        prompts = []
        for r, out in enumerate(outcomes):
            self.envs[r] = out.env
            if out.failure is None:
                prompts.append(out.result.observation)
                continue
            self._fail(r, out.failure)
            prompts.append(self.examples[r].prompt)
        return prompts

    def _fail(self, r: int, failure: str) -> None:
        self.failed[r] = True
        self.open[r] = False
        self.counts["errors" if failure == "error" else "timeouts"] += 1

    def step(self, ends: Sequence[Any]) -> dict[int, list[int]]:
        """`EpisodeSampler.run`'s step_fn: {row: observation ids} for the rows that go on."""
        to_step, texts = [], {}
        for e in ends:
            text = self.decode(e.tokens)
            self.turns[e.row].append(text)
            texts[e.row] = text
            if e.ended_by in (BY_STOP_ID, BY_STOP_SEQUENCE) and self.open[e.row]:
                to_step.append(e)
            else:  # cut by the turn cap or the budget: the episode ends here
                self.open[e.row] = False
        if not to_step:
            return {}
        outcomes = self.pool.call([self.envs[e.row] for e in to_step], "step",
                                  [texts[e.row] for e in to_step])
        out = {}
        for e, o in zip(to_step, outcomes, strict=True):
            r = e.row
            self.envs[r] = o.env
            if o.failure is not None:
                self._fail(r, o.failure)
                continue
            res = o.result
            self.step_rewards[r].append((e.total - 1, res.reward))
            self.counts["obs_truncated"] += float(o.truncated)
            for k, v in res.info.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self.info_sums.setdefault(k, np.zeros(len(self.envs)))[r] += v
            last_turn = len(self.turns[r]) >= self.envs[r].max_turns
            if res.done:
                self.open[r] = False
                continue
            if last_turn:
                self.counts["max_turns_hit"] += 1
                self.open[r] = False
                continue
            try:
                ids = list(self.encode_observation(r, texts[r], res))
            except ValueError as err:  # e.g. a chat template that rewrote the history
                self._fail(r, "error")
                if "observation" not in self.logged:
                    self.logged.add("observation")
                    log.warning("episode ended: its observation could not be tokenized: %s "
                                "(the first such failure; counted in env/errors)", err)
                continue
            room = min(self.observation_cap, self.budget - e.total - 1)
            if len(ids) > room:
                self.counts["obs_truncated"] += float(not o.truncated)
                ids = ids[:max(room, 0)]
            if not ids:  # nothing fits: the episode ends at the budget
                self.open[r] = False
                continue
            out[r] = ids
        return out

    def final_texts(self) -> list[str]:
        """Each row's last model turn ('' for a row that wrote nothing)."""
        return [t[-1] if t else "" for t in self.turns]

    def token_rewards(self, width: int) -> np.ndarray:
        """[N, width] float32: each step's reward at the last token of its turn."""
        out = np.zeros((len(self.envs), width), np.float32)
        for r, steps in enumerate(self.step_rewards):
            for index, reward in steps:
                if 0 <= index < width:
                    out[r, index] += reward
        return out

    def total_rewards(self) -> np.ndarray:
        """[N] float32: the sum of each episode's step rewards."""
        return np.asarray([sum(x for _, x in s) for s in self.step_rewards], np.float32)

    def metrics(self, observation_mask: np.ndarray, response_mask: np.ndarray
                ) -> dict[str, float]:
        """`env/*` metrics of this batch: counts summed, per-episode values averaged."""
        turns = np.asarray([len(t) for t in self.turns], float)
        obs = (observation_mask & response_mask).sum(-1)
        model = (response_mask & ~observation_mask).sum(-1)
        out = {f"env/{k}": v for k, v in self.counts.items()}
        out |= {"env/turns": float(turns.mean()), "env/turns_max": float(turns.max()),
                "env/model_tokens": float(model.mean()),
                "env/observation_tokens": float(obs.mean())}
        for k, v in self.info_sums.items():
            out[f"env/{k}"] = float(v.mean())
        return out
