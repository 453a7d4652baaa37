"""Evaluate a run's latest checkpoint on its held-out set, optionally under changed settings.

    python experiments/evaluate_checkpoint.py --config configs/calc_tool_grpo.py \
        --workdir /tmp/calc_tool [--set env.kwargs.max_turns=1] [--best] [--out eval.json]

The config builds the data, tokenizer, sampler and environments as the run did; `--set
key=value` changes a setting first (the same literal syntax as `--config.key=value`), e.g.
`env.kwargs.max_turns=1` takes the calculator away from a model trained with it: the control
that shows the tool is what it learned to use. Prints the metrics of `evaluate_run` (greedy
pass@1, sampled pass@1 and pass@k, ...) as JSON. Reads the checkpoints without taking the
workdir's lock (a run may be writing next to it).
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
    p.add_argument("--best", action="store_true", help="the best checkpoint, not the latest")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    args = p.parse_args()
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

    from lrmjax.train import evaluate, inputs, policy

    inp = inputs.build_inputs(cfg, args.workdir)
    try:
        # Under LoRA the checkpoint holds the adapters; the base is reloaded as the run did.
        params = policy.restore(inp, args.workdir, best=args.best)
        metrics = evaluate.evaluate_run(inp, params, jax.random.key(cfg.seed + 1))
    finally:
        inp.close()
    text = json.dumps(metrics, indent=1, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
