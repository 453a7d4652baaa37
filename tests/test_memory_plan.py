"""experiments/benchmarks/memory_plan.py on a small config over 8 faked devices: per-device
bytes against numbers computed by hand from the shapes, and what the plan shows about the
train step (remat, microbatches and activations kept split over the devices)."""

import pathlib
import sys

import pytest

from lrmjax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mp():
    import importlib

    sys.path.insert(0, str(ROOT / "experiments" / "benchmarks"))
    try:
        return importlib.import_module("memory_plan")
    finally:
        sys.path.remove(str(ROOT / "experiments" / "benchmarks"))


def _cfg(**sets):
    """GRPO with KL on a 2-layer `tiny` (scanned, remat 'full'): 16 prompts x 2 responses of
    24 + 104 slots, the update in 4 microbatches of 8 rows, FSDP over the 8 devices."""
    c = config_lib.base_config("grpo")
    c.model.preset = "tiny"
    c.model.overrides.vocab_size = 512
    c.model.overrides.num_layers = 2
    c.model.scan_layers, c.model.remat = True, "full"
    c.sampling.n, c.sampling.max_prompt_len, c.sampling.max_new_tokens = 2, 24, 104
    c.train.batch_prompts, c.train.microbatches = 16, 4
    c.mesh.data, c.mesh.fsdp = 1, 8
    for key, value in sets.items():
        config_lib.set_by_path(c, key.replace("__", "."), repr(value))
    return c


def _plan(mp, programs=("sampler", "logprobs", "train"), **sets):
    cfg, model_cfg = mp.resolve_model(_cfg(**sets), "test.py")
    return cfg, model_cfg, mp.build_plan(cfg, model_cfg, programs, log=lambda _: None)


@pytest.fixture(scope="module")
def plan(mp):
    return _plan(mp)


def test_resident_bytes_match_the_shapes(plan):
    cfg, m, p = plan
    # By hand: every param has an 'embed' axis (128, split 8 ways over fsdp) except the q/k/v
    # biases ([heads, head_dim], replicated); fp32.
    biases = m.num_layers * (m.num_heads + 2 * m.num_kv_heads) * m.head_dim
    params = ((m.num_params - biases) / 8 + biases) * 4
    assert p.resident["params"] == params
    assert p.resident["ref_params"] == params                   # KL on: a reference copy
    # AdamW's two moments share the params' sharding; its step counters are a few scalars.
    assert 2 * params <= p.resident["opt_state"] <= 2 * params + 64
    assert p.resident["critic"] == 0
    # Sampler: 32 rows x (24 + 104) slots x layers x kv heads x head_dim, keys and values,
    # fp32, rows split over the 8 devices.
    rows, slots = 16 * 2, 24 + 104
    kv = rows * slots * m.num_layers * m.num_kv_heads * m.head_dim * 2 * 4 / 8
    assert p.kv_cache == kv


def test_programs_are_consistent(plan):
    cfg, m, p = plan
    assert set(p.programs) == {"sampler", "logprobs", "train"}
    for name, prog in p.programs.items():
        assert prog.temporaries > 0 and prog.extra > 0, name
    # Arguments: the params and the rows' int32 tokens and bool mask ([32, 128], over 8).
    assert p.programs["logprobs"].arguments == p.resident["params"] + 4 * 128 * 5
    train = p.programs["train"]
    # The state (params, moments, three scalars) and the minibatch (less the arrays this
    # algorithm never reads, which XLA drops).
    state = p.resident["params"] + p.resident["opt_state"] + 12
    assert state + 4 * 128 * 5 < train.arguments <= state + _batch_bytes(cfg)
    # The state is donated: its buffers are reused for the new state.
    assert train.aliased >= p.resident["params"] + p.resident["opt_state"]
    phases = p.phases()
    assert set(phases) == {"sample", "prepare", "update"}
    assert phases["update"] == p.resident_total + train.extra


def _batch_bytes(cfg):
    """The train step's minibatch per device: int32 tokens, bool mask, six fp32 [rows, R]
    arrays (loss mask, sampler/old/ref log-probs, advantages, returns), rows over 8."""
    rows = cfg.train.batch_prompts * cfg.sampling.n // cfg.train.minibatches // 8
    L, R = cfg.sampling.max_prompt_len + cfg.sampling.max_new_tokens, cfg.sampling.max_new_tokens
    return rows * (L * 4 + L + 6 * R * 4)


def test_fsdp_divides_the_state(mp):
    from lrmjax import parallel

    per_device = {}
    for data, fsdp in ((8, 1), (1, 8)):
        cfg, model_cfg = mp.resolve_model(_cfg(mesh__data=data, mesh__fsdp=fsdp), "test.py")
        mesh = parallel.make_mesh({"data": data, "fsdp": fsdp, "tensor": 1})
        params, state, _ = mp.state_shapes(cfg, model_cfg, mesh)
        per_device[fsdp] = (mp.tree_bytes(params), mp.tree_bytes(state.opt_state))
    for i in range(2):
        assert 7.5 < per_device[1][i] / per_device[8][i] <= 8


def test_report_says_what_fits_and_the_caveat(mp, plan):
    cfg, model_cfg, p = plan
    text = mp.report(p, cfg, model_cfg, "test.py")
    assert "| the step |" in text and "fits" in text
    assert "approximates an accelerator's" in text
    # A device too small for this step gets advice; one large enough gets none.
    assert mp.advice(p, cfg, model_cfg, capacity_gib=p.resident_total / 2**30) != ""
    assert mp.advice(p, cfg, model_cfg, capacity_gib=1000) == ""


def test_advice_scales_the_largest_phase(mp):
    # Math-DAPO-7B-like numbers on 8 devices: 10 GiB of state, a sampler needing 128 GiB
    # more. More devices divide both (2x: 69 of the 72 usable GiB of an H100); a quarter of
    # the rows divides only the sampler's part (32 GiB + 10 GiB).
    G = 2**30
    cfg = _cfg(train__batch_prompts=256, sampling__n=16)
    program = lambda extra: mp.Program(0.0, 0, 0, extra, 0, extra)  # noqa: E731
    shapes = {"mesh": {"data": 1, "fsdp": 8, "tensor": 1}, "devices": 8, "rows": 4096,
              "minibatch": 256}
    plan = mp.Plan({"params": 10 * G}, {"sampler": program(128 * G),
                                         "logprobs": program(40 * G),
                                         "train": program(50 * G)}, 0, shapes)
    model_cfg = config_lib.model_config(cfg, 512)
    assert mp.advice(plan, cfg, model_cfg, 80) == (
        "2x the devices (16, mesh.fsdp=16) or train.batch_prompts=64 (1/4 of the rows)")
    assert mp.advice(plan, cfg, model_cfg, 160) == ""
    # The update largest: more microbatches (or remat, when off).
    plan.programs["sampler"] = program(10 * G)
    assert mp.advice(plan, cfg, model_cfg, 40).endswith("train.microbatches=8")
    model_cfg = config_lib.model_config(_cfg(model__remat="none"), 512)
    assert mp.advice(plan, cfg, model_cfg, 40).endswith("model.remat=full")
    # The log-prob pass largest: more slices.
    plan.programs["logprobs"] = program(100 * G)
    assert mp.advice(plan, cfg, model_cfg, 80).endswith("train.logprob_microbatches=2")


def test_remat_full_lowers_the_train_step_temporaries(mp, plan):
    _, _, none = _plan(mp, ("train",), model__remat="none")
    assert plan[2].programs["train"].temporaries < 0.6 * none.programs["train"].temporaries


def test_microbatches_and_activations_stay_split_over_the_devices(mp, plan):
    # 32 rows in 4 microbatches under FSDP (params split over 'embed') cost about what one
    # microbatch of 8 rows costs on a data mesh (plus the gradient accumulator): each
    # microbatch stays spread over the 8 devices, and its activations stay split over the
    # batch rather than over 'embed' as the params are.
    _, _, data = _plan(mp, ("train",), train__batch_prompts=4, train__microbatches=1,
                       mesh__data=8, mesh__fsdp=1)
    assert plan[2].programs["train"].temporaries < 1.3 * data.programs["train"].temporaries


def test_logprob_slices_lower_the_log_prob_pass_temporaries(mp, plan):
    _, _, sliced = _plan(mp, ("logprobs",), train__logprob_microbatches=4)
    temps = sliced.programs["logprobs"].temporaries
    assert temps < 0.5 * plan[2].programs["logprobs"].temporaries


def test_resolve_model_maps_the_real_configs_to_presets(mp):
    for name, preset in mp.CHECKPOINT_PRESETS.items():
        path = str(ROOT / "configs" / f"{name}.py")
        cfg, model_cfg = mp.resolve_model(mp.load_config(path, []), path)
        assert cfg.model.preset == preset and model_cfg.name == preset
        assert model_cfg.remat == cfg.model.remat and str(model_cfg.dtype) == "bfloat16"
    with pytest.raises(ValueError, match="--preset"):
        mp.resolve_model(_cfg(model__preset=""), "nowhere.py")
    with pytest.raises(ValueError, match="Unknown config key"):
        mp.load_config(str(ROOT / "configs" / "arith_grpo.py"), ["model.lora.rnak=8"])
    cfg = mp.load_config(str(ROOT / "configs" / "arith_grpo.py"), ["model.lora.rank=8"])
    assert cfg.model.lora.rank == 8


def test_lora_plan_holds_the_adapters_state_and_a_bf16_base(mp, plan):
    cfg, m, full = plan
    _, lm, p = _plan(mp, model__lora__rank=4, model__lora__base_dtype="bfloat16")
    # By hand: rank-4 A [in, 4] and B [4, out] on q, k, v, o, gate, up, down of every layer.
    h, q, kv, f = m.hidden_size, m.num_heads * m.head_dim, m.num_kv_heads * m.head_dim, m.mlp_dim
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + f) + (f + h)
    assert p.shapes["trained"] == m.num_layers * 4 * per_layer
    assert p.shapes["params"] == full.shapes["params"]
    # The base in bf16 (half of the fp32 params per device) plus fp32 adapters; the reference
    # is the base itself (KL is on: no copy); AdamW's moments only for the adapters.
    adapters = p.resident["params"] - full.resident["params"] // 2
    assert 0 < adapters <= p.shapes["trained"] * 4
    assert p.resident["ref_params"] == 0 and full.resident["ref_params"] > 0
    assert 2 * adapters <= p.resident["opt_state"] <= 2 * adapters + 64
    assert set(p.programs) == {"sampler", "logprobs", "train"}
    assert p.phases()["update"] < full.phases()["update"]
    text = mp.report(p, *_plan_cfgs(mp, model__lora__rank=4, model__lora__base_dtype="bfloat16"),
                     "test.py")
    assert f"{p.shapes['trained']:,} adapter params trained" in text and "bfloat16" in text


def _plan_cfgs(mp, **sets):
    return mp.resolve_model(_cfg(**sets), "test.py")
