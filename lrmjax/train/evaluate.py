"""Held-out evaluation: greedy pass@1, sampled pass@1, pass@k (unbiased), maj@k, length."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lrmjax import parallel
from lrmjax.sampling import SamplingParams

ScoreFn = Callable[[Sequence[Any], Sequence[str]], Sequence[float]]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: Sequence[str | None], correct: Sequence[float]) -> float:
    """maj@k: 1.0 if the most frequent (non-empty) answer is a correct one.

    Ties go to the answer seen first; responses without an answer do not vote.
    """
    votes = collections.Counter(a for a in answers if a)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers if a and votes[a] == top)
    return float(next(c for a, c in zip(answers, correct, strict=True) if a == winner) > 0.5)


PlayFn = Callable[[Any, Sequence[Any], SamplingParams, jax.Array], tuple[Any, Sequence[str]]]


def sampler_play(sampler: Any, encode: Callable, decode: Callable) -> PlayFn:
    """A `play` function from a `Sampler` and the prompt encoding and response decoding
    (single-turn responses)."""

    def play(params, examples, sampling, key):
        tokens, mask = encode(examples)
        roll = sampler.generate(params, tokens, mask, sampling, key)
        return roll, decode(roll)

    return play


def evaluate(play: PlayFn, params: Any, examples: Sequence[Any], score_fn: ScoreFn,
             key: jax.Array, *, max_new_tokens: int,
             k: int = 0, temperature: float = 1.0, batch_size: int = 256,
             answer_fn: Callable[[str], str | None] | None = None,
             prefix: str = "eval/", group_key: str = "subset") -> dict[str, float]:
    """Scores `examples` greedily (pass@1) and, with k > 0, with k samples each.

    Args:
      play: (params, examples [B], SamplingParams, key) -> (Rollout of B*n rows, the B*n
        texts to score): `sampler_play` for single-turn responses, `Inputs.play` (which
        also plays multi-turn episodes).
      score_fn: (examples, completions) -> scores in [0, 1] (1 = correct).
      answer_fn: completion -> extracted answer for maj@k (default: the stripped completion).

    Returns metrics: greedy_pass@1, mean_response_length and, with k > 0, pass@1 (sampled),
    pass@k and maj@k, each a mean over examples. When the examples' metadata[group_key] takes
    two or more values (a task mixture's labels), every metric also comes per value, as
    `<prefix><value>/<metric>`. With several hosts every host passes the same `examples` and
    gets the same metrics; each samples and scores its share.
    """
    answer_fn = answer_fn or (lambda s: s.strip() or None)
    hosts, me = jax.process_count(), jax.process_index()
    greedy_scores, lengths, sampled, majority = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        if len(chunk) % hosts:
            raise ValueError(f"an evaluation chunk of {len(chunk)} examples does not split over "
                             f"{hosts} hosts: make eval.size and eval.batch_size multiples")
        # Multi-host: each host samples and scores its block of the chunk, so the global
        # batch (and its random draws) is the one a single host would sample.
        per = len(chunk) // hosts
        chunk = chunk[me * per:(me + 1) * per]
        roll, texts = play(params, chunk,
                           SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), key)
        local = {"greedy": np.asarray(score_fn(chunk, texts), float),
                 "length": np.asarray(roll.lengths, float)}
        if k > 0:
            key, sub = jax.random.split(key)
            roll, texts = play(params, chunk, SamplingParams(
                temperature=temperature, n=k, max_new_tokens=max_new_tokens), sub)
            rep = [ex for ex in chunk for _ in range(k)]
            scores = np.asarray(score_fn(rep, texts), float).reshape(len(chunk), k)
            local["sampled"] = scores
            local["majority"] = np.asarray(
                [majority_correct([answer_fn(t) for t in texts[i * k:(i + 1) * k]], scores[i])
                 for i in range(len(chunk))], float)
        local = parallel.global_to_host(local)
        greedy_scores += list(local["greedy"])
        lengths += list(local["length"])
        if k > 0:
            sampled += local["sampled"].tolist()
            majority += list(local["majority"])
    # Per-example results, in the order of `examples` (each chunk's host blocks are gathered
    # in host order, which is the chunk's order).
    per_example = {"greedy": np.asarray(greedy_scores), "length": np.asarray(lengths)}
    if k > 0:
        per_example.update(sampled=np.asarray(sampled), majority=np.asarray(majority))
    out = _summarize(per_example, np.arange(len(examples)), k, prefix)
    groups = [ex.metadata.get(group_key) if hasattr(ex, "metadata") else None
              for ex in examples]
    names = sorted({g for g in groups if g is not None}, key=str)
    if len(names) > 1:
        for name in names:
            rows = np.flatnonzero([g == name for g in groups])
            out |= _summarize(per_example, rows, k, f"{prefix}{name}/")
    return out


def _summarize(per_example: dict[str, np.ndarray], rows: np.ndarray, k: int,
               prefix: str) -> dict[str, float]:
    """Means over `rows` of the per-example results."""
    out = {f"{prefix}greedy_pass@1": float(np.mean(per_example["greedy"][rows])),
           f"{prefix}mean_response_length": float(np.mean(per_example["length"][rows]))}
    if k > 0:
        s = per_example["sampled"][rows]
        correct = (s > 0.5).sum(axis=1)
        out[f"{prefix}pass@1"] = float(s.mean())
        out[f"{prefix}pass@{k}"] = float(np.mean([pass_at_k(k, int(c), k) for c in correct]))
        out[f"{prefix}maj@{k}"] = float(np.mean(per_example["majority"][rows]))
    return out


def evaluate_run(inp: Any, params: Any, key: jax.Array, examples: Sequence[Any] | None = None,
                 k: int | None = None) -> dict[str, float]:
    """`evaluate` with a run's `train.inputs.Inputs` (its sampler, prompt encoding, decoding
    and verifier) and its config's `eval.*` settings. `examples` default to the held-out set
    and `k` to `eval.k`. Adds `timing_s/eval`; {} when there is nothing to evaluate."""
    cfg = inp.cfg
    examples = inp.eval_examples if examples is None else examples
    if not examples:
        return {}
    t0 = time.perf_counter()
    def play(params, chunk, sampling, key):
        played = inp.play(params, chunk, sampling, key)
        return played.rollout, played.texts

    out = evaluate(play, params, examples, inp.score_texts, key, k=cfg.eval.k if k is None else k,
                   max_new_tokens=cfg.sampling.max_new_tokens,
                   temperature=cfg.eval.temperature, batch_size=cfg.eval.batch_size)
    out["timing_s/eval"] = time.perf_counter() - t0
    return out
