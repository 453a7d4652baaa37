"""lrmjax.train.inputs: prompts longer than sampling.max_prompt_len are dropped when the data
loads (train and held-out, procedural and JSONL), counted and logged, never raised mid-run."""

from __future__ import annotations

import json
import logging

import jax
import pytest
from train_helpers import small_config

from lrmjax import tokenizers as tok_lib
from lrmjax.data import datasets
from lrmjax.data.tasks import Example
from lrmjax.train import inputs

TOK = tok_lib.CharTokenizer()


def test_prompt_ids_count_the_template_and_bos():
    cfg = small_config()
    ex = Example(prompt="1+2=", answer="3")
    assert inputs.prompt_ids(cfg, TOK, ex) == TOK.encode("1+2=", add_bos=True)   # 5 tokens
    cfg.data.prompt_template = "Q: {prompt}"
    assert len(inputs.prompt_ids(cfg, TOK, ex)) == 8


def test_fitting_prompts_drops_long_ones_with_one_warning(caplog):
    cfg = small_config()
    cfg.sampling.max_prompt_len = 6
    examples = [Example(prompt=p, answer="0") for p in ("1+2=", "12+34=", "1+23=", "99+99=")]
    with caplog.at_level(logging.WARNING):
        kept, dropped = inputs.fitting_prompts(cfg, TOK, examples, "train")
    assert [ex.prompt for ex in kept] == ["1+2=", "1+23="] and dropped == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 2 of 4 train prompts" in warnings[0] and "'12+34='" in warnings[0]
    assert inputs.fitting_prompts(cfg, TOK, kept, "train") == (kept, 0)   # nothing to drop
    cfg.sampling.max_prompt_len = 4
    with pytest.raises(ValueError, match=r"every one of the 4 train prompts.*"
                                         r"'sampling\.max_prompt_len' = 4"):
        inputs.fitting_prompts(cfg, TOK, examples, "train")


def test_long_jsonl_rows_are_dropped_from_the_source(tmp_path):
    questions = [f"What is {a} plus {b}?" for a in range(1, 4) for b in range(1, 4)]
    questions[4] = "What is the sum of one and two, written in words?"
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": "#### 1"}) + "\n"
                            for q in questions))
    cfg = small_config()
    cfg.data.source, cfg.data.path = "gsm8k_jsonl", str(path)
    cfg.sampling.max_prompt_len = 24
    source = datasets.make_source("gsm8k_jsonl", path=str(path), data_dir=str(tmp_path / "t"))
    kept, dropped = inputs.fitting_prompts(cfg, TOK, source, "train")
    assert dropped == 1 and len(kept) == 8 and isinstance(kept, datasets.SubsetSource)
    assert [kept[i].metadata["row_index"] for i in range(8)] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert kept.name.endswith(":max_prompt_len=24")
    batch = next(iter(datasets.PromptDataset(kept, 8, seed=0)))
    assert sorted(ex.metadata["row_index"] for ex in batch) == [0, 1, 2, 3, 5, 6, 7, 8]


def test_held_out_set_is_cut_to_split_over_hosts(monkeypatch):
    cfg = small_config()
    cfg.sampling.max_prompt_len = 6
    held_out = [Example(prompt=p, answer="0") for p in ["1+2=", "12+34="] * 4]
    train = [Example(prompt="1+1=", answer="2")] * 4
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    _, kept, stats = inputs._fit_data(cfg, TOK, train, held_out)
    assert len(kept) == 3      # 4 fit, cut to a multiple of the 3 hosts
    assert stats["data/eval_long_prompts_dropped"] == 4 and stats["data/eval_prompts"] == 3


def test_build_inputs_drops_long_prompts_so_encode_never_raises(tmp_path):
    cfg = small_config()
    cfg.data.train_size, cfg.eval.size = 200, 32
    cfg.sampling.max_prompt_len = 6       # BOS + "12+34=" is 7 tokens: those are dropped
    inp = inputs.build_inputs(cfg, str(tmp_path))
    stats = inp.data_stats
    assert stats["data/train_long_prompts_dropped"] > 0
    assert stats["data/eval_long_prompts_dropped"] > 0
    assert stats["data/eval_prompts"] == len(inp.eval_examples) < cfg.eval.size
    inp.encode(inp.eval_examples)         # raised before: prompt of 7 tokens exceeds 6
    inp.encode([inp.train_source[i] for i in range(len(inp.train_source))])
    assert len(inp.train_source) == stats["data/train_prompts"]


def test_response_budget_of_a_checkpoint_is_checked_before_its_weights_load(tmp_path,
                                                                            monkeypatch):
    cfg = small_config()
    cfg.model.hf_path, cfg.tokenizer.kind = "tiny-random:qwen2", "hf"   # max_seq_len 512
    cfg.sampling.max_prompt_len, cfg.sampling.max_new_tokens = 32, 481
    monkeypatch.setattr(inputs, "_model", lambda *a: pytest.fail("loaded the weights"))
    with pytest.raises(ValueError, match=r"'sampling\.max_new_tokens' = 481 does not fit the "
                                         r"checkpoint .*tiny_hf_qwen2: max_seq_len 512 - "
                                         r"'sampling\.max_prompt_len' 32 leaves 480 tokens"):
        inputs.build_inputs(cfg, str(tmp_path))


def test_a_checkpoint_loads_with_the_configured_remat_and_scan_layers(tmp_path):
    from lrmjax import parallel
    from lrmjax.models import tiny_hf

    cfg = small_config()
    cfg.model.hf_path, cfg.tokenizer.kind = "tiny-random:qwen2", "hf"
    cfg.model.scan_layers, cfg.model.remat = True, "save_qkv_proj"
    path = tiny_hf.resolve(cfg.model.hf_path, str(tmp_path))
    tokenizer = inputs._tokenizer(cfg, path)
    model_cfg, params, _ = inputs._model(cfg, path, tokenizer, parallel.make_mesh())
    assert model_cfg.scan_layers and model_cfg.remat == "save_qkv_proj"
    # Layers stacked on a leading axis of num_layers.
    assert params["layers"]["mlp"]["up_proj"]["kernel"].shape[0] == model_cfg.num_layers


@pytest.mark.parametrize("override,exported", [({}, True),
                                               ({"partial_rotary_factor": 0.5}, False),
                                               ({"qk_norm": True, "qkv_bias": True}, False)])
def test_a_model_without_an_hf_architecture_is_not_exported(override, exported, caplog):
    """A preset with an HF tokenizer is exported at the end of the run (`train.export_hf`)
    unless no HF architecture can hold it: said when the model is built, not raised when the
    run ends."""
    from lrmjax import parallel

    cfg = small_config()
    cfg.tokenizer.kind, cfg.train.export_hf = "hf", True
    cfg.model.overrides.update(override)
    tokenizer = type("Tok", (), {"vocab_size": 64})()
    with caplog.at_level(logging.WARNING):
        _, _, exportable = inputs._model(cfg, "", tokenizer, parallel.make_mesh())
    assert exportable == exported
    said = [r.getMessage() for r in caplog.records if "export_hf" in r.getMessage()]
    assert len(said) == (0 if exported else 1)
    if not exported:
        assert next(iter(override)) in said[0]


def test_warm_start_pool_draws_demonstrations_from_the_task_with_sft_task_kwargs(tmp_path):
    cfg = small_config()
    cfg.data.task, cfg.data.task_kwargs = "tool_arithmetic", {"digits": 3, "max_factors": 3}
    cfg.data.train_size, cfg.eval.size = 300, 40
    cfg.sampling.max_prompt_len = 16
    cfg.sft.steps, cfg.sft.batch_size, cfg.sft.eval_size = 10, 8, 8
    train = [Example(prompt="1*2=", answer="2")]
    held_out = inputs._examples(cfg, str(tmp_path))[1]
    assert inputs.warm_start_pool(cfg, TOK, train, held_out) is train   # no sft.task_kwargs

    cfg.sft.task_kwargs = {"three_factor_share": 1.0}
    pool = inputs.warm_start_pool(cfg, TOK, train, held_out)
    assert len(pool) == 80                  # sft.steps x sft.batch_size: all the warm start uses
    assert all(len(ex.metadata["factors"]) == 3 for ex in pool)
    assert all(ex.metadata["task_kwargs"]["three_factor_share"] == 1.0 for ex in pool)
    assert pool == inputs.warm_start_pool(cfg, TOK, train, held_out)   # deterministic
    # A held-out prompt is never a demonstration: the pool drawn with those prompts held out
    # loses exactly the ones it shares with them.
    again = inputs.warm_start_pool(cfg, TOK, train, pool[:5])
    assert len(again) == 75 and not {ex.prompt for ex in again} & {ex.prompt for ex in pool[:5]}

    inp = inputs.build_inputs(cfg, str(tmp_path))
    assert [ex.prompt for ex in inp.sft_source] == [
        ex.prompt for ex in inputs.warm_start_pool(cfg, TOK, inp.train_source,
                                                   inp.eval_examples)]
    assert inp.data_stats["data/warm_start_prompts"] == len(inp.sft_source)
    # The RL train set and held-out set keep the task's own kwargs (half three-factor).
    assert {len(inp.train_source[i].metadata["factors"])
            for i in range(len(inp.train_source))} == {2, 3}
    inp.close()
    # An evaluation alone (experiments/evaluate_checkpoint.py) builds no demonstrations.
    evaluating = inputs.build_inputs(cfg, str(tmp_path), warm_start=False)
    assert evaluating.sft_source is None and "data/warm_start_prompts" not in (
        evaluating.data_stats)
    assert [ex.prompt for ex in evaluating.eval_examples] == [
        ex.prompt for ex in inp.eval_examples]
    evaluating.close()
