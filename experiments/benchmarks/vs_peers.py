"""lrmjax's Sampler against transformers `generate` and Tunix's Sampler, on the same weights.

The model is the `bench` Qwen2 shape (hidden 512, 8 layers, 8 heads, 2 KV heads, MLP 1536,
vocab 32000, tied; 40,516,096 params), made by transformers from torch seed 0 exactly as
/work/shared/peers/make_models.py makes it. Every contender decodes the same random prompts
(64 tokens, ids 1..V-1) greedily for exactly 128 new tokens (no stop token) in fp32, at
batch 1, 8 and 32, and reports new tokens per second: the median of `--repeats` timed runs
after one warm-up run (which includes compilation). The contenders alternate: each repeat
times every contender once, in a rotating order, so a slow phase of the (shared) machine
hits all of them alike.

Each contender runs in its own worker process (this file with `--worker NAME`), so torch's
and XLA's thread pools never compete inside one process: lrmjax and transformers in this
repository's venv, Tunix in a separate venv (created on first use under .bench-venvs/tunix,
`pip install google-tunix==0.1.7`), so Tunix never enters lrmjax's dependencies. The JAX
workers see one CPU device; torch uses `--threads` threads (2, as the peers were measured).
With `--platform gpu` every contender runs on the first GPU instead (JAX on CUDA without
preallocation, so the workers share the card; torch on `cuda:0`), still fp32, and
`--peer-python` can name an interpreter that already has google-tunix installed.

Usage (from the repository root):
  .venv/bin/python experiments/benchmarks/vs_peers.py                    # batches 1,8,32 x 3
  .venv/bin/python experiments/benchmarks/vs_peers.py --batches 1,8 --repeats 1   # quick
  .venv/bin/python experiments/benchmarks/vs_peers.py --contenders lrmjax,transformers
  python experiments/benchmarks/vs_peers.py --platform gpu --peer-python python  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONTENDERS = ("lrmjax", "transformers", "tunix")
TUNIX_SPEC = "google-tunix==0.1.7"
BENCH = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=1536, vocab_size=32000)


def prompts(batch: int, length: int, vocab: int) -> np.ndarray:
    """The shared prompts: [batch, length] ids in 1..vocab-1 (0 is Tunix's pad id)."""
    return np.random.default_rng(0).integers(1, vocab, (batch, length)).astype(np.int32)


# ----------------------------------------------------------------------------- workers
# Each worker loads the model, prints {"ready": ...}, then answers one JSON line per request
# {"batch": B}: {"seconds": generate wall time, "tokens": [B, N] new token ids}.


def _lrmjax_worker(args) -> tuple[int, object]:
    import jax
    import jax.numpy as jnp

    from lrmjax import sampling
    from lrmjax.models import hf

    cfg, params = hf.load_pretrained(args.model, dtype=jnp.float32)
    sampler = sampling.Sampler(cfg, pad_id=0, stop_ids=())  # no stop id: exactly N tokens
    sp = sampling.SamplingParams(temperature=0.0, max_new_tokens=args.new_tokens)
    key = jax.random.key(0)

    def run(batch):
        tokens = prompts(batch, args.prompt_len, cfg.vocab_size)
        mask = np.ones_like(tokens, bool)
        start = time.perf_counter()
        out = sampler.generate(params, tokens, mask, sp, key)
        new = np.asarray(out.response_tokens)  # waits for the device
        return time.perf_counter() - start, new

    return cfg.vocab_size, run


def _transformers_worker(args) -> tuple[int, object]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    device = "cuda" if args.platform == "gpu" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    model = model.to(device)
    vocab = model.config.vocab_size

    def run(batch):
        ids = torch.from_numpy(prompts(batch, args.prompt_len, vocab)).long().to(device)
        kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                  do_sample=False, eos_token_id=None, pad_token_id=0,
                  attention_mask=torch.ones_like(ids))
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(ids, **kw)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        return seconds, out[:, ids.shape[1]:].cpu().numpy()

    return vocab, run


def _tunix_worker(args) -> tuple[int, object]:
    # As /work/shared/peers/tunix_sampler_bench.py measured Tunix.
    import jax.numpy as jnp
    from tunix.generate import sampler as sm
    from tunix.models.qwen2 import params as qp

    cfg = common.tunix_model_config(args.model)
    model = qp.create_model_from_safe_tensors(args.model, cfg, mesh=None, dtype=jnp.float32)
    cache = sm.CacheConfig(cache_size=args.prompt_len + args.new_tokens,
                           num_layers=cfg.num_layers, num_kv_heads=cfg.num_kv_heads,
                           head_dim=cfg.head_dim)
    sampler = sm.Sampler(model, common.IntTok(), cache)

    def run(batch):
        texts = [" ".join(map(str, row)) for row in prompts(batch, args.prompt_len,
                                                             cfg.vocab_size)]
        start = time.perf_counter()
        out = sampler(texts, max_generation_steps=args.new_tokens,
                      max_prompt_length=args.prompt_len, eos_tokens=[-1], temperature=0.0,
                      echo=False)
        seconds = time.perf_counter() - start
        return seconds, np.array([[int(t) for t in s.split()] for s in out.text])

    return cfg.vocab_size, run


WORKERS = {"lrmjax": _lrmjax_worker, "transformers": _transformers_worker,
           "tunix": _tunix_worker}


def worker_main(args) -> None:
    vocab, run = WORKERS[args.worker](args)
    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not corrupt the protocol
    print(json.dumps({"ready": args.worker, "vocab": vocab}), file=out, flush=True)
    for line in sys.stdin:
        batch = json.loads(line)["batch"]
        seconds, tokens = run(batch)
        if tokens.shape != (batch, args.new_tokens):
            raise RuntimeError(f"{args.worker} returned tokens of shape {tokens.shape}, "
                               f"expected {(batch, args.new_tokens)}")
        print(json.dumps({"seconds": seconds, "tokens": tokens.tolist()}), file=out,
              flush=True)


# ----------------------------------------------------------------------------- driver


def make_model(path: pathlib.Path) -> None:
    """The peers' bench checkpoint: Qwen2 from torch seed 0 (as peers/make_models.py)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(max_position_embeddings=2048, tie_word_embeddings=True,
                      torch_dtype="float32", rope_theta=10000.0, **BENCH)
    Qwen2ForCausalLM(cfg).float().eval().save_pretrained(path, safe_serialization=True)


def tunix_python(venv: pathlib.Path, peer_python: str | None = None) -> pathlib.Path:
    """The interpreter that runs Tunix: `peer_python` when given (one that already has
    google-tunix), else the venv's, creating the venv on first use."""
    if peer_python:
        return pathlib.Path(peer_python)
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} with {TUNIX_SPEC} (first run only)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", TUNIX_SPEC,
                        "safetensors"], check=True)
    return python


class Worker:
    """A contender's worker process, spoken to by JSON lines."""

    def __init__(self, name: str, python: pathlib.Path, args, log: pathlib.Path):
        cmd = [str(python), str(pathlib.Path(__file__).resolve()), "--worker", name,
               "--model", str(args.model), "--prompt-len", str(args.prompt_len),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads),
               "--platform", args.platform]
        env = common.worker_env(args.platform, str(ROOT))
        self.name, self.log = name, log
        self._log_file = open(log, "w")  # noqa: SIM115  closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log_file, text=True, env=env, cwd=ROOT)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died; see {self.log}:\n"
                               + self.log.read_text()[-3000:])
        return json.loads(line)

    def run(self, batch: int) -> dict:
        self.proc.stdin.write(json.dumps({"batch": batch}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self._log_file.close()


def _agreement(tokens: np.ndarray, ref: np.ndarray) -> str:
    """Rows identical to the reference, and the mean length of the identical prefix."""
    same = tokens == ref
    prefix = np.where(same.all(1), same.shape[1], same.argmin(1))
    return f"{int(same.all(1).sum())}/{len(ref)} rows, prefix {prefix.mean():.0f}"


def main(args) -> None:
    work = pathlib.Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.model = work / "bench_qwen2"
    if not (args.model / "model.safetensors").exists():
        print(f"making the bench checkpoint in {args.model}", flush=True)
        make_model(args.model)
    names = [c for c in args.contenders.split(",") if c]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)}; valid: {CONTENDERS}")
    batches = [int(b) for b in args.batches.split(",")]

    workers = {}
    for name in names:
        python = (tunix_python(ROOT / args.tunix_venv, args.peer_python) if name == "tunix"
                  else sys.executable)
        start = time.perf_counter()
        workers[name] = Worker(name, python, args, work / f"{name}.log")
        print(f"{name}: loaded in {time.perf_counter() - start:.1f}s", flush=True)

    n = args.new_tokens
    rows = []
    for batch in batches:
        first = {name: w.run(batch) for name, w in workers.items()}  # warm-up + compile
        times: dict[str, list[float]] = {name: [] for name in workers}
        for r in range(args.repeats):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate the order
            for name in order:
                times[name].append(workers[name].run(batch)["seconds"])
        med = {name: statistics.median(t) for name, t in times.items()}
        tps = {name: batch * n / med[name] for name in workers}
        ref = np.asarray(first["transformers"]["tokens"]) if "transformers" in first else None
        agree = {name: _agreement(np.asarray(first[name]["tokens"]), ref) if ref is not None
                 else "-" for name in workers if name != "transformers"}
        rows.append((batch, tps, agree, {k: v["seconds"] for k, v in first.items()}, times))
        print(f"B={batch}: " + ", ".join(
            f"{k} {tps[k]:,.0f} tok/s (times {[round(t, 3) for t in times[k]]}, first "
            f"{first[k]['seconds']:.2f}s)" for k in workers), flush=True)
    for w in workers.values():
        w.close()

    where = (f"1 JAX CPU device, torch {args.threads} threads); "
             f"{common.machine('cpu')}" if args.platform == "cpu"
             else f"all on {common.machine(args.platform)})")
    print(f"\nnew tokens/s, fp32, greedy, prompt {args.prompt_len}, {n} new tokens, "
          f"median of {args.repeats} after a warm-up ({where}; "
          f"uptime: {os.popen('uptime').read().strip()}")
    head = ["batch"] + [f"{k} tok/s" for k in workers]
    if "lrmjax" in workers:
        head += [f"lrmjax / {k}" for k in workers if k != "lrmjax"]
    head += [f"{k} greedy = transformers" for k in workers if k != "transformers"
             and "transformers" in workers]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for batch, tps, agree, _, _ in rows:
        cells = [str(batch)] + [f"{tps[k]:,.0f}" for k in workers]
        if "lrmjax" in workers:
            cells += [f"{tps['lrmjax'] / tps[k]:.2f}x" for k in workers if k != "lrmjax"]
        cells += [agree[k] for k in workers if k != "transformers" and "transformers" in workers]
        print("| " + " | ".join(cells) + " |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--workdir", default="/tmp/lrmjax_vs_peers")
    p.add_argument("--tunix-venv", default=".bench-venvs/tunix")
    p.add_argument("--peer-python", help="interpreter with google-tunix (else the venv's)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                   help="where every contender runs (gpu: the first CUDA device)")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args()
    if _args.worker:
        worker_main(_args)
    else:
        main(_args)
