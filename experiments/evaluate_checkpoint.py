"""Evaluate a run's latest checkpoint on its held-out set, optionally under changed settings.

    python experiments/evaluate_checkpoint.py --config configs/calc_tool_grpo.py \
        --workdir /tmp/calc_tool [--set env.kwargs.max_turns=1] [--best | --warm-start] \
        [--out eval.json] [--transcripts greedy.jsonl] [--groups 8]

The config builds the data, tokenizer, sampler and environments as the run did; `--set
key=value` changes a setting first (the same literal syntax as `--config.key=value`), e.g.
`env.kwargs.max_turns=1` takes the calculator away from a model trained with it: the control
that shows the tool is what it learned to use. Prints the metrics of `evaluate_run` (greedy
pass@1, sampled pass@1 and pass@k, ...) as JSON. `--warm-start` evaluates the policy RL
started from (the warm start's last params, `workdir/sft`) instead of the latest checkpoint.
`--transcripts F` also writes one JSON line per held-out example, in the held-out set's order:
its prompt, answer, greedy transcript (a multi-turn episode whole, tool results included) and
score, to read what the model gets wrong (`experiments/calc_tool_failures.py` sorts
`calc_tool_grpo`'s). `--groups N` samples N episodes of every held-out prompt as training
samples them (`sampling.temperature`, top-k/p, min-p) and adds which groups would carry a
gradient: `groups/<greedy>_<group>`, the share of prompts whose greedy episode is solved or
failed and whose N sampled ones all fail, are mixed, or all succeed. Only mixed groups have a
nonzero GRPO advantage (dynamic sampling keeps only those), and only a failed prompt's mixed
group can teach greedy decoding that prompt's answer. Reads the checkpoints without
taking the workdir's lock (a run may be writing next to it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/X.py[:arg], as the run used it")
    p.add_argument("--workdir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    which.add_argument("--warm-start", action="store_true",
                       help="the warm start's last params (workdir/sft), where RL started")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    p.add_argument("--transcripts", metavar="FILE",
                   help="also write each held-out example's greedy transcript (JSON lines)")
    p.add_argument("--groups", type=int, default=0, metavar="N",
                   help="also sort the held-out prompts by greedy outcome and by the outcomes "
                        "of N episodes sampled as in training")
    args = p.parse_args()
    if args.groups == 1 or args.groups < 0:
        p.error(f"--groups {args.groups}: a group needs at least 2 episodes")
    sys.path.insert(0, REPO)
    from lrmjax import config as config_lib
    from lrmjax import host

    path, _, arg = args.config.partition(":")
    cfg = config_lib.from_file(path, arg or None)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        config_lib.set_by_path(cfg, key, value)
    config_lib.validate(cfg)
    host.prepare(cfg)
    import jax

    if (args.transcripts or args.groups) and jax.process_count() > 1:
        p.error("--transcripts, --groups: run on one host (each host would play every example)")
    from lrmjax.sampling import SamplingParams
    from lrmjax.train import evaluate, inputs, policy

    inp = inputs.build_inputs(cfg, args.workdir, warm_start=False)  # evaluates, trains nothing
    try:
        # Under LoRA the checkpoint holds the adapters; the base is reloaded as the run did.
        params = policy.restore(inp, args.workdir, best=args.best, warm_start=args.warm_start)
        metrics = evaluate.evaluate_run(inp, params, jax.random.key(cfg.seed + 1))
        greedy = SamplingParams(temperature=0.0, max_new_tokens=cfg.sampling.max_new_tokens)
        if args.transcripts:
            write_transcripts(inp, params, args.transcripts, greedy)
        if args.groups:
            metrics |= group_outcomes(inp, params, greedy, args.groups,
                                      jax.random.key(cfg.seed + 2))
    finally:
        inp.close()
    text = json.dumps(metrics, indent=1, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def write_transcripts(inp, params, path: str, greedy) -> None:
    """One JSON line per held-out example: prompt, answer, greedy transcript, score."""
    import jax

    examples = inp.eval_examples
    rows = []
    for start in range(0, len(examples), inp.cfg.eval.batch_size):
        chunk = examples[start:start + inp.cfg.eval.batch_size]
        played = inp.play(params, chunk, greedy, jax.random.key(0))
        # An episode's transcript keeps every turn's stop and the tool results; a single-turn
        # response is its scored text.
        texts = (played.texts if played.book is None else
                 inp.decode(played.rollout, skip_special=False))
        scores = inp.score_texts(chunk, played.texts)
        rows += [{"prompt": ex.prompt, "answer": ex.answer, "transcript": text,
                  "score": float(score)}
                 for ex, text, score in zip(chunk, texts, scores, strict=True)]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def group_outcomes(inp, params, greedy, n: int, key) -> dict[str, float]:
    """Shares of the held-out prompts by greedy outcome (solved, failed) and by the outcomes
    of `n` episodes sampled with the run's training sampling (all_fail, mixed, all_succeed):
    `groups/solved_mixed` etc., the six summing to 1."""
    import dataclasses

    import jax
    import numpy as np

    examples, counts = inp.eval_examples, {}
    sampling = dataclasses.replace(inp.train_sampling, n=n)
    for start in range(0, len(examples), inp.cfg.eval.batch_size):
        chunk = examples[start:start + inp.cfg.eval.batch_size]
        key, sub = jax.random.split(key)
        solved = np.asarray(inp.score_texts(chunk, inp.play(params, chunk, greedy, sub).texts))
        key, sub = jax.random.split(key)
        texts = inp.play(params, chunk, sampling, sub).texts
        wins = (np.asarray(inp.score_texts([ex for ex in chunk for _ in range(n)], texts))
                > 0.5).reshape(len(chunk), n).sum(axis=1)
        for s, w in zip(solved > 0.5, wins, strict=True):
            name = (f"groups/{'solved' if s else 'failed'}_"
                    f"{'all_fail' if w == 0 else 'all_succeed' if w == n else 'mixed'}")
            counts[name] = counts.get(name, 0) + 1
    return {f"groups/{g}_{o}": counts.get(f"groups/{g}_{o}", 0) / len(examples)
            for g in ("solved", "failed") for o in ("all_fail", "mixed", "all_succeed")}


if __name__ == "__main__":
    main()
