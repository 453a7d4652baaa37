"""Tests for lrmjax.rl.algorithms presets and validation."""

import importlib.util
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from lrmjax.rl import advantages, aggregation, algorithms, kl, losses

ROOT = pathlib.Path(__file__).resolve().parents[1]

REQUIRED_KEYS = {
    "adv_estimator", "policy_loss", "loss_agg_mode", "clip_ratio_low", "clip_ratio_high",
    "clip_ratio_c", "norm_adv_by_std", "adv_epsilon", "batch_std_norm", "gamma", "lam",
    "lam_critic", "vapo_alpha", "kl_mode", "kl_estimator", "kl_coef", "kl_target", "kl_horizon",
    "entropy_coef", "top_entropy_frac", "use_critic", "vf_clip", "vf_coef", "tis_mode",
    "tis_cap", "dynamic_sampling", "overlong_filter", "overlong_buffer_len",
    "overlong_penalty_factor", "needs_greedy_baseline", "max_response_len_norm",
}  # fmt: skip
BRIEF_PRESETS = {
    "ppo", "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax",
    "gspo", "cispo", "gpg", "vapo", "lite_ppo", "opo", "grpo_passk",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(algorithms.PRESETS))
def test_preset_is_complete_and_valid(name):
    cfg = algorithms.get(name)
    assert isinstance(cfg, ml_collections.ConfigDict)
    assert REQUIRED_KEYS <= set(cfg.keys())
    assert cfg.adv_estimator in advantages.ADVANTAGE_ESTIMATORS
    assert cfg.policy_loss in losses.POLICY_LOSSES
    assert cfg.loss_agg_mode in aggregation.AGGREGATIONS
    assert cfg.kl_estimator in kl.KL_ESTIMATORS
    assert "arXiv:" in algorithms.PRESETS[name].paper
    with pytest.raises(AttributeError):  # locked: a typo cannot add a key
        cfg.kl_cof = 0.1


def test_required_presets_exist_and_estimator_sets_match_registry():
    assert BRIEF_PRESETS <= set(algorithms.PRESETS)
    for s in (advantages.CRITIC_ESTIMATORS, advantages.BASELINE_ESTIMATORS,
              advantages.TOKEN_REWARD_ESTIMATORS):  # fmt: skip
        assert s <= set(advantages.ADVANTAGE_ESTIMATORS)


def test_preset_specifics():
    assert (
        algorithms.get("dapo").clip_ratio_high == 0.28 and algorithms.get("dapo").dynamic_sampling
    )
    assert algorithms.get("vapo").vapo_alpha == 0.05 and algorithms.get("vapo").use_critic
    assert algorithms.get("dr_grpo").loss_agg_mode == "seq-mean-token-sum-norm"
    assert algorithms.get("remax").needs_greedy_baseline
    assert algorithms.get("lite_ppo").batch_std_norm
    assert algorithms.get("grpo").kl_mode == "loss"


@pytest.fixture(scope="module")
def table_script():
    """docs/algorithms_table.py, which renders README's and the docs' table from PRESETS."""
    spec = importlib.util.spec_from_file_location("algorithms_table", ROOT / "docs" /
                                                  "algorithms_table.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_algorithm_tables_are_generated_from_presets(table_script):
    table = table_script.markdown_table()
    for name in table_script.FILES:
        text = (ROOT / name).read_text()
        stale = table_script.render(text, table) != text
        assert not stale, (
            f"{name}'s algorithm table is not the one lrmjax.rl.algorithms.PRESETS gives; "
            f"regenerate it with `{table_script.COMMAND}`"
        )


def test_rendered_table_follows_the_presets(table_script, monkeypatch):
    assert all(f"| `{name}` |" in table_script.markdown_table() for name in algorithms.PRESETS)
    monkeypatch.setitem(algorithms.PRESETS, "grpo_copy", algorithms.PRESETS["grpo"])
    monkeypatch.delitem(algorithms.PRESETS, "kl_cov")
    table = table_script.markdown_table()
    assert "| `grpo_copy` |" in table and "| `kl_cov` |" not in table


def test_docs_describe_every_estimator_and_loss():
    text = (ROOT / "docs" / "algorithms.md").read_text()
    for name in [*advantages.ADVANTAGE_ESTIMATORS, *losses.POLICY_LOSSES]:
        assert f"`{name}`" in text, name


def test_overrides_and_errors():
    cfg = algorithms.get("grpo", kl_coef=0.0, clip_ratio_c=3.0, max_response_len_norm=512)
    assert cfg.kl_coef == 0.0 and cfg.clip_ratio_c == 3.0 and cfg.max_response_len_norm == 512
    with pytest.raises(ValueError, match="unknown algorithm 'grpoo'.*'dapo'"):
        algorithms.get("grpoo")
    with pytest.raises(ValueError, match="unknown override key 'kl_cof'.*kl_coef"):
        algorithms.get("grpo", kl_cof=0.1)
    with pytest.raises(ValueError, match="bad type for clip_ratio_low"):
        algorithms.get("grpo", clip_ratio_low="wide")
    bad = [
        ({"adv_estimator": "nope"}, "adv_estimator='nope' is not valid; valid: .*'grpo'"),
        ({"policy_loss": "nope"}, "policy_loss='nope' is not valid"),
        ({"loss_agg_mode": "mean"}, "loss_agg_mode='mean' is not valid"),
        ({"kl_estimator": "k4"}, "kl_estimator='k4'"),
        ({"kl_mode": "both"}, "kl_mode='both'"),
        ({"tis_mode": "seq"}, "tis_mode='seq'"),
        ({"clip_ratio_c": 0.5}, "clip_ratio_c must be None or > 1"),
        ({"top_entropy_frac": 0.0}, "top_entropy_frac"),
        ({"gamma": 1.5}, "gamma must be in"),
        ({"use_critic": True}, "use_critic=True but adv_estimator='grpo' does not use"),
        ({"kl_mode": "reward"}, "kl_mode='reward' needs an estimator"),
        ({"vapo_alpha": 0.05}, "vapo_alpha is only used by"),
        ({"needs_greedy_baseline": True}, "needs_greedy_baseline"),
    ]
    for overrides, match in bad:
        with pytest.raises(ValueError, match=match):
            algorithms.get("grpo", **overrides)
    with pytest.raises(ValueError, match="use_critic=False but adv_estimator='gae' needs"):
        algorithms.get("ppo", use_critic=False)


def test_validate_rejects_missing_and_extra_keys():
    cfg = algorithms.get("grpo").to_dict()
    del cfg["kl_coef"]
    with pytest.raises(ValueError, match="missing keys.*kl_coef"):
        algorithms.validate(ml_collections.ConfigDict(cfg))
    cfg = algorithms.get("grpo").to_dict() | {"extra": 1}
    with pytest.raises(ValueError, match="unknown algorithm keys.*extra"):
        algorithms.validate(ml_collections.ConfigDict(cfg))


@pytest.mark.parametrize("name", sorted(algorithms.PRESETS))
def test_preset_runs_end_to_end(name):
    """Each preset drives compute_advantages -> actor_loss (-> critic_loss) to finite grads."""
    algo = algorithms.get(name, pass_k=2)
    b, t, n = 8, 5, 4
    rng = np.random.default_rng(0)
    mask = (np.arange(t)[None] < rng.integers(1, t + 1, b)[:, None]).astype(np.float32)
    rewards = np.array([1, 0, 0, 1, 1, 1, 0, 1], np.float32)
    lp = (rng.normal(size=(b, t)) - 1).astype(np.float32)
    ref = lp + 0.1
    kw = {}
    if algo.use_critic:
        kw["values"] = rng.normal(size=(b, t)).astype(np.float32)
    if algo.needs_greedy_baseline:
        kw["baseline_rewards"] = np.full(b, 0.5, np.float32)
    if algo.kl_mode == "reward":
        kw["token_rewards"] = kl.kl_penalty_rewards(lp, ref, mask, algo.kl_coef, algo.kl_estimator)
    advantages.check_inputs(algo, rewards=rewards, response_mask=mask, group_size=n, **kw)
    adv, ret = advantages.compute_advantages(
        algo, rewards=rewards, response_mask=mask, group_size=n, **kw
    )
    assert np.abs(np.asarray(adv)).sum() > 0, "no learning signal"

    def f(x):
        return losses.actor_loss(
            algo, logprobs=x, old_logprobs=lp, advantages=adv, response_mask=mask,
            ref_logprobs=ref if algo.kl_mode == "loss" else None,
        )  # fmt: skip

    (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(lp + 0.05)
    assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(g)).sum() > 0
    assert {"pg_loss", "pg_clipfrac", "pg_clipfrac_lower", "ppo_kl", "ratio_mean",
            "ratio_max"} <= set(metrics)  # fmt: skip
    if algo.use_critic:
        v = kw["values"]
        closs, cmet = losses.critic_loss(
            algo, values=v + 0.3, old_values=v, returns=ret, response_mask=mask
        )
        assert np.isfinite(closs) and {"vf_loss", "vf_clipfrac", "vf_explained_var"} <= set(cmet)
