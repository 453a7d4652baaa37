"""Whole sweeps as one program: a config whose task has a device reward becomes one pure
function of (seed, hyperparameters) -> a whole run, which `vmap` batches over seeds and grid
points and `jit` compiles once.

    program = Program(cfg, name="arith_grpo")       # host: data, held-out set, demonstrations
    out = program.run_many([0, 1, 2], {"optim.lr": [1e-4, 1e-4, 1e-4]})

A run (`Program.run`) is the host trainer's (`lrmjax.train.rl.train`) on the device-reward
path (`lrmjax.train.pure`): params from the seed, the supervised warm start to
`sft.target_accuracy` (its seed, batches and stopping step vary with the run), a fresh RL
optimizer, `train.steps` RL steps with evaluations before, every `eval.every` steps and after.
What differs from the host run: the prompt pool is drawn once (with the config's seed) and
shared by every run, which draws its own batches from it; batches are drawn without
replacement per step rather than by epoch; evaluations give greedy pass@1, sampled pass@1 and
pass@k but not maj@k. `Program.run` is `warm_start` then `rl`; experiments that give several
programs (algorithms) the same warm start call the two apart (experiments/repro/common.py).

Hyperparameters that vmap can carry are scalars that enter the program as arithmetic
(`TRACEABLE`): learning rates (an `optax.inject_hyperparams` optimizer, `optimizer`), the KL
coefficient (`TrainState.kl_coef`) and the algorithm knobs of `pure.TRACEABLE_KNOBS`. Any other
key changes the program (an estimator, a batch size): sweep it as separate programs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lrmjax import config as config_lib
from lrmjax import tokenizers as tok_lib
from lrmjax.data import tasks as tasks_lib
from lrmjax.data.tasks import arithmetic_device
from lrmjax.models import heads, transformer
from lrmjax.sampling import SamplingParams
from lrmjax.train import inputs as inputs_lib
from lrmjax.train import pure
from lrmjax.train.state import TrainState, adamw, lr_schedule


@dataclasses.dataclass(frozen=True)
class DeviceRewardSpec:
    """A task's device reward (`pure.DeviceReward`) and the host function that encodes its
    reference answers (answers [E] -> answer_tokens [E, A], answer_mask [E, A])."""

    reward_fn: pure.DeviceReward
    encode_answers: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]


# Tasks (names in `lrmjax.data.tasks.TASKS`) with a jittable reward on token ids.
DEVICE_REWARDS: dict[str, DeviceRewardSpec] = {
    "arithmetic": DeviceRewardSpec(arithmetic_device.arithmetic_device_reward,
                                   arithmetic_device.encode_answers),
}

# Config keys a sweep can vary inside one program (vmapped): each is a float scalar.
TRACEABLE = frozenset({"optim.lr", "optim.critic_lr", "sft.lr", "rl.kl_coef"}
                      | {f"rl.{k}" for k in pure.TRACEABLE_KNOBS})


def check(cfg: ml_collections.ConfigDict, name: str = "the config") -> None:
    """Raises ValueError listing every setting of `cfg` the device-reward path cannot run (a
    task without a device reward, text rewards, episodes, ...), naming `name` and the keys."""
    d, problems = cfg.data, []
    if d.source != "task":
        problems.append(f"data.source={d.source!r} (a procedural task is needed: 'task')")
    elif d.task not in DEVICE_REWARDS:
        problems.append(f"data.task={d.task!r} has no device reward (tasks with one: "
                        f"{sorted(DEVICE_REWARDS)})")
    if dict(cfg.reward.fns) != {"task": 1.0}:
        problems.append(f"reward.fns={dict(cfg.reward.fns)} (only the task's own verifier, "
                        "{'task': 1.0}, has a device form)")
    for key, bad in (("reward.process_fns", bool(cfg.reward.process_fns)),
                     ("reward.shuffle_control", cfg.reward.shuffle_control),
                     ("env.name", cfg.env.name != "none"),
                     ("data.curriculum", cfg.data.curriculum != "none"),
                     ("model.hf_path", bool(cfg.model.hf_path)),
                     ("tokenizer.kind", cfg.tokenizer.kind != "char"),
                     ("model.lora", cfg.model.lora.rank > 0)):
        if bad:
            problems.append(f"{key}={cfg[key.split('.')[0]][key.split('.')[1]]!r}")
    problems += [f"rl.{p}" for p in pure.unsupported(cfg.rl)]
    if problems:
        raise ValueError(f"{name} cannot run on the device-reward path (lrmjax.train.pure): "
                         + "; ".join(problems) + ". Use the host trainer (lrmjax.main).")


def optimizer(lr: float, *, warmup_steps: int, total_steps: int, schedule: str = "constant",
              min_lr_ratio: float = 0.1, grad_clip: float = 0.0, **adam: float
              ) -> optax.GradientTransformation:
    """`state.adamw(state.lr_schedule(lr, ...))` with the peak learning rate in the optimizer
    state (`optax.inject_hyperparams`: `opt_state.hyperparams['learning_rate']`), so runs
    vmapped together can each have their own (`set_learning_rate`). Same updates as the host's
    optimizer for the same lr."""

    def make(learning_rate):
        return adamw(lr_schedule(learning_rate, warmup_steps, total_steps, schedule,
                                 min_lr_ratio), grad_clip=grad_clip, **adam)

    return optax.inject_hyperparams(make)(learning_rate=lr)


def set_learning_rate(opt_state: Any, lr: jax.Array | float) -> Any:
    """`opt_state` of an `optimizer` with its peak learning rate set to `lr` (a scalar)."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams,
                                           "learning_rate": jnp.asarray(lr, jnp.float32)})


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95
               ) -> tuple[float, float, float]:
    """(mean, low, high): Student's t confidence interval of the mean of independent runs,
    mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n) with s the sample standard deviation
    (ddof 1). With one value the interval is (nan, nan)."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    mean = float(np.mean(x))
    if x.size < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1) * np.std(x, ddof=1)
                 / np.sqrt(x.size))
    return mean, mean - half, mean + half


class Program:
    """The pure run of config `cfg`: host-side data built once, `run` traced per program.

    Attributes:
      arrays: the device-resident data every run reads (not vmapped): train prompts, held-out
        prompts (padded to chunks of eval.batch_size), the warm start's check set and its
        demonstrations.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, name: str = "the config"):
        config_lib.validate(cfg)
        check(cfg, name)
        self.cfg, self.name = cfg, name
        self.tokenizer = tok_lib.CharTokenizer()
        self.model_cfg = config_lib.model_config(cfg, self.tokenizer.vocab_size)
        spec = DEVICE_REWARDS[cfg.data.task]
        self.reward_fn = spec.reward_fn
        train, held_out = _examples(cfg, self.tokenizer)
        P = cfg.sampling.max_prompt_len
        ids = functools.partial(inputs_lib.prompt_ids, cfg, self.tokenizer)

        def device_data(examples):
            return pure.DeviceData.from_examples(self.tokenizer, examples, P,
                                                 spec.encode_answers, prompt_ids=ids)

        batch = cfg.eval.batch_size
        arrays = {"train": device_data(train),
                  "eval": device_data(held_out).padded(batch)}
        if cfg.sft.steps > 0:
            arrays["sft_eval"] = device_data(held_out[:cfg.sft.eval_size]).padded(batch)
            pool = inputs_lib.warm_start_pool(cfg, self.tokenizer, train, held_out)
            demos = inputs_lib.demonstration_arrays(cfg, self.tokenizer, P, pool)
            arrays["demos"] = pure.DeviceDemos(**{k: jnp.asarray(v) for k, v in demos.items()})
        self.arrays = arrays
        s = cfg.sampling
        self.sampling = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                       min_p=s.min_p, max_new_tokens=s.max_new_tokens, n=s.n)
        self.stop_ids = tuple(self.tokenizer.stop_ids)

    # ------------------------------------------------------------ one run, pure
    def run(self, arrays: Mapping[str, Any], seed: jax.Array,
            hparams: Mapping[str, jax.Array]) -> dict[str, dict[str, jax.Array]]:
        """One whole run for `seed` (int32 scalar) with the `TRACEABLE` hyperparameters in
        `hparams` (float32 scalars; the rest from the config): `warm_start`, then `rl`. Pure:
        vmap it over (seed, hparams) with `arrays` shared.

        Returns {'train': each RL step metric [steps], 'eval': each evaluation metric
        [evaluations] (the first after the warm start, before RL), 'sft': the warm start's
        summary (sft/steps, sft/eval_greedy_pass@1, sft/loss; {} without one)}.
        """
        params, sft_summary = self.warm_start(arrays, seed, hparams)
        return {**self.rl(arrays, params, seed, hparams), "sft": sft_summary}

    def _check_hparams(self, hparams: Mapping[str, jax.Array]) -> Callable[[str], Any]:
        bad = sorted(set(hparams) - TRACEABLE)
        if bad:
            raise ValueError(f"{bad} cannot vary inside one program; traceable: "
                             f"{sorted(TRACEABLE)}")

        def hp(key):
            return hparams.get(key, self.cfg[key.split(".")[0]][key.split(".")[1]])

        return hp

    def _evaluate(self) -> Callable[..., dict[str, jax.Array]]:
        cfg = self.cfg
        return functools.partial(
            pure.evaluate, model_cfg=self.model_cfg, max_new_tokens=cfg.sampling.max_new_tokens,
            temperature=cfg.eval.temperature, batch_size=cfg.eval.batch_size,
            reward_fn=self.reward_fn, stop_ids=self.stop_ids, pad_id=self.tokenizer.pad_id)

    def warm_start(self, arrays: Mapping[str, Any], seed: jax.Array,
                   hparams: Mapping[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
        """A run's initial params from `seed` and its supervised warm start to
        `sft.target_accuracy` (none when sft.steps = 0). Pure, like `run`.

        Returns (params, the warm start's summary: sft/steps, sft/eval_greedy_pass@1, sft/loss;
        {} without one).
        """
        cfg, hp = self.cfg, self._check_hparams(hparams)
        params = transformer.init_params(self.model_cfg, jax.random.key(seed))
        if cfg.sft.steps <= 0:
            return params, {}
        s, evaluate = cfg.sft, self._evaluate()
        tx = optimizer(s.lr, warmup_steps=s.warmup_steps, total_steps=s.steps,
                       grad_clip=cfg.optim.grad_clip)
        state = TrainState.create(params, tx)
        state = state.replace(opt_state=set_learning_rate(state.opt_state, hp("sft.lr")))
        check_key = jax.random.key(0)  # as the host's check (`sft._greedy_accuracy`)
        state, sft_summary = pure.warm_start(
            state, jax.random.key(seed + 1), demos=arrays["demos"],
            batch_size=s.batch_size, model_cfg=self.model_cfg, max_steps=s.steps,
            check_every=s.eval_every, target_accuracy=s.target_accuracy,
            accuracy_fn=lambda p: evaluate(p, check_key, data=arrays["sft_eval"], k=0)[
                "eval/greedy_pass@1"])
        return state.params, sft_summary

    def rl(self, arrays: Mapping[str, Any], params: Any, seed: jax.Array,
           hparams: Mapping[str, jax.Array], keep_params: bool = False
           ) -> dict[str, Any]:
        """`train.steps` RL steps from `params` (e.g. `warm_start`'s, possibly another
        program's: experiments give several algorithms the same warm start) with held-out
        evaluations before, every `eval.every` steps and after. Pure, like `run`.

        Returns {'train': each RL step metric [steps], 'eval': each evaluation metric
        [evaluations]} and, with `keep_params`, 'params': the policy after RL.
        """
        cfg, model_cfg, hp = self.cfg, self.model_cfg, self._check_hparams(hparams)
        o, algo, t = cfg.optim, cfg.rl, cfg.train
        adam = dict(b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
        total = t.steps * t.ppo_epochs * t.minibatches
        tx = optimizer(o.lr, warmup_steps=o.warmup_steps, total_steps=total,
                       schedule=o.schedule, min_lr_ratio=o.min_lr_ratio,
                       grad_clip=o.grad_clip, **adam)
        critic_tx = critic_params = None
        if algo.use_critic:
            critic_tx = optimizer(o.critic_lr, warmup_steps=o.critic_warmup_steps,
                                  total_steps=total, grad_clip=o.grad_clip)
            critic_params = heads.init_from_policy(model_cfg, params,
                                                   jax.random.key(seed + 7))
        state = TrainState.create(params, tx, critic_params=critic_params, critic_tx=critic_tx,
                                  kl_coef=hp("rl.kl_coef"))
        state = state.replace(opt_state=set_learning_rate(state.opt_state, hp("optim.lr")))
        if critic_tx is not None:
            state = state.replace(critic_opt_state=set_learning_rate(state.critic_opt_state,
                                                                     hp("optim.critic_lr")))
        ref_params = params if algo.kl_mode != "none" else None
        knobs = {k[len("rl."):]: v for k, v in hparams.items()
                 if k.startswith("rl.") and k != "rl.kl_coef"}
        eval_key = jax.random.key(seed + 99)  # the same draws at every evaluation (as rl.py)
        evaluate = self._evaluate()
        state, metrics, evals = pure.train(
            state, jax.random.fold_in(jax.random.key(seed), 1), t.steps,
            eval_every=cfg.eval.every,
            eval_fn=lambda p: evaluate(p, eval_key, data=arrays["eval"], k=cfg.eval.k),
            data=arrays["train"], model_cfg=model_cfg, algo=algo, sampling=self.sampling,
            batch_prompts=t.batch_prompts, reward_fn=self.reward_fn, stop_ids=self.stop_ids,
            pad_id=self.tokenizer.pad_id, ref_params=ref_params, knobs=knobs,
            ppo_epochs=t.ppo_epochs, minibatches=t.minibatches, microbatches=t.microbatches,
            shared_prompt=t.shared_prompt_forward, logits_chunk_mb=t.logits_chunk_mb,
            random_reward=cfg.reward.random_p)
        return {"train": metrics, "eval": evals, **({"params": state.policy} if keep_params
                                                     else {})}

    # ------------------------------------------------------------ many runs, one program
    def compile_many(self, runs: int, hparam_names: Sequence[str], vmapped: bool = True
                     ) -> Any:
        """The compiled program of `runs` vmapped runs varying `hparam_names`; with
        `vmapped=False` the one-run program (`run_many` then calls it once per run)."""
        batch = (runs,) if vmapped else ()
        fn = jax.jit(jax.vmap(self.run, in_axes=(None, 0, 0)) if vmapped else self.run)
        seeds = jax.ShapeDtypeStruct(batch, jnp.int32)
        hp = {k: jax.ShapeDtypeStruct(batch, jnp.float32) for k in hparam_names}
        return fn.lower(self.arrays, seeds, hp).compile()

    def run_many(self, seeds: Sequence[int], hparams: Mapping[str, Sequence[float]] | None = None,
                 compiled: Any = None, vmapped: bool = True
                 ) -> dict[str, dict[str, np.ndarray]]:
        """Runs i = 0..S-1 (seed `seeds[i]`, hyperparameters `hparams[k][i]`) as one program
        (or, with `vmapped=False`, one compiled run called once per run: as fast on 2 CPU
        cores, experiments/benchmarks/RESULTS.md, with one run in memory); returns `run`'s
        output with a leading run axis [S, ...], as numpy."""
        hparams = {k: np.asarray(v, np.float32) for k, v in (hparams or {}).items()}
        seeds = np.asarray(seeds, np.int32)
        compiled = compiled or self.compile_many(len(seeds), sorted(hparams), vmapped)
        if vmapped:
            return jax.device_get(compiled(self.arrays, seeds, hparams))
        outs = [jax.device_get(compiled(self.arrays, seeds[i],
                                        {k: v[i] for k, v in hparams.items()}))
                for i in range(len(seeds))]
        return jax.tree.map(lambda *xs: np.stack(xs), *outs)


def _examples(cfg: ml_collections.ConfigDict, tokenizer: Any) -> tuple[list, list]:
    """(train, held-out) examples as the host trainer draws them (`inputs._examples` for
    source 'task', then `inputs.fitting_prompts`): the train pool with the config's seed."""
    d = cfg.data
    task = tasks_lib.get_task(d.task, **d.task_kwargs.to_dict())
    train = task.sample(np.random.default_rng([cfg.seed, 1]), d.train_size)
    held_out = task.sample(np.random.default_rng(d.eval_seed), cfg.eval.size)
    train = inputs_lib.without_prompts(train, held_out)
    train, _ = inputs_lib.fitting_prompts(cfg, tokenizer, train, "train")
    held_out, _ = inputs_lib.fitting_prompts(cfg, tokenizer, held_out, "held-out")
    return train, held_out
