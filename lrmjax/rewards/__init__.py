"""Host-side reward functions: registry, composition, worker pool, sandbox.

Importing this package imports every reward module that registers names, which fills the
registry in :mod:`lrmjax.rewards.base` (one module-level dict). Registered names: ``math``,
``format``, ``format_lenient``, ``code``, ``majority_vote``, ``majority_vote_exact``,
``self_certainty``, ``neg_entropy``, ``mean_logprob``, and ``task`` (the verifier of the
procedural task that made the prompt).
Process (step-level) rewards have their own registry in :mod:`lrmjax.rewards.process`
(``arithmetic_digits``).

    from lrmjax import rewards
    fn = rewards.combine({"math": 1.0, "format": 0.5})
    with rewards.RewardPool(fn, num_workers=2, timeout_s=10.0) as pool:
        scores, metrics, components = pool.score(prompts, completions, metadata)

The package imports no JAX: reward workers import it to verify text, and JAX, Flax and the
sampler would cost each of them seconds to import. The model-based rewards run a model on the
device; import them from their own module where they are used::

    from lrmjax.rewards.model_based import GenerativeJudge, RewardModelScorer
"""

from lrmjax.rewards import (  # noqa: F401
    code,
    format,
    math_answer,
    process,
    shaping,
    task,
    unsupervised,
)
from lrmjax.rewards.base import (
    CombinedReward,
    RewardFn,
    RewardResult,
    combine,
    get,
    names,
    register,
)
from lrmjax.rewards.pool import RewardPool
from lrmjax.rewards.shaping import ShapedReward, kimi_length_reward, overlong_penalty, shape

__all__ = [
    "CombinedReward",
    "RewardFn",
    "RewardPool",
    "RewardResult",
    "ShapedReward",
    "combine",
    "get",
    "kimi_length_reward",
    "names",
    "overlong_penalty",
    "register",
    "shape",
]
