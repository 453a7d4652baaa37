"""envs.chat: observation tokens of multi-turn episodes against full renders and transformers.

The tokenizer is the tiny byte-level BPE of tiny_hf (ChatML special tokens, eos <|im_end|>) with
the real Qwen templates set on it; references are tokenizations of whole-conversation renders and
transformers' own `apply_chat_template`.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from tokenizers import Tokenizer

from lrmjax.envs.chat import (
    ChatEpisode,
    TemplateNotPrefixPreserving,
    load_template,
    template_names,
)
from lrmjax.models.tiny_hf import make_tokenizer
from lrmjax.tokenizers import HFTokenizer, render_chat_template

TOOLS = [{"type": "function", "function": {
    "name": "calc", "description": "Evaluates an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expr": {"type": "string"}},
                   "required": ["expr"]}}}]
PROMPT = [{"role": "system", "content": "You are a careful mathematician."},
          {"role": "user", "content": "What is 12 * 7 + 3? Use the calculator."}]


def call(expr: str) -> str:
    """A tool call as Qwen models write it."""
    arguments = json.dumps({"expr": expr})
    return f'<tool_call>\n{{"name": "calc", "arguments": {arguments}}}\n</tool_call>'


# Model turns (text before the EOS) and the environment's answers. Turn 2 makes two calls (two
# tool messages, which the templates merge into one user turn); results have edge whitespace.
TURNS = [
    ("I will compute the product first.\n" + call("12*7"), [{"role": "tool", "content": "84"}]),
    (call("84+3") + "\n" + call("3*1"),
     [{"role": "tool", "content": " 87\n"}, {"role": "tool", "content": "ünïcode ✓ 3"}]),
    ("Checking once more: " + call("(12*7)+3"), [{"role": "tool", "content": '{"value": 87}'}]),
]
FINAL = "The answer is 87."


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> HFTokenizer:
    return make_tokenizer(str(tmp_path_factory.mktemp("tok")))


def episode(tok, name, messages=PROMPT, tools=TOOLS, **kwargs) -> ChatEpisode:
    return ChatEpisode(tok, messages, tools, template=load_template(name), template_kwargs=kwargs)


def render(tok, name, messages, add_generation_prompt, tools=TOOLS, **kwargs) -> str:
    return render_chat_template(load_template(name), messages, add_generation_prompt,
                                tools=tools, **tok.special_tokens, **kwargs)


def sample(tok, text: str) -> list[int]:
    """What the model sampled for `text`, tokenized the canonical way, with its EOS."""
    return tok.encode(text) + [tok.eos_id]


# ----------------------------------------------------------------------------- the templates


def test_shipped_templates_are_the_exact_qwen_ones():
    assert template_names() == ("qwen2_5", "qwen3", "qwen3_multiturn")
    # sha256 of huggingface/trl's trl/chat_templates/{qwen2_5,qwen3}.jinja (commit f2cd577),
    # which TRL matches real Qwen tokenizers' chat_template against byte for byte.
    assert hashlib.sha256(load_template("qwen2_5").encode()).hexdigest() == (
        "cd8e9439f0570856fd70470bf8889ebd8b5d1107207f67a5efb46e342330527f")
    assert hashlib.sha256(load_template("qwen3").encode()).hexdigest() == (
        "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8")
    with pytest.raises(ValueError, match="no shipped chat template 'qwen9'"):
        load_template("qwen9")


CONVERSATIONS = {
    "tool_episode": PROMPT + [m for text, obs in TURNS
                              for m in [{"role": "assistant", "content": text}, *obs]],
    # Structured tool calls (string and dict arguments), reasoning as a field and in content,
    # a follow-up question, no system message.
    "mixed": [
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "calc", "arguments": {"expr": "12*7"}}}]},
        {"role": "tool", "content": "84"},
        {"role": "assistant", "content": "<think>\nIt said 84.\n</think>\n\nIt is 84."},
        {"role": "user", "content": "And plus 3?"},
        {"role": "assistant", "content": "Let me add.", "reasoning_content": "84 + 3",
         "tool_calls": [{"function": {"name": "calc", "arguments": '{"expr": "84+3"}'}}]},
        {"role": "tool", "content": "87"},
    ],
}


@pytest.mark.parametrize("name", ["qwen2_5", "qwen3", "qwen3_multiturn"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_render_matches_transformers(tok, tmp_path, name, conversation, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    tok.save_pretrained(tmp_path)
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tmp_path / "tokenizer.json"), eos_token="<|im_end|>",
        pad_token="<|endoftext|>")
    messages = CONVERSATIONS[conversation]
    for kwargs in ([{}, {"enable_thinking": False}] if name != "qwen2_5" else [{}]):
        for tools in (TOOLS, None):
            want = ref.apply_chat_template(messages, tools=tools, chat_template=load_template(name),
                                           tokenize=False,
                                           add_generation_prompt=add_generation_prompt, **kwargs)
            assert render(tok, name, messages, add_generation_prompt, tools, **kwargs) == want
            assert tok.encode(want) == ref(want, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- Qwen2.5


@pytest.mark.parametrize("num_turns", [1, 2, 3])
def test_observations_extend_the_tokens_to_the_full_render(tok, num_turns):
    """prompt ids + sampled ids + observation ids == tokenize(render(conversation)), after
    every observation and at the end of the episode."""
    ep = episode(tok, "qwen2_5")
    ids = ep.prompt_ids()
    assert ids == tok.encode(render(tok, "qwen2_5", PROMPT, True))
    gen = tok.encode("<|im_start|>assistant\n")
    assert ids[-len(gen):] == gen
    messages = list(PROMPT)
    for text, obs in TURNS[:num_turns]:
        observation = ep.observation_ids(text, obs)
        ids += sample(tok, text) + observation
        messages += [{"role": "assistant", "content": text}, *obs]
        full = render(tok, "qwen2_5", messages, True)
        assert ep.text == full and ep.messages == messages
        assert ids == tok.encode(full)
        # The delta starts right after the model's EOS: the newline closing its turn, then the
        # tool results as a user turn.
        assert tok.decode(observation, skip_special=False).startswith(
            "\n<|im_start|>user\n<tool_response>\n")
    ids += sample(tok, FINAL) + tok.encode("\n")
    messages.append({"role": "assistant", "content": FINAL})
    assert ids == tok.encode(render(tok, "qwen2_5", messages, False))


def test_the_sampled_ids_are_kept_as_they_are(tok):
    """A model may sample a non-canonical tokenization of its text; the stream keeps those ids
    and still spells the full render."""
    ep = episode(tok, "qwen2_5")
    ids = ep.prompt_ids()
    for text, obs in TURNS:
        odd = [i for ch in text for i in tok.encode(ch)] + [tok.eos_id]  # one char at a time
        assert odd != sample(tok, text)
        ids += odd + ep.observation_ids(text, obs)
    assert tok.decode(ids, skip_special=False) == ep.text


def test_tool_calls_stay_as_the_model_wrote_them(tok):
    """The model's turn enters the history as its text: rendering the same call from a parsed
    `tool_calls` field would rewrite it (here the key order and spacing)."""
    text = '<tool_call>\n{"arguments": {"expr":"12*7"}, "name": "calc"}\n</tool_call>'
    ep = episode(tok, "qwen2_5")
    ctx = ep.text
    ep.observation_ids(text, [{"role": "tool", "content": "84"}])
    assert ep.text.startswith(ctx + text + "<|im_end|>\n")
    parsed = {"role": "assistant", "content": "",
              "tool_calls": [{"function": {"name": "calc", "arguments": {"expr": "12*7"}}}]}
    rerendered = render(tok, "qwen2_5", PROMPT + [parsed], False)
    assert text not in rerendered
    assert '{"name": "calc", "arguments": {"expr": "12*7"}}' in rerendered


# ----------------------------------------------------------------------------- Qwen3


THINK = "<think>\nThe product first, then the sum.\n</think>\n\n"


def test_qwen3_drops_earlier_thinking_and_raises(tok):
    ep = episode(tok, "qwen3")
    ctx = ep.text
    # Inside one chain of tool calls, turns that think in Qwen's exact layout keep their
    # <think> block, so this observation goes through...
    ep.observation_ids(THINK + "First the product. " + call("12*7"),
                       [{"role": "tool", "content": "84"}])
    messages, text = ep.messages, ep.text
    # ...but after a new user message Qwen3 renders every earlier turn without its thinking: the
    # renders first differ where the first turn's <think> began.
    with pytest.raises(TemplateNotPrefixPreserving, match=(
            rf"'qwen3' .*: rendering the new messages changes the render of the history before "
            rf"them. They first differ at character {len(ctx)} ")):
        ep.observation_ids(THINK + "It is 84.", [{"role": "user", "content": "Why?"}])
    assert (ep.messages, ep.text) == (messages, text)  # left unchanged


@pytest.mark.parametrize("text,kwargs,offset,what", [
    # enable_thinking=False: the generation prompt's empty think block is dropped from the turn
    # once a tool result follows it.
    ("First " + call("12*7"), {"enable_thinking": False}, -len("<think>\n\n</think>\n\n"),
     "new messages"),
    # A turn that skipped thinking gets an empty think block the model never saw.
    ("First " + call("12*7"), {}, 0, "model's turn"),
    # Thinking in another layout is re-rendered in Qwen's.
    ("<think>12*7 first</think>" + call("12*7"), {}, len("<think>"), "model's turn"),
], ids=["enable_thinking_false", "no_thinking", "other_layout"])
def test_qwen3_rewrites_turns_without_canonical_thinking(tok, text, kwargs, offset, what):
    ep = episode(tok, "qwen3", **kwargs)
    with pytest.raises(TemplateNotPrefixPreserving,
                       match=rf"{what}.* first differ at character {len(ep.text) + offset} "):
        ep.observation_ids(text, [{"role": "tool", "content": "84"}])


@pytest.mark.parametrize("kwargs,turns", [
    ({}, [(THINK + call("12*7"), [{"role": "tool", "content": "84"}]),
          (THINK + "It is 84.", [{"role": "user", "content": "And plus 3?"}]),
          (THINK + call("84+3"), [{"role": "tool", "content": "87"}])]),
    ({"enable_thinking": False}, [(call("12*7"), [{"role": "tool", "content": "84"}]),
                                  ("It is 84.", [{"role": "user", "content": "And plus 3?"}]),
                                  (call("84+3"), [{"role": "tool", "content": "87"}])]),
    ({}, [("<think>12*7 first</think>" + call("12*7"), [{"role": "tool", "content": "84"}]),
          ("no thinking " + call("84+3") + call("1+1"),
           [{"role": "tool", "content": "87"}, {"role": "tool", "content": "2"}]),
          ("\n\n It is 87. ", [{"role": "user", "content": "Why?"}])]),
], ids=["thinking", "enable_thinking_false", "as_written"])
def test_qwen3_multiturn_is_prefix_preserving(tok, kwargs, turns):
    ep = episode(tok, "qwen3_multiturn", **kwargs)
    ids = ep.prompt_ids()
    messages = list(PROMPT)
    for text, obs in turns:
        ids += sample(tok, text) + ep.observation_ids(text, obs)
        messages += [{"role": "assistant", "content": text}, *obs]
        full = render(tok, "qwen3_multiturn", messages, True, **kwargs)
        assert ep.text == full and ids == tok.encode(full)
    assert all(text in ep.text for text, _ in turns)  # every turn as written, thinking included
    # On a single turn it is Qwen3 itself.
    assert ep.prompt_ids() == tok.encode(render(tok, "qwen3", PROMPT, True, **kwargs))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("messages,error,match", [
    ([], ValueError, "messages is empty"),
    ("What is 12 * 7?", TypeError, "must be a list of message dicts"),
    ([["user", "hi"]], TypeError, r"messages\[0\] is not a message dict"),
    ([{"role": "narrator", "content": "x"}], ValueError, r"messages\[0\] has role 'narrator'"),
    ([{"role": "user", "content": None}], ValueError, r"messages\[0\] \(user\) needs string"),
    ([{"role": "tool", "content": "84"}], ValueError, "message 0 is a tool result but follows "
                                                      "'nothing'"),
    (PROMPT + [{"role": "assistant", "content": "84"}], ValueError, "end with an assistant turn"),
])
def test_malformed_prompts_raise(tok, messages, error, match):
    with pytest.raises(error, match=match):
        episode(tok, "qwen2_5", messages=messages)


@pytest.mark.parametrize("text,obs,match", [
    (call("12*7"), [], "new_messages is empty"),
    (call("12*7"), [{"role": "assistant", "content": "84"}], r"new_messages\[0\] has role "
                                                              "'assistant'"),
    (call("12*7"), [{"role": "user", "content": "hm"}, {"role": "tool", "content": "84"}],
     "is a tool result but follows 'user'"),
    (call("12*7") + "<|im_end|>", [{"role": "tool", "content": "84"}],
     "assistant_text holds the EOS token"),
])
def test_malformed_observations_raise_and_leave_the_episode(tok, text, obs, match):
    ep = episode(tok, "qwen2_5")
    messages, ctx = ep.messages, ep.text
    with pytest.raises(ValueError, match=match):
        ep.observation_ids(text, obs)
    assert (ep.messages, ep.text) == (messages, ctx)


def test_a_template_not_closing_turns_with_the_eos_raises(tok):
    """A tokenizer whose EOS (<|endoftext|>) is not what the template ends a turn with
    (<|im_end|>): the model's sampled EOS cannot be continued from."""
    other = HFTokenizer(tok._tok, {"eos_token": "<|endoftext|>"},
                        chat_template=load_template("qwen2_5"))
    ep = ChatEpisode(other, PROMPT, TOOLS)
    with pytest.raises(TemplateNotPrefixPreserving, match=(
            # (after the text, both tokens begin with '<|')
            rf"'qwen2_5' .*model's turn.* character {len(ep.text) + len(call('1')) + 2} ")):
        ep.observation_ids(call("1"), [{"role": "tool", "content": "1"}])


def test_an_eos_token_that_eats_whitespace_is_refused(tok):
    """If the EOS token strips the whitespace after it, the delta cannot be tokenized alone."""
    spec = json.loads(tok._tok.to_str())
    for added in spec["added_tokens"]:
        added["rstrip"] = added["content"] == "<|im_end|>"
    eating = HFTokenizer(Tokenizer.from_str(json.dumps(spec)), {"eos_token": "<|im_end|>"},
                         chat_template=load_template("qwen2_5"))
    ep = ChatEpisode(eating, PROMPT, TOOLS)
    with pytest.raises(ValueError, match="tokenizes differently behind it"):
        ep.observation_ids(call("1"), [{"role": "tool", "content": "1"}])
