"""Token bookkeeping of multi-turn chat episodes under an HF chat template.

In a multi-turn episode the model writes a turn that ends in its EOS (`<|im_end|>` for Qwen), the
environment answers with messages (tool results), and the model goes on from there. The trainer
trains on the exact ids the model sampled plus the ids the environment inserted, never on a
re-tokenization of text. `ChatEpisode` gives the inserted ids: the tokens the chat template renders
for the new messages plus the next generation prompt. That is the text of

    render(history + [assistant turn] + new messages, add_generation_prompt=True)

after the model's EOS, where the history already ends in the context the model sampled from. The
invariant: prompt ids + each turn's sampled ids + each observation's ids spell the template's
render of the whole conversation; with every turn tokenized the canonical way they are
`tokenize(render(conversation))` token for token.

Why the delta can be tokenized on its own: HF `tokenizers` split the text at added tokens before
pre-tokenizing, so no token spans one, and tokenize(a + '<|im_end|>' + b) == tokenize(a) + [eos]
+ tokenize(b) as long as the added token strips no whitespace next to it (Qwen's strip none;
`observation_ids` checks this boundary every time). The delta starts right after the model's
EOS, so its ids are the tail of the full tokenization whatever ids the model sampled before.

Why the model's turn enters the history as plain `content`: its text already holds its tool calls
(`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`). Passed as a structured
`tool_calls` field instead, Qwen's templates re-render each call from the parsed JSON (`tojson`
spacing, key order, escaping), which need not be the characters the model wrote, and the history
would no longer be the context the model conditioned on. Parsed calls are for the environment.

Prefix preservation: the delta is well defined only if rendering more messages leaves the render
of the earlier ones as it was. `observation_ids` checks that on the text and otherwise raises
`TemplateNotPrefixPreserving`, naming the template and the first differing character. Qwen2.5's
template preserves prefixes. Qwen3's does not: it drops the <think> block of every assistant turn
before the last user message, and gives a turn without reasoning an empty
`<think>\\n\\n</think>\\n\\n` only while it is the last message (so with enable_thinking=False, or
after a turn that skipped thinking, the first tool result already breaks it). Qwen3 keeps its
prefixes only within one chain of tool results (no new user message) whose every turn thinks in
Qwen's exact `<think>\\n...\\n</think>\\n\\n` layout.

Shipped templates (`load_template(name)`, files in templates/):
  qwen2_5: the `chat_template` of Qwen2.5-Instruct's tokenizer_config.json (e.g. Qwen2.5-7B-
    Instruct; not Qwen2.5-Math, whose template differs).
  qwen3: the `chat_template` of the Qwen3 hybrid-thinking models (e.g. Qwen3-8B; not the
    Qwen3-*-2507 releases).
    Both are byte-identical to huggingface/trl's trl/chat_templates/{qwen2_5,qwen3}.jinja
    (commit f2cd577), the copies TRL recognizes these models' tokenizers by (Apache-2.0).
  qwen3_multiturn: qwen3 made prefix-preserving. Every assistant turn renders as
    `<|im_start|>assistant\\n` + its content as written, so earlier <think> blocks are kept and
    so is the model's own whitespace (SkyRL's qwen3_acc_thinking.jinja makes the same change);
    with enable_thinking=False each turn starts with the empty `<think>\\n\\n</think>\\n\\n` the
    generation prompt put before it; a separate `reasoning_content` field still renders in Qwen3's
    layout; the last-user-message bookkeeping it no longer needs is gone. (TRL's
    qwen3_training.jinja instead renders every turn in Qwen's normalized <think> layout: prefix-
    preserving over messages, but not verbatim for a turn the model wrote in another layout.)
    The cost: Qwen's own format shows earlier turns without their thinking, so episodes under
    this one have longer contexts than Qwen3 was tuned on; in return every turn is sampled and
    trained on the same context, which re-renders as the same text.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from lrmjax.tokenizers import HFTokenizer, render_chat_template

TEMPLATE_DIR = pathlib.Path(__file__).resolve().parent / "templates"
ROLES = ("system", "user", "assistant", "tool")
# What an environment answers a turn with: tool results, or a user message (feedback, a question).
OBSERVATION_ROLES = ("tool", "user")


def template_names() -> tuple[str, ...]:
    """Names of the shipped chat templates (the .jinja files in TEMPLATE_DIR)."""
    return tuple(sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja")))


@functools.cache
def load_template(name: str) -> str:
    """The shipped chat template `name` (one of `template_names()`), as a jinja string."""
    if name not in template_names():
        raise ValueError(f"no shipped chat template {name!r}; shipped: {list(template_names())}")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def template_label(template: str) -> str:
    """How errors name a template: its shipped name, else a short hash of its text."""
    for name in template_names():
        if load_template(name) == template:
            return f"chat template {name!r} (lrmjax/envs/templates/{name}.jinja)"
    return f"chat template sha1:{hashlib.sha1(template.encode()).hexdigest()[:10]}"


class TemplateNotPrefixPreserving(ValueError):
    """Rendering more messages changed the render of the earlier ones (or of the model's turn),
    so the observation tokens are not a pure extension of what the model saw."""


def _snippet(text: str, pos: int) -> str:
    return repr(text[max(0, pos - 30):pos + 50])


def _check_prefix(prefix: str, text: str, label: str, what: str) -> None:
    """Raises TemplateNotPrefixPreserving unless `text` starts with `prefix`."""
    if text.startswith(prefix):
        return
    pos = len(os.path.commonprefix([prefix, text]))
    line = prefix.count("\n", 0, pos) + 1
    raise TemplateNotPrefixPreserving(
        f"{label} is not prefix-preserving: {what}. They first differ at character {pos} (line "
        f"{line}): expected ...{_snippet(prefix, pos)}..., rendered ...{_snippet(text, pos)}... "
        "If the template rewrites earlier turns (Qwen3 drops earlier <think> blocks and empty "
        "think blocks), use a prefix-preserving one, e.g. template=load_template("
        "'qwen3_multiturn'); if it closes assistant turns with another token than the "
        "tokenizer's EOS, it cannot continue from the model's sampled EOS.")


def _checked(messages: Sequence[Mapping], roles: tuple[str, ...], what: str) -> list[dict]:
    """Deep copies of `messages` after checking each is a dict with an allowed role and string
    content (an assistant turn with `tool_calls` may have content None)."""
    if isinstance(messages, str | Mapping) or not isinstance(messages, Sequence):
        raise TypeError(f"{what} must be a list of message dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{what} is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"{what}[{i}] is not a message dict: {m!r}")
        role, content = m.get("role"), m.get("content")
        if role not in roles:
            raise ValueError(f"{what}[{i}] has role {role!r}; expected one of {list(roles)}")
        if not (isinstance(content, str)
                or (role == "assistant" and content is None and m.get("tool_calls"))):
            raise ValueError(f"{what}[{i}] ({role}) needs string content, got {content!r}")
        out.append(copy.deepcopy(dict(m)))
    return out


def _check_order(messages: list[dict]) -> None:
    """Tool results answer a model turn: each tool message follows an assistant turn or another
    tool message."""
    for i, m in enumerate(messages):
        prev = messages[i - 1]["role"] if i else None
        if m["role"] == "tool" and prev not in ("assistant", "tool"):
            raise ValueError(f"message {i} is a tool result but follows {prev or 'nothing'!r}, "
                             "not an assistant turn (or another tool result)")


class ChatEpisode:
    """Token bookkeeping of one chat episode under a tokenizer's chat template.

    Holds the messages so far and `text`, the render the next model turn continues from (it
    ends in the generation prompt). Usage, per episode:

        ep = ChatEpisode(tokenizer, [{"role": "user", "content": question}], tools=tools)
        ids = ep.prompt_ids()                        # the model samples after these
        # loop: the model samples `turn` (ids ending in tokenizer.eos_id); if the environment
        # answers with messages `obs` (loss mask: 1 on `turn`, 0 on the observation):
        ids += turn + ep.observation_ids(tokenizer.decode(turn[:-1], skip_special=False), obs)

    Args:
      tokenizer: the HFTokenizer the model samples with; its eos token must close assistant turns
        in the template (`<|im_end|>` for Qwen2.5/Qwen3-Instruct).
      messages: the prompt messages (roles system/user/assistant/tool, string content); must not
        end with an assistant turn.
      tools: tool schemas passed to the template (listed in the system prompt), or None.
      template: a jinja chat template (e.g. `load_template("qwen3_multiturn")`); None uses
        `tokenizer.chat_template`.
      template_kwargs: extra template variables for every render, e.g. {"enable_thinking": False}.
    """

    def __init__(self, tokenizer: HFTokenizer, messages: list[dict], tools: list[dict] | None,
                 template: str | None = None, template_kwargs: Mapping[str, Any] | None = None):
        template = tokenizer.chat_template if template is None else template
        if template is None:
            raise ValueError("no chat template: the tokenizer has none and none was given")
        if tokenizer.eos_id is None:
            raise ValueError("the tokenizer has no eos token, so no token ends a model turn")
        self.tokenizer = tokenizer
        self.template = template
        self.label = template_label(template)
        self.tools = copy.deepcopy(tools)
        self._vars = {**tokenizer.special_tokens, **(template_kwargs or {})}
        self._eos_text = tokenizer.special_tokens["eos_token"]
        self._messages = _checked(messages, ROLES, "messages")
        _check_order(self._messages)
        if self._messages[-1]["role"] == "assistant":
            raise ValueError("messages end with an assistant turn; an episode starts at a "
                             "generation prompt, after a user (or tool) message")
        self._text = self._render(self._messages, add_generation_prompt=True)
        self._prompt_ids = tokenizer.encode(self._text)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return render_chat_template(self.template, messages, add_generation_prompt,
                                    tools=self.tools, **self._vars)

    @property
    def messages(self) -> list[dict]:
        """The messages so far (the model's turns as {"role": "assistant", "content": text})."""
        return copy.deepcopy(self._messages)

    @property
    def text(self) -> str:
        """The rendered context the next model turn continues from."""
        return self._text

    def prompt_ids(self) -> list[int]:
        """[P] ids of render(messages, add_generation_prompt=True), what the first turn follows."""
        return list(self._prompt_ids)

    def observation_ids(self, assistant_text: str, new_messages: Sequence[dict]) -> list[int]:
        """The ids to append after the model's turn and before its next one.

        Args:
          assistant_text: the text of the model's sampled ids before their final EOS, decoded
            with special tokens kept (`tokenizer.decode(ids[:-1], skip_special=False)`); tool
            calls included, exactly as written. Call this only for a turn that ended in
            `tokenizer.eos_id` (a truncated turn ends the episode).
          new_messages: the environment's answer: tool results ({"role": "tool", "content"})
            and/or user messages, in order.

        Returns:
          [O] ids of the text that render(history + [assistant] + new_messages,
          add_generation_prompt=True) has after the model's EOS: the end of the model's turn
          (`\\n` for ChatML), the new messages, the next generation prompt.

        Raises:
          TemplateNotPrefixPreserving: the template does not render the history as the context
            the model saw + `assistant_text` + EOS, or rendering `new_messages` changes it.
          ValueError: malformed messages, or `assistant_text` holds the EOS token's text.
        The episode is left unchanged when this raises.
        """
        if not isinstance(assistant_text, str):
            raise TypeError(f"assistant_text must be a string, got {type(assistant_text).__name__}")
        if self._eos_text in assistant_text:
            raise ValueError(f"assistant_text holds the EOS token {self._eos_text!r}; pass the "
                             "text of the sampled ids before their final EOS")
        new = _checked(new_messages, OBSERVATION_ROLES, "new_messages")
        history = self._messages + [{"role": "assistant", "content": assistant_text}]
        _check_order(history + new)
        sampled = self._text + assistant_text + self._eos_text  # what the model has seen + wrote
        before = self._render(history, add_generation_prompt=False)
        _check_prefix(sampled, before, self.label,
                      "the history rendered with the model's turn is not the context the model "
                      "saw + the text it wrote + its EOS")
        after = self._render(history + new, add_generation_prompt=True)
        _check_prefix(before, after, self.label,
                      "rendering the new messages changes the render of the history before them")
        delta = after[len(sampled):]
        ids = self.tokenizer.encode(delta)
        if self.tokenizer.encode(self._eos_text + delta) != [self.tokenizer.eos_id] + ids:
            raise ValueError(f"the text after the EOS token {self._eos_text!r} tokenizes "
                             "differently behind it than on its own (does the token strip "
                             f"whitespace?); observation text: {delta[:80]!r}")
        self._messages, self._text = history + new, after
        return ids
