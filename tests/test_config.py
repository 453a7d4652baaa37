"""lrmjax.config: defaults, validation errors that name the bad key, model_config."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import pytest

from lrmjax import config as config_lib
from lrmjax.rl import algorithms


def _set_untyped(cfg: ml_collections.ConfigDict, path: str, value) -> None:
    """Sets `group[.subgroup].key` to a value of any type (a ConfigDict refuses a type change
    on assignment, but a config file can still build a group with a wrong-typed value)."""
    *groups, key = path.split(".")
    parent = cfg
    for name in groups[:-1]:
        parent = parent[name]
    items = dict(parent[groups[-1]].items())
    items[key] = value
    parent[groups[-1]] = ml_collections.ConfigDict(items)


@pytest.mark.parametrize(
    "algorithm",
    sorted(algorithms.PRESETS))
def test_every_default_validates(algorithm):
    cfg = config_lib.base_config(algorithm)
    assert cfg.algorithm == algorithm
    config_lib.validate(cfg)
    config_lib.validate(cfg, 8)
    config_lib.validate(cfg, 1)


def test_validate_does_not_mutate():
    cfg = config_lib.base_config("grpo")
    before = cfg.to_dict()
    config_lib.validate(cfg, 8)
    assert cfg.to_dict() == before


def test_unknown_top_level_key():
    cfg = config_lib.base_config()
    cfg.learning_rate = 1e-3
    with pytest.raises(ValueError, match=r"'learning_rate'"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("path", ["train.batch_size", "sampling.temprature", "optim.lrr"])
def test_unknown_nested_key_names_full_path(path):
    cfg = config_lib.base_config()
    group, key = path.split(".")
    cfg[group][key] = 1
    with pytest.raises(ValueError, match=rf"Unknown config key '{path}'"):
        config_lib.validate(cfg)


def test_unknown_key_in_rl_group():
    cfg = config_lib.base_config()
    _set_untyped(cfg, "rl.kl_coeff", 0.1)
    with pytest.raises(ValueError, match=r"'rl\.kl_coeff'"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("path, value", [
    ("train.batch_prompts", "16"),    # string for an int
    ("train.steps", 10.0),            # float for an int
    ("train.progress", 1),            # int for a bool
    ("sampling.temperature", "hot"),  # string for a float
    ("model.preset", 3),              # int for a string
    ("reward.sandbox.allow_unisolated", 1),      # int for a bool
    ("reward.sandbox.allow_unisolated", "yes"),  # string for a bool
])
def test_wrong_type_names_key(path, value):
    cfg = config_lib.base_config()
    _set_untyped(cfg, path, value)
    with pytest.raises(ValueError, match=rf"'{path}' must be"):
        config_lib.validate(cfg)


def test_sandbox_allow_unisolated_defaults_off_and_is_set_from_the_command_line():
    cfg = config_lib.base_config()
    assert cfg.reward.sandbox.allow_unisolated is False
    config_lib.set_by_path(cfg, "reward.sandbox.allow_unisolated", "True")
    assert cfg.reward.sandbox.allow_unisolated is True
    config_lib.validate(cfg)


def test_int_is_accepted_for_float():
    cfg = config_lib.base_config()
    _set_untyped(cfg, "optim.lr", 1)
    config_lib.validate(cfg, 8)


def test_scalar_for_group_is_rejected():
    base = config_lib.base_config()
    cfg = ml_collections.ConfigDict({**dict(base.items()), "eval": 3})
    with pytest.raises(ValueError, match=r"'eval' must be a group"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("path", [
    "sampling.n", "sampling.max_new_tokens", "sampling.max_prompt_len", "train.batch_prompts",
    "train.ppo_epochs", "train.minibatches", "train.microbatches", "sft.batch_size",
    "eval.batch_size"])
@pytest.mark.parametrize("value", [0, -2])
def test_non_positive_sizes(path, value):
    cfg = config_lib.base_config()
    group, key = path.split(".")
    cfg[group][key] = value
    with pytest.raises(ValueError, match=rf"'{path}' must be positive"):
        config_lib.validate(cfg)


def test_batch_not_divisible_by_minibatches_times_microbatches():
    cfg = config_lib.base_config()
    cfg.train.batch_prompts, cfg.sampling.n = 3, 2   # 6 responses
    cfg.train.minibatches, cfg.train.microbatches = 2, 3
    config_lib.validate(cfg)                         # 6 % 6 == 0
    cfg.train.microbatches = 2                       # 6 % 4 != 0
    with pytest.raises(ValueError, match=r"train\.minibatches x train\.microbatches = 4"):
        config_lib.validate(cfg)


def test_batch_not_divisible_by_mesh_batch_shards():
    cfg = config_lib.base_config()
    cfg.train.batch_prompts, cfg.sampling.n = 2, 2   # 4 responses per update
    config_lib.validate(cfg)                         # no mesh check without a device count
    config_lib.validate(cfg, 4)                      # data=4: 4 % 4 == 0
    with pytest.raises(ValueError, match=r"8 batch shards.*'train\.batch_prompts'"):
        config_lib.validate(cfg, 8)                  # data=8: 4 % 8 != 0
    # Data x fsdp shard the batch; tensor does not.
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    config_lib.validate(cfg, 8)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 8, 1
    with pytest.raises(ValueError, match=r"8 batch shards"):
        config_lib.validate(cfg, 8)


def test_logprob_slices_must_divide_over_mesh():
    cfg = config_lib.base_config()
    cfg.train.batch_prompts, cfg.sampling.n = 4, 4   # 16 responses
    cfg.train.logprob_microbatches = 2               # slices of 8: fine on 8 devices
    config_lib.validate(cfg, 8)
    cfg.train.logprob_microbatches = 4               # slices of 4: not on 8 shards
    with pytest.raises(ValueError, match=r"'train\.logprob_microbatches' = 4"):
        config_lib.validate(cfg, 8)
    config_lib.validate(cfg, 4)


def test_microbatch_must_divide_over_mesh():
    cfg = config_lib.base_config()
    cfg.train.batch_prompts, cfg.sampling.n = 4, 4   # 16 responses
    cfg.train.minibatches = 2                        # microbatch of 8: fine on 8 devices
    config_lib.validate(cfg, 8)
    cfg.train.microbatches = 2                       # microbatch of 4: not on 8 shards
    with pytest.raises(ValueError, match=r"microbatch of 4 responses"):
        config_lib.validate(cfg, 8)


def test_bad_mesh_shape_is_an_error():
    cfg = config_lib.base_config()
    cfg.mesh.data = 3
    with pytest.raises(ValueError, match="mesh shape"):
        config_lib.validate(cfg, 8)


def test_group_estimator_needs_two_samples():
    cfg = config_lib.base_config("grpo")
    cfg.sampling.n = 1
    with pytest.raises(ValueError, match=r"'sampling\.n' = 1.*'grpo'"):
        config_lib.validate(cfg)


def test_batch_level_estimator_allows_one_sample():
    cfg = config_lib.base_config("reinforce_pp")
    cfg.sampling.n = 1
    config_lib.validate(cfg, 8)


def test_unknown_model_preset():
    cfg = config_lib.base_config()
    cfg.model.preset = "gpt-17"
    with pytest.raises(ValueError, match=r"'model\.preset' 'gpt-17'"):
        config_lib.validate(cfg)
    cfg.model.hf_path = "/models/some-checkpoint"  # an HF checkpoint brings its own config
    config_lib.validate(cfg)


@pytest.mark.parametrize("key", ["dtype", "param_dtype"])
def test_bad_dtype(key):
    cfg = config_lib.base_config()
    cfg.model[key] = "float64"
    with pytest.raises(ValueError, match=rf"'model\.{key}' must be one of"):
        config_lib.validate(cfg)
    cfg.model[key] = "bfloat16"
    config_lib.validate(cfg)


def test_unknown_model_override_field():
    cfg = config_lib.base_config()
    cfg.model.overrides.num_layrs = 2
    with pytest.raises(ValueError, match=r"\['num_layrs'\] in config 'model\.overrides'"):
        config_lib.validate(cfg)


@pytest.mark.parametrize("path, value", [
    ("tokenizer.kind", "bpe"), ("data.source", "csv"), ("data.curriculum", "random"),
    ("optim.schedule", "linear"), ("model.remat", "everything")])
def test_bad_choice_names_key(path, value):
    cfg = config_lib.base_config()
    group, key = path.split(".")
    cfg[group][key] = value
    with pytest.raises(ValueError, match=rf"'{path}'"):
        config_lib.validate(cfg)


def test_overlong_buffer_must_fit_response_budget():
    cfg = config_lib.base_config("grpo")
    cfg.data.source = "math_jsonl"                  # answers of unknown length
    cfg.data.path = "train.jsonl"
    cfg.sampling.max_new_tokens = 16
    cfg.rl.overlong_buffer_len = 16                 # the boundary is allowed
    config_lib.validate(cfg)
    cfg.rl.overlong_buffer_len = 17
    with pytest.raises(ValueError, match=r"'rl\.overlong_buffer_len' = 17 exceeds"):
        config_lib.validate(cfg)


def test_overlong_buffer_must_spare_the_longest_answer():
    # 3-digit addition: the longest sum, 1998, is 4 tokens and EOS a 5th, so the penalty may
    # start at 6 tokens at the earliest: max_new_tokens - overlong_buffer_len >= 5.
    cfg = config_lib.base_config("dapo")
    cfg.data.task_kwargs.digits = 3
    cfg.sampling.max_new_tokens = 8
    cfg.rl.overlong_buffer_len = 3                  # the boundary is allowed
    config_lib.validate(cfg)
    cfg.rl.overlong_buffer_len = 4
    with pytest.raises(ValueError, match=r"'rl\.overlong_buffer_len' = 4 with "
                       r"'sampling\.max_new_tokens' = 8 penalizes responses of 5 tokens .*"
                       r"'data\.task' \('arithmetic'\) has answers of up to 4 tokens \+ EOS"):
        config_lib.validate(cfg)
    cfg.rl.overlong_buffer_len = 0                  # no penalty, nothing to spare
    config_lib.validate(cfg)
    # The shipped demo budget: 6 tokens leave no room for a ramp after a 4-digit sum + EOS.
    cfg.sampling.max_new_tokens, cfg.rl.overlong_buffer_len = 6, 2
    with pytest.raises(ValueError, match="'rl.overlong_buffer_len' = 2 with"):
        config_lib.validate(cfg)
    cfg.tokenizer.kind, cfg.tokenizer.path = "hf", "/tokenizer"  # tokens per answer unknown
    config_lib.validate(cfg)


def test_overlong_buffer_spares_the_longest_answer_of_a_mixture():
    c = _mixture_config({"add": {"task": "arithmetic", "kwargs": {"digits": 2}},   # 198: 3
                         "cd": {"task": "countdown", "kwargs": {"template": "short",
                                                                 "num_numbers": 3}}})  # 14
    c.rl.overlong_buffer_len = 4
    c.sampling.max_new_tokens = 19
    config_lib.validate(c)
    c.sampling.max_new_tokens = 18
    with pytest.raises(ValueError, match=r"'data\.mixture\.cd' \('countdown'\) has answers "
                       r"of up to 14 tokens \+ EOS = 15"):
        config_lib.validate(c)
    assert config_lib.longest_answer(c) == (14, "the task of config 'data.mixture.cd' "
                                                "('countdown')")


def test_dapo_validates_once_buffer_fits():
    cfg = config_lib.base_config("dapo")
    cfg.sampling.max_new_tokens = 64
    cfg.rl.overlong_buffer_len = 16
    config_lib.validate(cfg, 8)


@pytest.mark.parametrize("algorithm, key, value, fragment", [
    ("grpo", "adv_estimator", "gae", "use_critic=False"),
    ("ppo", "use_critic", False, "use_critic=False"),
    ("grpo", "clip_ratio_low", 1.5, "clip_ratio_low"),
    ("grpo", "kl_mode", "reward", "kl_mode='reward'"),
    ("grpo", "loss_agg_mode", "mean", "loss_agg_mode"),
])
def test_inconsistent_algorithm_override_names_rl(algorithm, key, value, fragment):
    cfg = config_lib.base_config(algorithm)
    cfg.rl[key] = value
    with pytest.raises(ValueError, match=r"config 'rl' \(algorithm '" + algorithm + "'\\)") as e:
        config_lib.validate(cfg)
    assert fragment in str(e.value)


def test_model_config_fills_vocab_and_overrides():
    cfg = config_lib.base_config()
    cfg.model.overrides.num_layers = 1
    cfg.model.overrides.hidden_size = 32
    mc = config_lib.model_config(cfg, 77)
    assert mc.vocab_size == 77                   # -1 means "the tokenizer's vocabulary"
    assert mc.num_layers == 1 and mc.hidden_size == 32
    assert mc.num_heads == 4                     # untouched fields come from the 'tiny' preset
    assert mc.dtype == jnp.float32 and mc.param_dtype == jnp.float32
    cfg.model.overrides.vocab_size = 40
    cfg.model.dtype = "bfloat16"
    cfg.model.remat = "save_qkv_proj"
    mc = config_lib.model_config(cfg, 77)
    assert mc.vocab_size == 40                   # an explicit vocab wins
    assert mc.dtype == jnp.bfloat16 and mc.remat == "save_qkv_proj"
    assert cfg.model.overrides.vocab_size == 40  # the config itself is not changed


def test_model_config_unknown_preset_raises():
    cfg = config_lib.base_config()
    cfg.model.preset = "gpt-17"
    with pytest.raises(ValueError, match="gpt-17"):
        config_lib.model_config(cfg, 10)


def test_set_by_path_parses_like_the_command_line():
    cfg = config_lib.base_config("grpo")
    config_lib.set_by_path(cfg, "optim.lr", "5e-4")
    config_lib.set_by_path(cfg, "train.steps", "300")
    config_lib.set_by_path(cfg, "optim.grad_clip", "2")        # an int for a float key
    config_lib.set_by_path(cfg, "data.task", "countdown")      # a bare word stays a string
    config_lib.set_by_path(cfg, "rl.dynamic_sampling", "True")
    assert (cfg.optim.lr, cfg.train.steps, cfg.data.task) == (5e-4, 300, "countdown")
    assert cfg.optim.grad_clip == 2.0 and isinstance(cfg.optim.grad_clip, float)
    assert cfg.rl.dynamic_sampling is True
    config_lib.validate(cfg)
    with pytest.raises(ValueError, match="'optim.learning_rate'"):
        config_lib.set_by_path(cfg, "optim.learning_rate", "1")
    with pytest.raises(ValueError, match="'optimizer'"):
        config_lib.set_by_path(cfg, "optimizer.lr", "1")


@pytest.mark.parametrize("path", ["train.batch_prompts", "sft.batch_size", "sft.eval_size",
                                  "eval.size", "eval.batch_size"])
def test_batch_sizes_must_split_over_hosts(path):
    cfg = config_lib.base_config("grpo")
    group, key = path.split(".")
    cfg[group][key] = 9
    with pytest.raises(ValueError, match=f"'{path}' = 9 does not split over the 2 hosts"):
        config_lib.validate(cfg, num_processes=2)
    config_lib.validate(cfg, num_processes=1)


def _mixture_config(mixture):
    c = config_lib.base_config("grpo")
    c.data.source = "task_mixture"
    c.data.mixture = mixture
    return c


def test_task_mixture_validates_and_lists_its_entries():
    c = _mixture_config({"add": {"task": "arithmetic", "weight": 3, "kwargs": {"digits": 2}},
                         "countdown": {}})
    config_lib.validate(c)
    assert config_lib.mixture_components(c.data.mixture) == [
        ("add", "arithmetic", 3.0, {"digits": 2}), ("countdown", "countdown", 1.0, {})]


@pytest.mark.parametrize("mixture, match", [
    ({}, "needs 'data.mixture'"),
    ({"add": {"task": "algebra"}}, r"'data.mixture.add': unknown task 'algebra'"),
    ({"add": {"task": "arithmetic", "weight": 0}}, r"'data.mixture.add.weight' must be a pos"),
    ({"add": {"task": "arithmetic", "share": 1}}, r"'data.mixture.add' has unknown key"),
    ({"add": 2.0}, r"'data.mixture.add' must be a group"),
])
def test_bad_task_mixture_names_the_entry(mixture, match):
    with pytest.raises(ValueError, match=match):
        config_lib.validate(_mixture_config(mixture))


def _eval_sets_config(eval_sets, source="gsm8k_jsonl", eval_path=""):
    c = config_lib.base_config("grpo")
    c.data.source, c.data.path, c.data.eval_path = source, "train.jsonl", eval_path
    c.data.eval_sets = eval_sets
    return c


def test_eval_sets_validate_and_list_their_entries():
    c = _eval_sets_config({"math500": {"source": "math_jsonl", "path": "m.jsonl"},
                           "gsm8k": {"path": "g.jsonl"}})
    config_lib.validate(c)
    assert config_lib.eval_set_entries(c.data) == [
        ("gsm8k", "gsm8k_jsonl", "g.jsonl"), ("math500", "math_jsonl", "m.jsonl")]


@pytest.mark.parametrize("kwargs, match", [
    (dict(eval_sets={"g": {"path": "g.jsonl"}}, source="task"), "needs a JSONL 'data.source'"),
    (dict(eval_sets={"g": {"path": "g.jsonl"}}, eval_path="t.jsonl"), "exclude each other"),
    (dict(eval_sets={"g": {}}), r"'data.eval_sets.g' needs a 'path'"),
    (dict(eval_sets={"g": {"path": "g.jsonl", "source": "task"}}),
     r"'data.eval_sets.g.source' must be one of"),
    (dict(eval_sets={"g": {"path": "g.jsonl", "size": 5}}), r"'data.eval_sets.g' has unknown"),
])
def test_bad_eval_sets_name_the_entry(kwargs, match):
    with pytest.raises(ValueError, match=match):
        config_lib.validate(_eval_sets_config(**kwargs))


# ---------------------------------------------------------------------------------------------
# Ranges of every number, the model's length, reward weights, model override types.


def test_every_numeric_default_has_a_range_and_is_in_it():
    from lrmjax import config_validation as cv

    for algorithm in ("grpo", "ppo"):
        paths = dict(cv.numeric_keys(config_lib.base_config(algorithm)))
        assert set(paths) == set(cv.RANGES)   # no key without a range, no stale entry
        for path, value in paths.items():
            assert value in cv.RANGES[path], path


def _outside(rng):
    """A value just below `rng` (every range has a lower bound), and not a sentinel."""
    bad = rng.low if rng.low_open else rng.low - 1
    while bad in rng.also:
        bad -= 1
    return bad


def test_every_number_outside_its_range_is_refused_naming_the_key():
    from lrmjax import config_validation as cv

    for path, rng in cv.RANGES.items():
        cfg = config_lib.base_config()
        group, key = path.rsplit(".", 1) if "." in path else ("", path)
        node = cfg[group] if group else cfg
        bad = _outside(rng)
        node[key] = type(node[key])(bad)
        with pytest.raises(ValueError, match=rf"config '{path}' must be"):
            config_lib.validate(cfg)


@pytest.mark.parametrize("path, value", [
    ("train.checkpoint_every", 0), ("train.rollout_log_every", 0), ("train.keep_checkpoints", 0),
    ("sft.eval_every", 0), ("optim.lr", -1e-4), ("optim.lr", float("nan")),
    ("optim.lr", float("inf")), ("sampling.top_p", 0.0), ("eval.temperature", -1.0),
    ("optim.b2", 1.0), ("mesh.data", 0), ("mesh.fsdp", -3), ("seed", -1),
    ("reward.timeout_s", 0.0)])
def test_bad_intervals_rates_and_probabilities(path, value):
    cfg = config_lib.base_config()
    group, key = path.rsplit(".", 1) if "." in path else ("", path)
    (cfg[group] if group else cfg)[key] = value
    with pytest.raises(ValueError, match=rf"config '{path}' must be"):
        config_lib.validate(cfg)


def test_sentinels_and_boundaries_are_valid():
    cfg = config_lib.base_config()
    cfg.mesh.data, cfg.mesh.num_processes, cfg.mesh.process_id = -1, -1, -1
    cfg.sampling.temperature, cfg.optim.grad_clip, cfg.eval.every, cfg.sft.steps = 0.0, 0.0, 0, 0
    cfg.sampling.top_p, cfg.optim.min_lr_ratio, cfg.train.max_refill_rounds = 1.0, 0.0, 0
    config_lib.validate(cfg)


def test_band_low_above_band_high():
    cfg = config_lib.base_config()
    cfg.data.band_low, cfg.data.band_high = 0.8, 0.2
    with pytest.raises(ValueError, match=r"'data\.band_low' = 0\.8 exceeds 'data\.band_high'"):
        config_lib.validate(cfg)


def test_response_budget_must_fit_the_model_length():
    cfg = config_lib.base_config()                 # tiny preset: max_seq_len 512
    cfg.sampling.max_prompt_len = 32
    cfg.sampling.max_new_tokens = 480              # 32 + 480 = 512: fits exactly
    config_lib.validate(cfg)
    cfg.sampling.max_new_tokens = 481
    with pytest.raises(ValueError, match=r"'sampling\.max_new_tokens' = 481 does not fit model "
                                         r"preset 'tiny'.*leaves 480 tokens"):
        config_lib.validate(cfg)
    cfg.sampling.max_new_tokens = 40
    cfg.model.overrides.max_seq_len = 64           # the overrides count
    with pytest.raises(ValueError, match=r"max_seq_len 64 .* leaves 32 tokens"):
        config_lib.validate(cfg)


def test_response_budget_of_a_checkpoint_uses_the_same_message():
    from lrmjax import config_validation as cv

    cfg = config_lib.base_config()
    cv.check_response_budget(48, cfg.sampling, "the checkpoint /m")   # 32 + 16 fits
    with pytest.raises(ValueError, match=r"'sampling\.max_new_tokens' = 16 does not fit the "
                                         r"checkpoint /m: max_seq_len 40"):
        cv.check_response_budget(40, cfg.sampling, "the checkpoint /m")


@pytest.mark.parametrize("fns, match", [
    ({"task": "abc"}, r"'reward\.fns\.task' must be a finite number"),
    ({"task": True}, r"'reward\.fns\.task' must be a finite number"),
    ({"task": float("nan")}, r"'reward\.fns\.task' must be a finite number"),
    ({"task": 1.0, "maths": 1.0}, r"'reward\.fns\.maths': unknown reward"),
    ({}, r"'reward\.fns' is empty"),
])
def test_bad_reward_weights_name_the_key(fns, match):
    cfg = config_lib.base_config()
    cfg.reward.fns = ml_collections.ConfigDict(fns)
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg)
    cfg.reward.fns = {"task": 1, "format": -0.5}   # ints and penalties are weights too
    config_lib.validate(cfg)


@pytest.mark.parametrize("overrides, match", [
    ({"num_layers": "2"}, r"'model\.overrides\.num_layers' must be int"),
    ({"rms_eps": "small"}, r"'model\.overrides\.rms_eps' must be float"),
    ({"qk_norm": 1}, r"'model\.overrides\.qk_norm' must be bool"),
    ({"dtype": "bfloat16"}, r"'model\.overrides\.dtype': set config 'model\.dtype' instead"),
    ({"num_kv_heads": 3}, r"'model\.overrides'.*num_heads=4 is not a multiple"),
    ({"hidden_size": 0}, r"'model\.overrides'.*hidden_size must be positive"),
])
def test_bad_model_overrides_name_the_key(overrides, match):
    cfg = config_lib.base_config()
    cfg.model.overrides = ml_collections.ConfigDict({"vocab_size": -1, **overrides})
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg)


def test_model_overrides_are_refused_with_a_checkpoint():
    cfg = config_lib.base_config()
    cfg.model.hf_path = "/models/qwen"
    config_lib.validate(cfg)                       # the default vocab_size=-1 is no override
    cfg.model.overrides.num_layers = 2
    with pytest.raises(ValueError, match=r"'model\.overrides' \{'num_layers': 2\} would be "
                                         "ignored"):
        config_lib.validate(cfg)


def test_unknown_task_is_refused_before_any_work():
    cfg = config_lib.base_config()
    cfg.data.task = "arithmetics"
    with pytest.raises(ValueError, match=r"'data\.task': unknown task 'arithmetics'"):
        config_lib.validate(cfg)


def test_task_kwargs_are_checked_by_building_the_task():
    cfg = config_lib.base_config()
    cfg.data.task_kwargs.digitz = 4
    with pytest.raises(ValueError, match=r"config 'data\.task_kwargs' \(task 'arithmetic'\): "
                                         r".*digitz"):
        config_lib.validate(cfg)
    mixed = _mixture_config({"add": {"task": "arithmetic", "kwargs": {"digits": 0}}})
    with pytest.raises(ValueError, match=r"config 'data\.mixture\.add' \(task 'arithmetic'\)"):
        config_lib.validate(mixed)


def test_tool_arithmetic_result_width_must_be_the_environments():
    cfg = config_lib.from_file("configs/calc_tool_grpo.py", "runlocal")
    config_lib.validate(cfg)
    assert cfg.env.kwargs.result_width == cfg.data.task_kwargs.result_width == 9
    cfg.env.kwargs.result_width = 0
    with pytest.raises(ValueError, match=r"config 'data\.task_kwargs' result_width = 9 but "
                                         r"'env\.kwargs' result_width = 0"):
        config_lib.validate(cfg)
    cfg.env.kwargs.result_width = 9
    cfg.sft.task_kwargs = {"result_width": 10}     # the warm start's demonstrations too
    with pytest.raises(ValueError, match=r"config 'sft\.task_kwargs' result_width = 10"):
        config_lib.validate(cfg)
    mixed = _mixture_config({"calc": {"task": "tool_arithmetic", "kwargs": {"result_width": 9}}})
    mixed.env.name = "tools"
    with pytest.raises(ValueError, match=r"config 'data\.mixture\.calc\.kwargs' result_width = 9 "
                                         r"but 'env\.kwargs' result_width = 0"):
        config_lib.validate(mixed)


def test_sft_task_kwargs_are_checked_over_the_data_task_kwargs():
    cfg = config_lib.base_config()
    cfg.data.task, cfg.data.task_kwargs = "tool_arithmetic", {"max_factors": 2}
    cfg.sft.task_kwargs = {"max_factors": 3, "three_factor_share": 0.75}
    config_lib.validate(cfg)                      # 3 over 2: the share applies
    cfg.sft.task_kwargs = {"three_factor_share": 0.75}
    with pytest.raises(ValueError, match=r"config 'sft\.task_kwargs' \(task 'tool_arithmetic'\)"
                                         r": .*applies only with max_factors=3"):
        config_lib.validate(cfg)                  # max_factors=2 from data.task_kwargs
    cfg = config_lib.from_file("configs/gsm8k_grpo_qwen2_5_1_5b.py", "runlocal")
    cfg.sft.task_kwargs = {"digits": 3}
    with pytest.raises(ValueError, match=r"'sft\.task_kwargs' needs data\.source 'task'"):
        config_lib.validate(cfg)


def test_sft_from_workdir_needs_a_warm_start():
    cfg = config_lib.base_config()
    cfg.sft.from_workdir = "/runs/a"
    with pytest.raises(ValueError, match=r"'sft\.from_workdir' needs a warm start"):
        config_lib.validate(cfg)                  # sft.steps 0
    cfg.sft.steps = 100
    config_lib.validate(cfg)


def test_jsonl_sources_are_the_dataset_registry_kinds():
    from lrmjax.config_validation import JSONL_SOURCES
    from lrmjax.data import datasets

    assert sorted(JSONL_SOURCES) == sorted(k for k in datasets.SOURCES if k.endswith("_jsonl"))
    c = _eval_sets_config({"stdin": {"source": "code_jsonl", "path": "s.jsonl"}},
                          source="code_jsonl")
    c.reward.fns = {"code": 1.0}
    config_lib.validate(c)
    assert config_lib.eval_set_entries(c.data) == [("stdin", "code_jsonl", "s.jsonl")]


@pytest.mark.parametrize("key, value, match", [
    ("rank", 129, r"'model\.lora\.rank' must be in \[0, 128\]"),
    ("rank", -1, r"'model\.lora\.rank' must be in \[0, 128\]"),
    ("alpha", 0.0, r"'model\.lora\.alpha' must be positive"),
    ("targets", ("q", "lm_head"), r"'model\.lora\.targets'.*unknown name\(s\) \['lm_head'\]"),
    ("targets", (), r"'model\.lora\.targets'.*empty"),
    ("targets", ("q", "v", "q"), r"'model\.lora\.targets'.*twice"),
    ("base_dtype", "int8", r"'model\.lora\.base_dtype' must be"),
    ("rank", 2.0, r"'model\.lora\.rank' must be int"),
])
def test_bad_lora_settings_name_the_key(key, value, match):
    cfg = config_lib.base_config()
    cfg.model.lora.rank = 8
    _set_untyped(cfg, f"model.lora.{key}", value)
    with pytest.raises(ValueError, match=match):
        config_lib.validate(cfg)


@pytest.mark.parametrize("key, value", [("merge_for_sampling", True),
                                        ("base_dtype", "bfloat16")])
def test_lora_only_switches_need_a_rank(key, value):
    cfg = config_lib.base_config()
    cfg.model.lora[key] = value
    with pytest.raises(ValueError, match=rf"'model\.lora\.{key}'.*'model\.lora\.rank' > 0"):
        config_lib.validate(cfg)
    cfg.model.lora.rank = 1
    config_lib.validate(cfg)


def test_lora_reaches_the_model_config_and_not_through_overrides():
    cfg = config_lib.base_config()
    cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.targets = 8, 16, ("q", "down")
    config_lib.validate(cfg)
    mc = config_lib.model_config(cfg, 77)
    assert (mc.lora_rank, mc.lora_alpha) == (8, 16.0)
    assert mc.lora_modules == {"q_proj", "down_proj"}
    cfg.model.overrides.lora_rank = 4
    with pytest.raises(ValueError, match=r"'model\.overrides\.lora_rank': set config "
                                         r"'model\.lora\.rank' instead"):
        config_lib.validate(cfg)


def test_lora_preset_is_rank_32_on_every_linear_layer_at_10x_the_lr():
    cfg = config_lib.base_config()
    cfg.optim.lr = 2e-6
    config_lib.use_lora(cfg)
    assert cfg.model.lora.rank == 32 and cfg.model.lora.alpha == 32.0
    assert set(cfg.model.lora.targets) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert cfg.optim.lr == pytest.approx(2e-5)
    config_lib.validate(cfg)
