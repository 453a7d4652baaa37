"""Seconds per full GRPO step: lrmjax's trainer against Tunix's GRPO learner, same shapes.

A step is everything between two updates: sample 8 prompts x 4 responses (prompts of 16-32
random token ids, exactly 64 new tokens, no stop token, temperature 0.9), decode and score
them with a cheap host reward (`len(completion) / 100`, which varies with the digits of the
sampled ids, so advantages are non-zero), the reference model's logprobs (GRPO's k3 KL loss,
coefficient 0.04, so the reference forward runs every step), group advantages and one AdamW
update. The models are the peers' random-weight Qwen2 checkpoints (`tiny`: hidden 128, 4
layers, vocab 512, 854,144 params; `bench`: hidden 512, 8 layers, vocab 32000, 40,516,096
params), made by transformers from torch seed 0 as /work/shared/peers/make_models.py makes
them, fp32 on the CPU.

lrmjax runs its real trainer, `lrmjax.train.rl.train(cfg, workdir)`: the config points
`model.hf_path` at the checkpoint, the tokenizer is a word-level `tokenizer.json` over the
ids ("17 403 9" <-> [17, 403, 9], pad "0", no EOS) written beside the weights, the prompts come
through the JSONL -> TFDS -> grain data path, the reward through `RewardPool` (in-process),
sampling through `Sampler` (n=4, one prefill shared by the 4 samples), reference logprobs
through the jitted `steps.response_logprobs`, advantages through `compute_advantages` and the
update through the jitted `steps.rl_train_step` with explicit shardings. The step time is the
trainer's own `timing_s/step` from metrics.jsonl (sampling start to the update's metrics on
the host); the "wall" column is the interval between consecutive steps' metric rows, i.e.
also the loop's bookkeeping between steps, which is how Tunix is timed. There is no eval
(no held-out set) and the one checkpoint is written after the last timed step.

Tunix 0.1.7 runs `GRPOLearner` in its own venv (`grpo_step_tunix.py`, as the peers ran it):
its step time is the interval between consecutive calls of the reward function. Its rollout
and update run one after the other, as lrmjax's do: actor and rollout share one mesh, so
`RLLearner.can_enable_async_rollout` is off, and each global step waits for its rollout.

Each (contender, devices) pair runs in its own process (XLA reads the faked device count
once): lrmjax on 1 CPU device and on 2 faked CPU devices (the batch sharded over them, one
device per core; `--devices 1,2,8` adds 8), Tunix on 1 device. Contenders alternate:
`--rounds` rounds, each running every contender once in a rotating order, so a slow phase of
the shared machine hits all of them; each run times `--steps` steps after `--warmup` steps
(which include compilation). Reported: the median of all timed steps of all rounds.

lrmjax's worker applies the malloc settings its trainer applies on a CPU host
(`lrmjax/host.py`); `--malloc default` leaves glibc's own, for an A/B.

With `--platform gpu` both contenders run on the first GPU instead (fp32, one device, JAX
without preallocation) and `--peer-python` can name an interpreter that has google-tunix.

Peers measured on the peers' machine (medians, /work/shared/peers/README.md): Tunix 0.27 s
(tiny) and 5.5 s (bench); TRL 1.16 GRPOTrainer 0.54 s and 16.1 s.

Usage (from the repository root):
  .venv/bin/python experiments/benchmarks/grpo_step.py                       # tiny,bench
  .venv/bin/python experiments/benchmarks/grpo_step.py --quick --models tiny  # smoke run
  .venv/bin/python experiments/benchmarks/grpo_step.py --devices 1 --no-tunix
  .venv/bin/python experiments/benchmarks/grpo_step.py --no-tunix --ab train.microbatches=2
  python experiments/benchmarks/grpo_step.py --platform gpu --peer-python python  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[2]))  # lrmjax, uninstalled
import common  # noqa: E402
import vs_peers  # noqa: E402  (the bench checkpoint maker and the Tunix venv)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TUNIX_SCRIPT = pathlib.Path(__file__).resolve().with_name("grpo_step_tunix.py")
# The peers' tiny Qwen2 (make_models.py); the bench shape is vs_peers.BENCH.
TINY = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=384, vocab_size=512)
MODELS = {"tiny": TINY, "bench": vs_peers.BENCH}
PEERS_S = {"tiny": {"Tunix": 0.27, "TRL": 0.54}, "bench": {"Tunix": 5.5, "TRL": 16.1}}
REWARD = "bench_completion_chars"  # registered by the lrmjax worker only


def completion_chars_reward(prompts: list[str], completions: list[str],
                            metadata: list[dict]) -> list[float]:
    """The peers' cheap reward: characters of the completion / 100 (one float per row)."""
    return [len(c) / 100.0 for c in completions]


# ----------------------------------------------------------------------------- inputs


def make_checkpoint(model: str, path: pathlib.Path) -> None:
    """The peers' random Qwen2 checkpoint `model` at `path` (torch seed 0), plus a tokenizer."""
    if model == "bench":
        vs_peers.make_model(path)
    else:  # make_models.py's tiny model, made exactly as vs_peers.make_model makes bench
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        cfg = Qwen2Config(max_position_embeddings=2048, tie_word_embeddings=True,
                          torch_dtype="float32", rope_theta=10000.0, **MODELS[model])
        Qwen2ForCausalLM(cfg).float().eval().save_pretrained(path, safe_serialization=True)
    write_tokenizer(path, MODELS[model]["vocab_size"])


def write_tokenizer(path: pathlib.Path, vocab: int) -> None:
    """A word-level tokenizer.json over the ids: "17 403" <-> [17, 403]; pad "0", no EOS (so
    no response stops early), as the TRL peer script built its tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from lrmjax.tokenizers import HFTokenizer

    tok = Tokenizer(models.WordLevel({str(i): i for i in range(vocab)}, unk_token="1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    HFTokenizer(tok, {"pad_token": "0", "unk_token": "1"}).save_pretrained(path)


def make_prompts(vocab: int, steps: int, batch: int, seed: int = 0) -> list[list[list[int]]]:
    """[steps][batch] prompts of 16-32 ids in 1..vocab-1 (0 is the pad id), as the peers."""
    rng = np.random.default_rng(seed)
    return [[rng.integers(1, vocab, rng.integers(16, 33)).tolist() for _ in range(batch)]
            for _ in range(steps)]


def write_jsonl(prompts: list[list[list[int]]], path: pathlib.Path) -> None:
    """GSM8K-format rows (the trainer's JSONL source): question = the ids as text."""
    with open(path, "w") as f:
        for batch in prompts:
            for p in batch:
                f.write(json.dumps({"question": " ".join(map(str, p)), "answer": "#### 0"})
                        + "\n")


# ----------------------------------------------------------------------------- lrmjax worker


def lrmjax_config(args: argparse.Namespace):
    """The experiment: GRPO (k3 KL loss, 0.04) on the checkpoint, 8 prompts x 4, 64 tokens."""
    from lrmjax import config as config_lib

    c = config_lib.base_config("grpo")
    c.model.hf_path = str(args.model_dir)
    c.tokenizer.kind = "hf"
    c.data.source = "gsm8k_jsonl"
    c.data.path = str(args.model_dir.parent / "prompts.jsonl")
    c.sampling.n = args.n
    c.sampling.temperature = 0.9
    c.sampling.max_new_tokens = args.new_tokens
    c.sampling.max_prompt_len = args.prompt_len
    c.rl.kl_mode, c.rl.kl_estimator, c.rl.kl_coef = "loss", "k3", args.beta
    c.reward.fns = {REWARD: 1.0}
    c.reward.num_workers = 0  # in-process: the reward is trivial, a worker would only add IPC
    c.optim.lr = 1e-6
    c.train.steps = args.warmup + args.steps
    c.train.batch_prompts = args.batch
    c.train.checkpoint_every = 10**6  # only the final save, after the last timed step
    c.train.rollout_log_every = 10**6
    c.train.export_hf = False
    c.train.progress = False
    c.eval.every = 0  # and no eval_path: no eval before or after
    c.mesh.cpu_devices = args.devices
    c.mesh.cpu_retain_freed_memory = args.malloc == "retain"
    for item in args.set or []:  # an A/B variant's overrides
        key, _, value = item.partition("=")
        config_lib.set_by_path(c, key, value)
    config_lib.validate(c)
    return c


def lrmjax_worker(args: argparse.Namespace) -> dict:
    args.devices = int(args.devices)  # one count per worker
    from lrmjax import host

    if args.platform == "cpu":  # before jax starts, as lrmjax.main does (lrmjax/host.py)
        common.force_cpu_devices(args.devices)
        if args.malloc == "retain":
            host.retain_freed_memory()
    import jax

    from lrmjax.rewards import base as reward_base
    from lrmjax.train import rl

    reward_base.register(REWARD)(completion_chars_reward)
    if jax.device_count() != args.devices:
        raise RuntimeError(f"asked for {args.devices} devices, jax sees {jax.device_count()}")
    workdir = pathlib.Path(args.run_dir)
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, never a resume
    start = time.perf_counter()
    rl.train(lrmjax_config(args), str(workdir))
    total = time.perf_counter() - start
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    rows = [r for r in rows if r.get("phase") == "rl"]
    if len(rows) != args.warmup + args.steps:
        raise RuntimeError(f"expected {args.warmup + args.steps} RL steps in metrics.jsonl, "
                           f"found {len(rows)}")
    lengths = [r["response_length/mean"] for r in rows]
    if min(lengths) != args.new_tokens:
        raise RuntimeError(f"responses were not all {args.new_tokens} tokens: {lengths}")
    stamps = [r["time"] for r in rows]
    return {"step_s": [r["timing_s/step"] for r in rows],
            "wall_s": [None] + list(np.diff(stamps)),
            "sample_and_reward_s": [r["timing_s/sample_and_reward"] for r in rows],
            "prepare_s": [r["timing_s/prepare"] for r in rows],
            "update_s": [r["timing_s/update"] for r in rows],
            "reward_std": [r["reward/std"] for r in rows],
            "kl": [r.get("actor/kl_loss") for r in rows],
            "devices": jax.device_count(), "total_s": total}


# ----------------------------------------------------------------------------- driver


def _timed(values: list, warmup: int) -> list[float]:
    return [float(v) for v in values[warmup:] if v is not None]


def run_lrmjax(args, model_dir: pathlib.Path, devices: int, tag: str,
               sets: tuple[str, ...] = ()) -> dict:
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", "lrmjax",
           "--model-dir", str(model_dir), "--devices", str(devices),
           "--run-dir", str(model_dir.parent / "runs" / tag), *_shape_flags(args)]
    cmd += [f"--set={item}" for item in sets]
    out = _run(cmd, model_dir.parent / f"{tag}.log", args)
    return {"step_s": _timed(out["step_s"], args.warmup),
            "wall_s": _timed(out["wall_s"], args.warmup),
            "parts": {k: statistics.median(_timed(out[f"{k}_s"], args.warmup))
                      for k in ("sample_and_reward", "prepare", "update")},
            "first_s": out["step_s"][0], "reward_std": float(np.mean(out["reward_std"]))}


def run_tunix(args, model_dir: pathlib.Path, tag: str) -> dict:
    python = vs_peers.tunix_python(ROOT / args.tunix_venv, args.peer_python)
    cmd = [str(python), str(TUNIX_SCRIPT), "--model", str(model_dir),
           "--prompts", str(model_dir.parent / "prompts.json"), "--new-tokens",
           str(args.new_tokens), "--prompt-len", str(args.prompt_len), "--n", str(args.n),
           "--beta", str(args.beta)]
    out = _run(cmd, model_dir.parent / f"{tag}.log", args)
    stamps = out["stamps"]
    if len(stamps) != args.warmup + args.steps + 1:
        raise RuntimeError(f"Tunix called the reward {len(stamps)} times, expected "
                           f"{args.warmup + args.steps + 1} (one per step)")
    if out["train_steps"] != len(stamps):
        raise RuntimeError(f"Tunix made {out['train_steps']} updates in {len(stamps)} steps")
    if min(out["mean_words"]) != args.new_tokens:
        print(f"note: Tunix completions averaged {out['mean_words']} tokens, not "
              f"{args.new_tokens}", flush=True)
    intervals = list(np.diff(stamps))
    return {"step_s": _timed(intervals, args.warmup), "wall_s": _timed(intervals, args.warmup),
            "first_s": stamps[1] if len(stamps) > 1 else None, "parts": None,
            "reward_std": None}


def _shape_flags(args) -> list[str]:
    return ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
            str(args.batch), "--n", str(args.n), "--new-tokens", str(args.new_tokens),
            "--prompt-len", str(args.prompt_len), "--beta", str(args.beta),
            "--platform", args.platform, "--malloc", args.malloc]


def _run(cmd: list[str], log: pathlib.Path, args) -> dict:
    """Runs a worker; its last stdout line is its JSON result, everything else goes to `log`."""
    env = common.worker_env(args.platform, str(ROOT))
    with open(log, "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                              cwd=ROOT, timeout=args.timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}:"
                           f"\n{log.read_text()[-3000:]}")
    return json.loads(lines[-1])


def prepare_model(args, model: str) -> pathlib.Path:
    work = pathlib.Path(args.workdir).resolve() / model
    model_dir = work / f"{model}_qwen2"
    if not (model_dir / "tokenizer.json").exists():
        print(f"making the {model} checkpoint in {model_dir}", flush=True)
        work.mkdir(parents=True, exist_ok=True)
        make_checkpoint(model, model_dir)
    # Tunix takes one batch per step (warmup + steps + 1: its last interval ends at the last
    # reward call); lrmjax's data iterator reshuffles the same prompts every epoch.
    prompts = make_prompts(MODELS[model]["vocab_size"], args.warmup + args.steps + 1,
                           args.batch)
    (work / "prompts.json").write_text(json.dumps(prompts))
    write_jsonl(prompts, work / "prompts.jsonl")
    return model_dir


def main(args) -> None:
    models = [m for m in args.models.split(",") if m]
    unknown = set(models) - set(MODELS)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; valid: {sorted(MODELS)}")
    devices = [int(d) for d in args.devices.split(",") if d]
    if args.platform == "gpu" and devices != [1]:
        raise SystemExit("--platform gpu runs on one GPU: pass --devices 1")
    # (name, devices, config overrides): lrmjax as configured, and with --ab overrides.
    contenders = [("lrmjax", d, ()) for d in devices]
    if args.ab:
        contenders += [("lrmjax", d, tuple(args.ab)) for d in devices]
    contenders += [] if args.no_tunix else [("tunix", 1, ())]
    print(f"uptime: {os.popen('uptime').read().strip()}", flush=True)
    results = {}
    for model in models:
        model_dir = prepare_model(args, model)
        times: dict[tuple, dict] = {c: {} for c in contenders}
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for contender in order:
                name, dev, sets = contender
                tag = f"{name}{'_ab' if sets else ''}_d{dev}_r{r}"
                start = time.perf_counter()
                try:
                    out = (run_lrmjax(args, model_dir, dev, tag, sets) if name == "lrmjax"
                           else run_tunix(args, model_dir, tag))
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    print(f"{model} {tag}: FAILED: {e}", flush=True)
                    times[contender].setdefault("errors", []).append(str(e)[-500:])
                    continue
                for k in ("step_s", "wall_s"):
                    times[contender].setdefault(k, []).extend(out[k])
                times[contender].setdefault("runs", []).append(out)
                print(f"{model} {tag}: step s {[round(t, 3) for t in out['step_s']]}, first "
                      f"{out['first_s']:.1f}s" + (f", parts {_fmt(out['parts'])}"
                                                  if out["parts"] else "")
                      + f" ({time.perf_counter() - start:.0f}s with startup)", flush=True)
        results[model] = times
    print_table(args, results, contenders)
    out = pathlib.Path(args.workdir).resolve() / "results.json"
    out.write_text(json.dumps({m: {_label(n, s) + f"_d{d}": v for (n, d, s), v in t.items()}
                               for m, t in results.items()}, indent=1))
    print(f"all step times: {out}")


def _label(name: str, sets: tuple[str, ...]) -> str:
    return f"{name} ({', '.join(sets)})" if sets else name


def _fmt(parts: dict[str, float]) -> str:
    return " / ".join(f"{k} {v:.3f}" for k, v in parts.items())


def print_table(args, results: dict, contenders: list[tuple]) -> None:
    where = common.machine(args.platform)
    print(f"\nseconds per GRPO step: {args.batch} prompts x {args.n} samples, prompts 16-"
          f"{args.prompt_len} tokens, exactly {args.new_tokens} new tokens, k3 KL loss "
          f"{args.beta}, fp32; median of {args.steps} steps x {args.rounds} round(s) after "
          f"{args.warmup} warm-up step(s); {where}; "
          f"uptime: {os.popen('uptime').read().strip()}")
    head = ["model", "contender", "devices", "s/step", "wall s/step", "vs Tunix (wall)",
            "sample+reward / ref+adv / update", "peers measured"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, times in results.items():
        tunix = times.get(("tunix", 1, ()), {}).get("wall_s")
        tunix_med = statistics.median(tunix) if tunix else None
        for name, dev, sets in contenders:
            t = times[(name, dev, sets)]
            name = _label(name, sets)
            if not t.get("step_s"):
                print(f"| {model} | {name} | {dev} | failed: see logs | | | | |")
                continue
            step, wall = statistics.median(t["step_s"]), statistics.median(t["wall_s"])
            parts = [run["parts"] for run in t["runs"] if run["parts"]]
            part_cell = (" / ".join(f"{statistics.median(p[k] for p in parts):.3f}"
                                    for k in parts[0]) if parts else "-")
            ratio = (f"{wall / tunix_med:.2f}x" if tunix_med and name != "tunix" else "-")
            peer = (f"Tunix {PEERS_S[model]['Tunix']} s, TRL {PEERS_S[model]['TRL']} s"
                    if name == "tunix" else "")
            print(f"| {model} | {name} | {dev} | {step:.3f} | {wall:.3f} | {ratio} | "
                  f"{part_cell} | {peer} |")
    print("lrmjax's parts are its trainer's timing_s/{sample_and_reward,prepare,update}; the "
          "reference logprobs and advantages are dispatched asynchronously in 'prepare', so "
          "their device time lands in 'update'.\n"
          "target: lrmjax at most 0.5x Tunix's s/step on both models")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,bench")
    p.add_argument("--devices", default="1,2", help="lrmjax's CPU device counts")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run")
    # Two: Tunix compiles its update during its second reward interval (its data thread
    # samples step 2 while the first update compiles); lrmjax is steady from step 2.
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    p.add_argument("--rounds", type=int, default=2, help="runs of every contender")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 timed steps after 2 warm-up steps, 1 round")
    p.add_argument("--no-tunix", action="store_true", help="time lrmjax only")
    p.add_argument("--batch", type=int, default=8, help="prompts per step")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient (k3, in the loss)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per worker run")
    p.add_argument("--workdir", default="/tmp/lrmjax_grpo_step")
    p.add_argument("--tunix-venv", default=".bench-venvs/tunix")
    p.add_argument("--peer-python", help="interpreter with google-tunix (else the venv's)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu",
                   help="where both contenders run (gpu: the first CUDA device)")
    p.add_argument("--malloc", choices=("retain", "default"), default="retain",
                   help="lrmjax's mesh.cpu_retain_freed_memory (lrmjax/host.py): on or off")
    p.add_argument("--ab", action="append", default=[], metavar="KEY=VALUE",
                   help="also run lrmjax with this config override (repeatable: all in one "
                        "variant), alternating with the plain runs, for an A/B on one machine")
    p.add_argument("--set", action="append", help=argparse.SUPPRESS)  # a worker's overrides
    p.add_argument("--worker", choices=("lrmjax",), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 1
    return args


if __name__ == "__main__":
    _args = parse_args()
    if _args.worker:
        _out = sys.stdout
        sys.stdout = sys.stderr  # the trainer's console output must not corrupt the result
        _result = lrmjax_worker(_args)
        print(json.dumps(_result), file=_out, flush=True)
    else:
        main(_args)
