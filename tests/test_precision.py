"""bf16 compute against fp32 on the demo task (2-digit sums, char tokens): the warm start's
loss curve, step by step, from the same init and the same batches. Master weights stay fp32
in both (`param_dtype`) and the loss and log-softmax run in fp32 (`steps.token_logprobs`), so
bf16 changes only the rounding of the matmuls: the curves must agree closely while both
learn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lrmjax.models import presets, transformer
from lrmjax.tokenizers import CharTokenizer, left_pad
from lrmjax.train import steps
from lrmjax.train.state import TrainState, adamw

STEPS, BATCH = 80, 32


def _batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """STEPS batches of 'a+b=' + the sum + EOS, targets the answer and EOS (as `sft`)."""
    tok, rng = CharTokenizer(), np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        a, b = rng.integers(0, 100, BATCH), rng.integers(0, 100, BATCH)
        prompts = [tok.encode(f"{x}+{y}=") for x, y in zip(a, b, strict=True)]
        answers = [tok.encode(str(x + y), add_eos=True) for x, y in zip(a, b, strict=True)]
        rows = [p + t for p, t in zip(prompts, answers, strict=True)]
        tokens, mask = left_pad(rows, tok.pad_id, 12)
        target = np.zeros(tokens.shape, np.float32)
        for i, t in enumerate(answers):
            target[i, tokens.shape[1] - len(t):] = 1.0
        out.append({"tokens": tokens, "mask": mask, "target_mask": target})
    return out


def _losses(dtype) -> np.ndarray:
    cfg = presets.get("tiny", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                      head_dim=16, mlp_dim=128, vocab_size=CharTokenizer().vocab_size,
                      max_seq_len=16, dtype=dtype)
    state = TrainState.create(transformer.init_params(cfg, jax.random.key(0)), adamw(3e-3))
    step = jax.jit(functools.partial(steps.sft_train_step, model_cfg=cfg))
    losses = []
    for batch in _batches():
        state, m = step(state, jax.tree.map(jnp.asarray, batch))
        losses.append(float(m["sft/loss"]))
    return np.array(losses)


def test_bf16_compute_tracks_fp32_on_the_demo_loss_curve():
    fp32, bf16 = _losses(jnp.float32), _losses(jnp.bfloat16)
    # Both learn: the last ten steps' loss is well under the first (about log(vocab)).
    for curve in (fp32, bf16):
        assert curve[-10:].mean() < 0.6 * curve[0], curve
    # They agree: bf16 rounding (8 bits of mantissa) moves a step's loss by a few percent at
    # most; a bf16 loss, log-softmax or master copy would drift further.
    rel = np.abs(bf16 - fp32) / fp32
    assert rel.max() < 0.05, (rel.max(), int(rel.argmax()))
    assert rel.mean() < 0.02, rel.mean()
    assert rel.max() > 1e-4  # bf16 really ran
