"""Where `calc_tool_grpo`'s episodes go wrong: each held-out transcript sorted by its first
departure from the demonstrated episode.

    python experiments/evaluate_checkpoint.py --config configs/calc_tool_grpo.py --workdir W \
        --set eval.k=0 --transcripts greedy.jsonl [--warm-start]
    python experiments/calc_tool_failures.py greedy.jsonl

A problem "a*b*c=" is solved by calling `<calculator>a*b</calculator>`, then
`<calculator>(a*b)*c</calculator>` and answering the last result. Every operand of a call is
either copied from the prompt or copied from the previous call's result, so a failure is the
first of these that went wrong:

  no_call               answered without calling the calculator
  malformed_call        a call the calculator rejected (an `=error...` result)
  operand_from_prompt   a call's operand miscopied from the prompt
  operand_from_result   a call's first operand is not the previous call's result
  too_few_calls         answered before the last call
  extra_call            called again after the last needed call
  answer_from_result    every call right, the answer is not the last result
  unfinished            no answer line (the episode ran out of tokens or turns)
  other                 anything else (e.g. the demonstrated episode, scored 0)

Prints the counts, the solved share per number of factors, every copy's misses by the copied
number's length (`copies`), and a few examples of each failure. The lengths show what RL can
and cannot reach: a kind of copy a warm start misses at every length it is tried on (seed 3's
answers of 4-digit results: 29 of 29) fails in all of a prompt's sampled episodes too, so its
groups carry no gradient.
"""

from __future__ import annotations

import argparse
import collections
import json
import re

CALL = re.compile(r"<calculator>(.*?)</calculator>(=[^\n]*)\n")
# Special tokens a transcript keeps (`evaluate_checkpoint.py` decodes them).
SPECIAL = re.compile(r"<(eos|bos|pad)>")

CATEGORIES = ("solved", "no_call", "malformed_call", "operand_from_prompt",
              "operand_from_result", "too_few_calls", "extra_call", "answer_from_result",
              "unfinished", "other")


def classify(prompt: str, transcript: str, score: float) -> str:
    """The category (one of CATEGORIES) of one episode; `prompt` is "a*b[*c]=" and
    `transcript` the episode after it, tool results included."""
    if score > 0.5:
        return "solved"
    factors = prompt.rstrip("=").split("*")
    calls = CALL.findall(transcript)
    if not calls:
        return "no_call"
    expected, value = [], int(factors[0])
    for f in factors[1:]:
        expected.append((str(value), f))
        value *= int(f)
    previous = None
    for i, (call, result) in enumerate(calls):
        if i >= len(expected):
            return "extra_call"
        left, star, right = call.partition("*")
        want_left, want_right = expected[i]
        if not star or not left.isdigit() or not right.isdigit():
            return "malformed_call" if result.startswith("=error") else "other"
        if left != want_left:
            # The first call's left operand comes from the prompt, a later call's from the
            # previous result; a later call that copied the prompt's first factor is still a
            # result miscopied.
            return "operand_from_prompt" if i == 0 else "operand_from_result"
        if right != want_right:
            return "operand_from_prompt"
        if result.startswith("=error"):
            return "malformed_call"
        previous = result[1:].rstrip(" ")  # results may be padded (`result_width`)
    if len(calls) < len(expected):
        return "too_few_calls"
    answer = SPECIAL.sub("", CALL.split(transcript)[-1]).strip().split("\n")[-1]
    if not answer:
        return "unfinished"
    if answer != previous:
        return "answer_from_result"
    return "other"


def copies(prompt: str, transcript: str) -> list[tuple[str, int, bool]]:
    """Every number the episode copied, as (kind, digits of the source, copied right), judged
    against what is on the page (a call after a wrong result should copy that result):
    "prompt" for a call's operand taken from the prompt (the first call's two, a later call's
    right one), "result" for a later call's left operand (the previous call's result), "answer"
    for the answer line (the last call's result). Copies a malformed call or a missing answer
    leaves unjudged are not listed."""
    factors = prompt.rstrip("=").split("*")
    calls = CALL.findall(transcript)
    out, previous = [], None
    for i, (call, result) in enumerate(calls[:len(factors) - 1]):
        left, star, right = call.partition("*")
        if not star:
            break
        if i == 0:
            out.append(("prompt", len(factors[0]), left == factors[0]))
        elif previous is not None:
            out.append(("result", len(previous), left == previous))
        out.append(("prompt", len(factors[i + 1]), right == factors[i + 1]))
        value = result[1:].rstrip(" ")  # results may be padded (`result_width`)
        previous = value if value.isdigit() else None
    answer = SPECIAL.sub("", CALL.split(transcript)[-1]).strip().split("\n")[-1]
    if calls and previous is not None and answer:
        out.append(("answer", len(previous), answer == previous))
    return out


def copy_misses(rows: list[dict]) -> dict[str, dict[int, tuple[int, int]]]:
    """{kind: {digits: (missed, total)}} over `copies` of every row."""
    table: dict = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for row in rows:
        for kind, digits, right in copies(row["prompt"], row["transcript"]):
            table[kind][digits][0] += not right
            table[kind][digits][1] += 1
    return {kind: {d: (v[0], v[1]) for d, v in sorted(table[kind].items())}
            for kind in ("prompt", "result", "answer") if kind in table}


def summarize(rows: list[dict]) -> tuple[collections.Counter, dict[int, tuple[int, int]],
                                         dict[str, list[dict]]]:
    """(count per category, {number of factors: (solved, total)}, examples per category)."""
    counts: collections.Counter = collections.Counter()
    by_factors: dict[int, list[int]] = collections.defaultdict(lambda: [0, 0])
    examples: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        category = classify(row["prompt"], row["transcript"], row["score"])
        counts[category] += 1
        k = row["prompt"].count("*") + 1
        by_factors[k][0] += category == "solved"
        by_factors[k][1] += 1
        examples[category].append(row)
    return counts, {k: (v[0], v[1]) for k, v in sorted(by_factors.items())}, examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("transcripts", help="evaluate_checkpoint.py --transcripts output")
    p.add_argument("--examples", type=int, default=2, help="examples shown per failure")
    args = p.parse_args()
    with open(args.transcripts) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    counts, by_factors, examples = summarize(rows)
    print(f"{len(rows)} episodes")
    for category in CATEGORIES:
        if counts[category]:
            print(f"  {category:20s} {counts[category]:5d}  {counts[category] / len(rows):.3f}")
    for k, (solved, total) in by_factors.items():
        print(f"  {k} factors: {solved}/{total} solved")
    print("copies missed by the copied number's digits (missed/total):")
    for kind, by_digits in copy_misses(rows).items():
        cells = "  ".join(f"{d}: {m}/{t}" for d, (m, t) in by_digits.items())
        print(f"  {kind:7s} {cells}")
    for category in CATEGORIES[1:]:
        for row in examples[category][:args.examples]:
            print(f"{category}: {row['prompt']}{row['transcript']!r}")


if __name__ == "__main__":
    main()
