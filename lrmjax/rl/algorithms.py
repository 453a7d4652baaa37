"""Named algorithm presets: each RL algorithm is a small ConfigDict of knobs.

`get(name, **overrides)` returns a complete, validated, locked ConfigDict; the trainer reads
these keys (and nothing else) to pick the advantage estimator, policy loss, aggregation,
KL handling and batch filters. See docs/algorithms.md for the table of presets.

Knobs (all presets have every key):
  adv_estimator        key of advantages.ADVANTAGE_ESTIMATORS
  policy_loss          key of losses.POLICY_LOSSES
  loss_agg_mode        key of aggregation.AGGREGATIONS
  clip_ratio_low/high  PPO clip range [1 - low, 1 + high] (decoupled: DAPO clip-higher);
                       for gspo the sequence-ratio range, for cispo the IS-weight range
  clip_ratio_c         dual-clip bound for negative advantages (> 1), None = off
  norm_adv_by_std      grpo/gpg: divide by the group std
  adv_epsilon          added to stds before dividing
  batch_std_norm       grpo: divide by the batch std instead (Lite PPO)
  gamma, lam           discount and GAE lambda (gae: the actor's lambda)
  lam_critic           gae: lambda of the value targets (VC-PPO decoupled GAE)
  vapo_alpha           gae: length-adaptive actor lambda 1 - 1/(alpha * len); None = lam
  whiten_advantages    gae: whiten advantages over the batch's valid tokens
  kl_mode              'none' | 'loss' (kl_coef * KL in the actor loss) | 'reward'
                       (-kl_coef * KL_t as token_rewards; needs a token-reward estimator)
  kl_estimator         key of kl.KL_ESTIMATORS (k1, k2, k3)
  kl_coef              KL coefficient (initial value when adaptive)
  kl_target            None = fixed coefficient, else target KL of the adaptive controller
  kl_horizon           horizon of the adaptive controller (Ziegler et al. 2019)
  entropy_coef         entropy bonus weight (loss -= entropy_coef * entropy)
  top_entropy_frac     train only this top fraction of tokens by entropy (1.0 = all)
  use_critic           train a value model (required by, and only by, critic estimators)
  vf_clip              value clipping range (None = off); vf_coef: critic loss weight
  tis_mode, tis_cap    truncated importance sampling sampler->trainer: 'none' | 'token' |
                       'sequence', weights capped at tis_cap
  dynamic_sampling     DAPO: drop groups whose rewards are all equal and refill
  overlong_filter      mask responses truncated at the length limit out of the loss
  overlong_buffer_len  DAPO soft overlong penalty buffer in tokens (0 = off)
  overlong_penalty_factor  scale of that penalty
  needs_greedy_baseline    remax: the trainer must also decode one greedy response/prompt
  max_response_len_norm    seq-mean-token-sum-norm constant (None = the padded response
                       width, i.e. the sampler's max response length)
  pass_k               grpo_passk: the k of pass@k
  kl_cov_ratio, kl_cov_coef  kl_cov: share of tokens penalized and the penalty weight
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict

from lrmjax.rl import advantages, aggregation, kl, losses


class Preset(NamedTuple):
    paper: str  # citation, with arXiv id
    overrides: dict[str, Any]  # differences from _defaults()


def _defaults() -> ml_collections.ConfigDict:
    """The knob set with neutral values (a GRPO-style critic-free clipped objective)."""
    return ml_collections.ConfigDict(
        {
            "adv_estimator": "grpo",
            "policy_loss": "ppo",
            "loss_agg_mode": "token-mean",
            "clip_ratio_low": 0.2,
            "clip_ratio_high": 0.2,
            "clip_ratio_c": config_dict.placeholder(float),
            "norm_adv_by_std": True,
            "adv_epsilon": 1e-6,
            "batch_std_norm": False,
            "gamma": 1.0,
            "lam": 1.0,
            "lam_critic": 1.0,
            "vapo_alpha": config_dict.placeholder(float),
            "whiten_advantages": True,
            "kl_mode": "none",
            "kl_estimator": "k3",
            "kl_coef": 0.001,
            "kl_target": config_dict.placeholder(float),
            "kl_horizon": 10000.0,
            "entropy_coef": 0.0,
            "top_entropy_frac": 1.0,
            "use_critic": False,
            "vf_clip": config_dict.placeholder(float),
            "vf_coef": 1.0,
            "tis_mode": "none",
            "tis_cap": 2.0,
            "dynamic_sampling": False,
            "overlong_filter": False,
            "overlong_buffer_len": 0,
            "overlong_penalty_factor": 1.0,
            "needs_greedy_baseline": False,
            "max_response_len_norm": config_dict.placeholder(int),
            "pass_k": 4,
            "kl_cov_ratio": 0.0002,
            "kl_cov_coef": 1.0,
        }
    )


_CRITIC = {"adv_estimator": "gae", "use_critic": True, "vf_clip": 0.5}

PRESETS: dict[str, Preset] = {
    "ppo": Preset(
        "Schulman et al. 2017, PPO, arXiv:1707.06347; RLHF recipe of Ouyang et al. 2022, "
        "arXiv:2203.02155 (KL penalty in the reward)",
        {**_CRITIC, "lam": 0.95, "lam_critic": 0.95, "kl_mode": "reward", "kl_estimator": "k1"},
    ),
    "vc_ppo": Preset(
        "Yuan et al. 2025, VC-PPO, arXiv:2503.01491 (decoupled GAE: lam_critic = 1)",
        {**_CRITIC, "lam": 0.95, "lam_critic": 1.0},
    ),
    "vapo": Preset(
        "Yue et al. 2025, VAPO, arXiv:2504.05118 (length-adaptive GAE alpha = 0.05, "
        "lam_critic = 1, clip-higher, token-level loss)",
        {**_CRITIC, "vapo_alpha": 0.05, "lam_critic": 1.0, "clip_ratio_high": 0.28},
    ),
    "grpo": Preset(
        "Shao et al. 2024, DeepSeekMath / GRPO, arXiv:2402.03300 (k3 KL loss, beta = 0.04)",
        {
            "loss_agg_mode": "seq-mean-token-mean",
            "kl_mode": "loss",
            "kl_estimator": "k3",
            "kl_coef": 0.04,
        },
    ),
    "dr_grpo": Preset(
        "Liu et al. 2025, Dr. GRPO (Understanding R1-Zero-Like Training), arXiv:2503.20783",
        {
            "adv_estimator": "dr_grpo",
            "norm_adv_by_std": False,
            "loss_agg_mode": "seq-mean-token-sum-norm",
        },
    ),
    "dapo": Preset(
        "Yu et al. 2025, DAPO, arXiv:2503.14476 (clip-higher 0.28, token-level loss, dynamic "
        "sampling, overlong filtering via soft penalty with a 4096-token buffer)",
        {
            "clip_ratio_high": 0.28,
            "dynamic_sampling": True,
            "overlong_buffer_len": 4096,
            "overlong_penalty_factor": 1.0,
        },
    ),
    "rloo": Preset(
        "Ahmadian et al. 2024, Back to Basics (RLOO), arXiv:2402.14740 (KL in the reward)",
        {"adv_estimator": "rloo", "kl_mode": "reward", "kl_estimator": "k1"},
    ),
    "reinforce_pp": Preset(
        "Hu 2025, REINFORCE++, arXiv:2501.03262 (token-level KL penalty in the reward, "
        "global advantage normalization)",
        {"adv_estimator": "reinforce_pp", "kl_mode": "reward", "kl_estimator": "k1"},
    ),
    "reinforce_pp_baseline": Preset(
        "Hu 2025, REINFORCE++-baseline, arXiv:2501.03262 (group-mean baseline, KL as a k2 "
        "loss term)",
        {"adv_estimator": "reinforce_pp_baseline", "kl_mode": "loss", "kl_estimator": "k2"},
    ),
    "remax": Preset(
        "Li et al. 2023, ReMax, arXiv:2310.10505 (greedy-response baseline)",
        {"adv_estimator": "remax", "needs_greedy_baseline": True},
    ),
    "gspo": Preset(
        "Zheng et al. 2025, GSPO, arXiv:2507.18071 (sequence ratio, clip 3e-4 / 4e-4)",
        {
            "policy_loss": "gspo",
            "loss_agg_mode": "seq-mean-token-mean",
            "clip_ratio_low": 3e-4,
            "clip_ratio_high": 4e-4,
        },
    ),
    "cispo": Preset(
        "MiniMax 2025, MiniMax-M1 / CISPO, arXiv:2506.13585 (no lower IS bound; the paper "
        "does not publish eps_high, 0.28 is our default)",
        {"policy_loss": "cispo", "clip_ratio_low": 1.0, "clip_ratio_high": 0.28},
    ),
    "gpg": Preset(
        "Chu et al. 2025, GPG, arXiv:2504.02546 (no surrogate, no KL, alpha-corrected "
        "group baseline)",
        {"adv_estimator": "gpg", "policy_loss": "reinforce", "norm_adv_by_std": False},
    ),
    "lite_ppo": Preset(
        "Liu et al. 2025, Tricks or Traps? (Lite PPO), arXiv:2508.08221 (group mean, batch "
        "std, token-level loss)",
        {"batch_std_norm": True},
    ),
    "opo": Preset(
        "Hao et al. 2025, OPO, arXiv:2505.23585 (length-weighted optimal baseline, strictly "
        "on-policy: one update per batch). seq-mean-token-sum matches the baseline's "
        "derivation (sequence log-likelihood, no length normalization)",
        {"adv_estimator": "opo", "loss_agg_mode": "seq-mean-token-sum"},
    ),
    "grpo_passk": Preset(
        "Chen et al. 2025, Pass@k Training, arXiv:2508.10751 (analytic pass@k advantage)",
        {"adv_estimator": "grpo_passk", "pass_k": 4},
    ),
    "kl_cov": Preset(
        "Cui et al. 2025, The Entropy Mechanism of RL for Reasoning LMs (KL-Cov), arXiv:2505.22617",
        {"policy_loss": "kl_cov"},
    ),
}


def _in(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; valid: {sorted(valid)}")


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def validate(algo: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key if `algo` is not a consistent algorithm config.

    Names are checked against the registries themselves (ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES, AGGREGATIONS, KL_ESTIMATORS) and the estimator property sets.
    """
    expected = set(_defaults().keys())
    missing, unknown = expected - set(algo.keys()), set(algo.keys()) - expected
    _check(not missing, f"algorithm config is missing keys {sorted(missing)}")
    _check(not unknown, f"unknown algorithm keys {sorted(unknown)}; valid: {sorted(expected)}")
    _in("adv_estimator", algo.adv_estimator, advantages.ADVANTAGE_ESTIMATORS)
    _in("policy_loss", algo.policy_loss, losses.POLICY_LOSSES)
    _in("loss_agg_mode", algo.loss_agg_mode, aggregation.AGGREGATIONS)
    _in("kl_mode", algo.kl_mode, kl.KL_MODES)
    _in("kl_estimator", algo.kl_estimator, kl.KL_ESTIMATORS)
    _in("tis_mode", algo.tis_mode, losses.TIS_MODES)
    _check(
        0 <= algo.clip_ratio_low <= 1,
        f"clip_ratio_low must be in [0, 1], got {algo.clip_ratio_low}",
    )
    _check(algo.clip_ratio_high >= 0, f"clip_ratio_high must be >= 0, got {algo.clip_ratio_high}")
    _check(
        algo.clip_ratio_c is None or algo.clip_ratio_c > 1,
        f"clip_ratio_c must be None or > 1, got {algo.clip_ratio_c}",
    )
    _check(algo.adv_epsilon > 0, f"adv_epsilon must be > 0, got {algo.adv_epsilon}")
    for key in ("gamma", "lam", "lam_critic"):
        _check(0 <= algo[key] <= 1, f"{key} must be in [0, 1], got {algo[key]}")
    _check(
        algo.vapo_alpha is None or algo.vapo_alpha > 0,
        f"vapo_alpha must be None or > 0, got {algo.vapo_alpha}",
    )
    _check(algo.kl_coef >= 0, f"kl_coef must be >= 0, got {algo.kl_coef}")
    _check(
        algo.kl_target is None or algo.kl_target > 0,
        f"kl_target must be None or > 0, got {algo.kl_target}",
    )
    _check(algo.kl_horizon > 0, f"kl_horizon must be > 0, got {algo.kl_horizon}")
    _check(
        0 < algo.top_entropy_frac <= 1,
        f"top_entropy_frac must be in (0, 1], got {algo.top_entropy_frac}",
    )
    _check(
        algo.vf_clip is None or algo.vf_clip > 0, f"vf_clip must be None or > 0, got {algo.vf_clip}"
    )
    _check(algo.vf_coef >= 0, f"vf_coef must be >= 0, got {algo.vf_coef}")
    _check(algo.tis_cap > 0, f"tis_cap must be > 0, got {algo.tis_cap}")
    _check(
        algo.overlong_buffer_len >= 0,
        f"overlong_buffer_len must be >= 0, got {algo.overlong_buffer_len}",
    )
    _check(
        algo.overlong_penalty_factor >= 0,
        f"overlong_penalty_factor must be >= 0, got {algo.overlong_penalty_factor}",
    )
    _check(
        algo.max_response_len_norm is None or algo.max_response_len_norm > 0,
        f"max_response_len_norm must be None or > 0, got {algo.max_response_len_norm}",
    )
    _check(algo.pass_k >= 1, f"pass_k must be >= 1, got {algo.pass_k}")
    _check(0 < algo.kl_cov_ratio <= 1, f"kl_cov_ratio must be in (0, 1], got {algo.kl_cov_ratio}")
    _check(algo.kl_cov_coef >= 0, f"kl_cov_coef must be >= 0, got {algo.kl_cov_coef}")
    # Cross-key consistency: a knob that would be silently ignored is an error.
    needs_critic = algo.adv_estimator in advantages.CRITIC_ESTIMATORS
    _check(
        algo.use_critic == needs_critic,
        f"use_critic={algo.use_critic} but adv_estimator={algo.adv_estimator!r} "
        f"{'needs' if needs_critic else 'does not use'} a critic",
    )
    needs_greedy = algo.adv_estimator in advantages.BASELINE_ESTIMATORS
    _check(
        algo.needs_greedy_baseline == needs_greedy,
        f"needs_greedy_baseline={algo.needs_greedy_baseline} but adv_estimator="
        f"{algo.adv_estimator!r} {'needs' if needs_greedy else 'does not use'} it",
    )
    _check(
        algo.kl_mode != "reward" or algo.adv_estimator in advantages.TOKEN_REWARD_ESTIMATORS,
        f"kl_mode='reward' needs an estimator that takes token rewards "
        f"({sorted(advantages.TOKEN_REWARD_ESTIMATORS)}), got {algo.adv_estimator!r}",
    )
    _check(
        algo.vapo_alpha is None or algo.adv_estimator in advantages.CRITIC_ESTIMATORS,
        f"vapo_alpha is only used by {sorted(advantages.CRITIC_ESTIMATORS)}",
    )
    _check(
        not algo.batch_std_norm or (algo.adv_estimator == "grpo" and algo.norm_adv_by_std),
        "batch_std_norm needs adv_estimator='grpo' with norm_adv_by_std=True",
    )


def get(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """The preset `name` with `overrides` applied, validated and locked (no new keys).

    Raises ValueError for an unknown preset, an unknown override key, a value of the wrong
    type or an invalid/inconsistent value.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown algorithm {name!r}; valid: {sorted(PRESETS)}")
    cfg = _defaults()
    for source, values in (("preset", PRESETS[name].overrides), ("override", overrides)):
        for key, value in values.items():
            if key not in cfg:
                raise ValueError(f"unknown {source} key {key!r}; valid: {sorted(cfg.keys())}")
            try:
                cfg[key] = value
            except TypeError as e:
                raise ValueError(f"bad type for {key}={value!r}: {e}") from None
    validate(cfg)
    cfg.lock()
    return cfg
