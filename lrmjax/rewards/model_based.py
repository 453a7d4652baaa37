"""Model-based rewards: a scalar reward-model head and a generative (LLM-as-a-judge) verifier.

* :class:`RewardModelScorer` — a Bradley–Terry style reward model (Ouyang et al., 2022,
  "Training language models to follow instructions with human feedback", Sec. 3.5): the
  transformer trunk plus a linear head (:class:`lrmjax.models.heads.ScalarHeadModel`); the
  score of a (prompt, completion) pair is the head's output at the last real token
  (:func:`lrmjax.models.heads.sequence_scores`).
* :class:`GenerativeJudge` — a generative verifier (Zheng et al., 2023, "Judging LLM-as-a-Judge
  with MT-Bench and Chatbot Arena"; Zhang et al., 2024, "Generative Verifiers: Reward Modeling
  as Next-Token Prediction"): a language model is prompted with the question, the response
  and optionally the reference answer, samples a short verdict with
  :class:`lrmjax.sampling.Sampler`, and a parser maps the verdict to a score. With ``k > 1``
  it samples k verdicts per response and scores the mean (majority-of-k / self-consistency).

Both satisfy the reward protocol ``fn(prompts, completions, metadata) -> RewardResult`` and
run their forward passes jitted on the device, in fixed-size padded batches with bucketed
lengths, so repeated calls compile a handful of programs.

In-process only. These rewards hold device params, so they cannot be pickled into
:class:`~lrmjax.rewards.pool.RewardPool` worker processes (pickling raises a TypeError that
says so): use ``RewardPool(fn, num_workers=0)`` or call them directly. They carry
``batched = True``: a non-group reward is handed to it one row per call by ``RewardPool``,
which would run one padded device batch per row; call them on the whole batch instead.

Not registered by name: the registry maps names to stateless functions that workers can
import, while these need a model config, params and a tokenizer; construct the classes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lrmjax import parallel
from lrmjax.models import heads
from lrmjax.models.presets import ModelConfig
from lrmjax.rewards.base import RewardResult, check_batch, require
from lrmjax.sampling import Sampler, SamplingParams
from lrmjax.tokenizers import bucket, left_pad, length_buckets

_IN_PROCESS = ("holds device params and runs in-process only: use RewardPool(fn, "
               "num_workers=0) or call it directly")


def truncate_left(ids: list[int], max_len: int, bos_id: int | None) -> tuple[list[int], bool]:
    """Keeps the last `max_len` tokens (the end of the response is what gets scored/judged).

    A leading BOS token is kept in front of the surviving tokens. Returns (ids, truncated).
    """
    if len(ids) <= max_len:
        return ids, False
    if bos_id is not None and ids[:1] == [bos_id]:
        return [bos_id] + ids[len(ids) - max_len + 1:], True
    return ids[len(ids) - max_len:], True


def _format_fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _check_fields(fields: set[str], allowed: set[str], required: str, what: str) -> None:
    unknown = fields - allowed
    if unknown:
        raise ValueError(f"{what} template uses unknown fields {sorted(unknown)}; "
                         f"allowed: {sorted(allowed)}")
    if required not in fields:
        raise ValueError(f"{what} template must contain {{{required}}}")


# ----------------------------------------------------------------------------- reward model

# One jitted function for every scorer: jit's cache is keyed by the (hashable, static) config
# and the shapes/shardings of params and batch, so scorers of one model share programs.
_sequence_scores = jax.jit(heads.sequence_scores, static_argnums=0)


def _signature(tree: Any) -> Any:
    """What jit's cache key depends on besides the static config: structure, shapes, dtypes
    and shardings of the arguments."""
    return (jax.tree.structure(tree),
            tuple((x.shape, str(x.dtype), getattr(x, "sharding", None))
                  for x in jax.tree.leaves(tree)))


NORMALIZATIONS = ("raw", "sigmoid", "standardize")


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a scalar reward-model head.

    Each row's text is ``template.format(prompt=..., completion=...)``, tokenized (BOS
    prepended if `add_bos` and the tokenizer has one, EOS appended if `add_eos`). A row
    longer than `max_len` tokens keeps its last `max_len` tokens (and its BOS) and is counted
    in the component ``rm/truncated``: the score is read at the last token, so the end of the
    completion must survive. Rows are left padded into chunks of exactly `batch_size` rows
    (dummy rows fill the last chunk) and widths padded up to a power-of-two bucket, so a
    run compiles at most ``len(length_buckets(max_len))`` programs (``num_compilations``).

    Args:
      cfg: the reward model's ModelConfig.
      params: ``heads.ScalarHeadModel`` params {'trunk': ..., 'head': ...} (any sharding).
      tokenizer: a CharTokenizer or HFTokenizer.
      max_len: longest token sequence scored (<= cfg.max_seq_len).
      template: str.format template with fields {prompt} and {completion} (completion
        required), or a callable (prompt, completion) -> str.
      normalize: "raw" (head output), "sigmoid" (sigmoid of it: the Bradley–Terry win
        probability against a zero-score response) or "standardize" ((s - mean) / std over
        the rows of one call; needs >= 2 rows).
      batch_size: rows per device batch (a multiple of the mesh's batch divisor).
      mesh: optional; token batches are placed with ``parallel.batch_sharding(mesh)``.

    Calling it returns a RewardResult: scores [B]; components ``rm/raw`` [B] (head output
    before normalization) and ``rm/truncated`` [B] (1.0 where the row was cut).
    """

    batched = True

    def __init__(self, cfg: ModelConfig, params: Any, tokenizer: Any, *, max_len: int,
                 template: str | Callable[[str, str], str] = "{prompt}{completion}",
                 normalize: str = "raw", batch_size: int = 8, add_bos: bool = True,
                 add_eos: bool = False, mesh: jax.sharding.Mesh | None = None):
        if not 1 <= max_len <= cfg.max_seq_len:
            raise ValueError(f"max_len must be in [1, cfg.max_seq_len={cfg.max_seq_len}], "
                             f"got {max_len}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if mesh is not None and batch_size % parallel.batch_divisor(mesh):
            raise ValueError(f"batch_size {batch_size} is not a multiple of the mesh's batch "
                             f"divisor {parallel.batch_divisor(mesh)}")
        if isinstance(template, str):
            _check_fields(_format_fields(template), {"prompt", "completion"}, "completion",
                          "reward model")
        if tokenizer.pad_id is None:
            raise ValueError("the tokenizer has no pad (or eos) id to pad with")
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.max_len, self.template, self.normalize = max_len, template, normalize
        self.batch_size, self.add_bos, self.add_eos, self.mesh = (batch_size, add_bos, add_eos,
                                                                   mesh)
        self.buckets = length_buckets(max_len)
        self._programs: set[Any] = set()
        self.num_truncated = 0  # over the scorer's lifetime

    def __reduce__(self) -> Any:
        raise TypeError(f"RewardModelScorer {_IN_PROCESS}")

    def render(self, prompt: str, completion: str) -> str:
        """The text the reward model reads for one row."""
        if callable(self.template):
            return self.template(prompt, completion)
        return self.template.format(prompt=prompt, completion=completion)

    def encode(self, prompts: Sequence[str], completions: Sequence[str]
               ) -> tuple[list[list[int]], list[bool]]:
        """Token ids per row (at most max_len each) and whether each row was truncated."""
        bos = self.tokenizer.bos_id if self.add_bos else None
        ids, cut = [], []
        for p, c in zip(prompts, completions, strict=True):
            row = self.tokenizer.encode(self.render(p, c), add_bos=self.add_bos,
                                        add_eos=self.add_eos)
            if not row:
                raise ValueError(f"reward model: empty token sequence for completion {c!r}")
            row, was_cut = truncate_left(row, self.max_len, bos)
            ids.append(row)
            cut.append(was_cut)
        return ids, cut

    def raw_scores(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Head outputs at each row's last token: list of B token lists -> [B] float32."""
        out = np.zeros(len(ids), np.float32)
        for start in range(0, len(ids), self.batch_size):
            chunk = list(ids[start:start + self.batch_size])
            width = bucket(max(len(r) for r in chunk), self.buckets)
            # Dummy rows: one real pad token, so no row is fully masked; scores dropped.
            chunk += [[self.tokenizer.pad_id]] * (self.batch_size - len(chunk))
            tokens, mask = left_pad(chunk, self.tokenizer.pad_id, width)
            args: tuple[Any, ...] = (tokens, mask)
            if self.mesh is not None:  # each host's rows -> one global batch
                args = tuple(parallel.host_to_global(a, self.mesh) for a in args)
            self._programs.add(_signature((self.params, *args)))
            scores = _sequence_scores(self.cfg, self.params, *args)
            n = min(self.batch_size, len(ids) - start)
            # Fetch to the host before slicing: an eager device slice would compile per size.
            scores = parallel.global_to_host(scores)
            if self.mesh is not None:  # this host's rows of the global batch
                scores = scores[parallel.host_row_block(self.mesh, len(scores))]
            out[start:start + n] = scores[:n]
        return out

    @property
    def num_compilations(self) -> int:
        """Distinct programs (width, batch, param layout) this scorer has run."""
        return len(self._programs)

    def __call__(self, prompts: list[str], completions: list[str], metadata: list[dict]
                 ) -> RewardResult:
        check_batch(prompts, completions, metadata)
        if not completions:
            return RewardResult(scores=[], components={"rm/raw": [], "rm/truncated": []})
        if self.normalize == "standardize" and len(completions) < 2:
            raise ValueError("normalize='standardize' needs >= 2 rows per call; RewardPool "
                             "hands a non-group reward one row at a time: call the scorer on "
                             "the whole batch")
        ids, cut = self.encode(prompts, completions)
        self.num_truncated += sum(cut)
        raw = self.raw_scores(ids).astype(np.float64)
        if self.normalize == "sigmoid":
            scores = 0.5 * (1.0 + np.tanh(0.5 * raw))  # sigmoid, without exp overflow
        elif self.normalize == "standardize":
            scores = (raw - raw.mean()) / (raw.std() + 1e-8)
        else:
            scores = raw
        return RewardResult(scores=scores.tolist(),
                            components={"rm/raw": raw.tolist(),
                                        "rm/truncated": [float(c) for c in cut]})


# ----------------------------------------------------------------------------- verdict parsers

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_SCORE = re.compile(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?",
                    re.IGNORECASE)


def parse_yes_no(text: str) -> float | None:
    """1.0 if the first whole word 'yes'/'no' (case-insensitive) is 'yes', 0.0 if 'no', None
    if neither occurs ('yesterday' and 'not' do not count)."""
    m = _YES_NO.search(text)
    if m is None:
        return None
    return 1.0 if m.group(1).lower() == "yes" else 0.0


def parse_score(text: str, scale: float = 10.0) -> float | None:
    """The first 'Score: x' or 'Score: x/y' (case-insensitive) as a fraction in [0, 1]: x / y,
    or x / `scale` without a denominator. 'Score: 7/10' -> 0.7. None if absent, if y is 0 or
    if the fraction lies outside [0, 1] (never clipped silently)."""
    m = _SCORE.search(text)
    if m is None:
        return None
    denom = float(m.group(2)) if m.group(2) is not None else float(scale)
    if denom <= 0:
        return None
    value = float(m.group(1)) / denom
    return value if 0.0 <= value <= 1.0 else None


PARSERS: dict[str, Callable[[str], float | None]] = {"yes_no": parse_yes_no,
                                                      "score": parse_score}


# ----------------------------------------------------------------------------- judge

DEFAULT_TEMPLATE = ("Question: {question}\nResponse: {response}\n"
                    "Is the response correct? Answer yes or no.\n")
REFERENCE_TEMPLATE = ("Question: {question}\nReference answer: {reference}\n"
                      "Response: {response}\nIs the response correct? Answer yes or no.\n")
_JUDGE_FIELDS = {"question", "response", "reference"}


def _jinja(template: str) -> tuple[Any, set[str]]:
    """A compiled sandboxed jinja template (undefined variables raise) and its variables."""
    import jinja2
    import jinja2.meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined,
                                        keep_trailing_newline=True)
    fields = jinja2.meta.find_undeclared_variables(env.parse(template))
    return env.from_string(template), set(fields)


class GenerativeJudge:
    """Scores responses by asking a language model for a verdict.

    Per row, the judge prompt is the template rendered with ``question`` (from
    ``metadata["question"]`` if present, else the policy prompt), ``response`` (the
    completion) and, if the template uses it, ``reference`` (``str(metadata["answer"])``;
    missing -> KeyError naming the row). With `chat`, the rendered text is sent as one user
    message through the tokenizer's chat template. A prompt longer than `max_prompt_len`
    tokens keeps its last tokens (and BOS) and is counted in ``judge/truncated``.

    The judge samples k verdicts per row (``SamplingParams(n=k)``, `max_new_tokens` each;
    greedy for k == 1 by default) in chunks of `batch_size` rows, decodes each up to its stop
    token, and parses it. Score of a row = mean over its k verdicts of the parsed value,
    with an unparsable verdict counting 0 (for the yes/no parser: the fraction of 'yes').
    Parse failures never raise: they are reported per row as the fraction of unparsed
    verdicts in ``judge/unparsed``. The last call's verdict texts are kept in
    ``last_verdicts`` ([B][k] strings) for inspection.

    Randomness (k > 1 or temperature > 0): call number c of this judge uses
    ``fold_in(fold_in(key(seed), c), chunk)``, so a run is reproducible; a row's samples
    depend on its position in its chunk (see lrmjax.sampling).

    Args:
      cfg, params: the judge LM (transformer params, any sharding).
      tokenizer: CharTokenizer or HFTokenizer (its pad and stop ids drive the sampler).
      template: a str.format (syntax="format") or jinja (syntax="jinja") template with
        variables question, response (required) and reference; or a callable
        (question, response, reference | None) -> str (`uses_reference` says whether it
        needs metadata["answer"]).
      parser: a name in PARSERS ("yes_no", "score") or a callable str -> float | None.
      k: verdicts sampled per row. temperature: default 0 (greedy) for k == 1, 1.0 for k > 1;
        k > 1 with temperature 0 is an error (k identical verdicts).
      max_new_tokens: verdict length limit. max_prompt_len: default cfg.max_seq_len -
        max_new_tokens.
      batch_size: rows per sampler batch (a multiple of the mesh's batch divisor).
    """

    batched = True

    def __init__(self, cfg: ModelConfig, params: Any, tokenizer: Any, *,
                 template: str | Callable[[str, str, str | None], str] = DEFAULT_TEMPLATE,
                 syntax: str = "format", uses_reference: bool = False,
                 parser: str | Callable[[str], float | None] = "yes_no", k: int = 1,
                 temperature: float | None = None, top_p: float = 1.0,
                 max_new_tokens: int = 8, max_prompt_len: int | None = None,
                 batch_size: int = 8, chat: bool = False, seed: int = 0,
                 mesh: jax.sharding.Mesh | None = None):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        temperature = (0.0 if k == 1 else 1.0) if temperature is None else float(temperature)
        if k > 1 and temperature == 0.0:
            raise ValueError("k > 1 verdicts with temperature 0 would be identical; set "
                             "temperature > 0")
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p,
                                       max_new_tokens=max_new_tokens, n=k)
        if max_prompt_len is None:
            max_prompt_len = cfg.max_seq_len - max_new_tokens
        if not 1 <= max_prompt_len <= cfg.max_seq_len - max_new_tokens:
            raise ValueError(f"max_prompt_len must be in [1, max_seq_len - max_new_tokens = "
                             f"{cfg.max_seq_len - max_new_tokens}], got {max_prompt_len}")
        if isinstance(parser, str):
            if parser not in PARSERS:
                raise ValueError(f"unknown verdict parser {parser!r}; valid: {sorted(PARSERS)}")
            parser = PARSERS[parser]
        if syntax not in ("format", "jinja"):
            raise ValueError(f"syntax must be 'format' or 'jinja', got {syntax!r}")
        if callable(template):
            self._render, self.uses_reference = template, uses_reference
        else:
            if syntax == "jinja":
                compiled, fields = _jinja(template)
            else:
                compiled, fields = template, _format_fields(template)
            _check_fields(fields, _JUDGE_FIELDS, "response", "judge")
            self.uses_reference = "reference" in fields
            self._render = self._template_renderer(compiled, syntax)
        if chat and not hasattr(tokenizer, "apply_chat_template"):
            raise ValueError(f"chat=True needs a tokenizer with a chat template; "
                             f"{type(tokenizer).__name__} has none")
        if tokenizer.pad_id is None or not tokenizer.stop_ids:
            raise ValueError("the judge's tokenizer needs a pad id and at least one stop id")
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.parser, self.k, self.chat = parser, k, chat
        self.max_prompt_len, self.batch_size = max_prompt_len, batch_size
        self.sampler = Sampler(cfg, pad_id=tokenizer.pad_id, stop_ids=tokenizer.stop_ids,
                               mesh=mesh, prompt_buckets=length_buckets(max_prompt_len),
                               batch_buckets=(batch_size,))
        self._key = jax.random.key(seed)
        self._calls = 0
        self.last_verdicts: list[list[str]] = []

    def __reduce__(self) -> Any:
        raise TypeError(f"GenerativeJudge {_IN_PROCESS}")

    @staticmethod
    def _template_renderer(compiled: Any, syntax: str) -> Callable[..., str]:
        def render(question: str, response: str, reference: str | None) -> str:
            values = {"question": question, "response": response}
            if reference is not None:
                values["reference"] = reference
            if syntax == "jinja":
                return compiled.render(**values)
            return compiled.format(**values)

        return render

    def _parse(self, text: str) -> float | None:
        """The parser's value; None (unparsed) also when the parser raises ValueError. A
        parser returning a non-number or a non-finite value is a bug: TypeError/ValueError."""
        try:
            value = self.parser(text)
        except ValueError:
            return None
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)):
            raise TypeError(f"verdict parser returned {value!r} for {text!r}; expected a "
                            "float or None")
        if not np.isfinite(value):
            raise ValueError(f"verdict parser returned {value} for {text!r}")
        return float(value)

    def render(self, prompt: str, completion: str, metadata: Mapping, row: int = 0) -> str:
        """The judge prompt text for one row (before any chat template)."""
        question = str(metadata.get("question", prompt))
        reference = None
        if self.uses_reference:
            reference = str(require(metadata, "answer", row, "judge"))
        return self._render(question, completion, reference)

    def encode(self, prompts: Sequence[str], completions: Sequence[str],
               metadata: Sequence[Mapping]) -> tuple[list[list[int]], list[bool]]:
        """Judge prompt token ids per row (at most max_prompt_len) and truncation flags."""
        ids, cut = [], []
        for i, (p, c, m) in enumerate(zip(prompts, completions, metadata, strict=True)):
            text = self.render(p, c, m, i)
            if self.chat:
                text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                          add_generation_prompt=True)
            row, was_cut = truncate_left(self.tokenizer.encode(text, add_bos=True),
                                         self.max_prompt_len, self.tokenizer.bos_id)
            ids.append(row)
            cut.append(was_cut)
        return ids, cut

    def verdicts(self, ids: Sequence[Sequence[int]]) -> list[list[str]]:
        """Samples k verdict texts for each prompt (token lists) -> [B][k] strings."""
        key = jax.random.fold_in(self._key, self._calls)
        self._calls += 1
        out: list[list[str]] = []
        for c, start in enumerate(range(0, len(ids), self.batch_size)):
            tokens, mask = left_pad(ids[start:start + self.batch_size], self.tokenizer.pad_id)
            roll = self.sampler.generate(self.params, tokens, mask, self.sampling,
                                         jax.random.fold_in(key, c))
            texts = self.tokenizer.batch_decode(np.asarray(roll.response_tokens),
                                                np.asarray(roll.response_mask))
            out.extend(texts[b * self.k:(b + 1) * self.k] for b in range(len(tokens)))
        return out

    def __call__(self, prompts: list[str], completions: list[str], metadata: list[dict]
                 ) -> RewardResult:
        check_batch(prompts, completions, metadata)
        if not completions:
            self.last_verdicts = []
            return RewardResult(scores=[], components={"judge/unparsed": [],
                                                       "judge/truncated": []})
        ids, cut = self.encode(prompts, completions, metadata)
        self.last_verdicts = self.verdicts(ids)
        scores, unparsed = [], []
        for texts in self.last_verdicts:
            values = [self._parse(t) for t in texts]
            scores.append(float(np.mean([0.0 if v is None else float(v) for v in values])))
            unparsed.append(sum(v is None for v in values) / len(values))
        return RewardResult(scores=scores, components={
            "judge/unparsed": unparsed, "judge/truncated": [float(x) for x in cut]})
