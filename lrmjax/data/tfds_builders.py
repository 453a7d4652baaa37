"""TFDS builders that turn prompt sources into array_record files (no TensorFlow needed).

Every builder writes one `train` split of unified records

    {prompt: str, answer: str, metadata: str (JSON), source: str, row_index: int64}

in the array_record format, read back with `builder.as_data_source()` (random access, which
grain needs). `tfds.core.GeneratorBasedBuilder` with `file_format='array_record'` builds and
reads in tensorflow-datasets 4.9.10 without TensorFlow installed. Records keep the input's row
order (`disable_shuffling=True`).

Sources:
  * GSM8K-format JSONL: {"question", "answer": "...reasoning...\\n#### 42"}; answer = text after
    the last '####' with thousands commas removed.
  * MATH-format JSONL: {"problem", "solution" with \\boxed{...}, "level", "type"}; answer = the
    content of the last \\boxed{} (nested braces handled).
  * code JSONL: {"prompt", "tests": [...], "compare"?, "float_tol"?, "setup"?}; the tests are
    either assertion strings `assert f(<literals>) == <literal>` (checked at load with the
    code reward's own ast parser, nothing run) or standard-input cases {"input", "output"}
    (APPS/TACO/LiveCodeBench style). answer = ""; metadata = tests and the optional keys, as
    the `code` reward (`lrmjax.rewards.code`) reads them.
  * a procedural task: `n` examples of `lrmjax.data.tasks.get_task(task, **task_kwargs)` from
    `np.random.default_rng(seed)`.

Bad JSONL rows (bytes that are not UTF-8, invalid JSON, a missing or non-string field, no final
answer, code tests of a shape the code reward does not accept) are skipped, logged with the
file and their row number (0-based line index; the 1-based line number too) and counted in
`builder.info.metadata` ({'num_rows', 'skipped', 'skipped_rows': [[row, reason], ...]}); a
file with no good row raises a ValueError naming it. Each config's name carries a hash of the
file contents (or of the task settings), so editing a file builds a new version instead of
reading a stale one.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from lrmjax.data.tasks import get_task
from lrmjax.rewards.sandbox_verdict import COMPARE_MODES, parse_test

log = logging.getLogger(__name__)

SPLIT = "train"
# How many skipped rows keep their reason in the stored stats (all are counted).
_MAX_LISTED_SKIPS = 1000


class BadRow(ValueError):
    """A JSONL row that cannot become a prompt; the message says why."""


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`) in `text`, braces matched; also the
    brace-less `\boxed 5` form. None if there is none or its braces do not close."""
    starts = [m for m in re.finditer(r"\\(?:boxed|fbox)(?:\s*(\{)|\s+)", text)]
    if not starts:
        return None
    m = starts[-1]
    if m.group(1) is None:  # `\boxed 5`: the answer runs to the next space or '$'.
        tail = re.match(r"[^\s$]+", text[m.end():])
        return tail.group(0) if tail else None
    depth = 1
    for i in range(m.end(), len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i - 1] == "\\" and text[i] in "{}":  # `\{` and `\}` are literal braces.
            depth -= {"{": 1, "}": -1}[text[i]]
        if depth == 0:
            return text[m.end():i]
    return None


def _string_field(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadRow(f"missing {key!r}")
    if not isinstance(value, str):
        raise BadRow(f"{key!r} is {type(value).__name__}, not str")
    if not value.strip():
        raise BadRow(f"{key!r} is empty")
    return value


def parse_gsm8k(row: dict) -> tuple[str, str, dict[str, Any]]:
    """GSM8K row -> (prompt, answer, metadata). Raises BadRow."""
    question = _string_field(row, "question")
    full = _string_field(row, "answer")
    if "####" not in full:
        raise BadRow("'answer' has no '#### <final answer>'")
    reasoning, final = full.rsplit("####", 1)
    final = final.strip().replace(",", "")
    if not final:
        raise BadRow("'answer' has nothing after '####'")
    return question.strip(), final, {"solution": reasoning.strip()}


def parse_math(row: dict) -> tuple[str, str, dict[str, Any]]:
    """MATH row -> (prompt, answer, metadata with solution, level, type). Raises BadRow."""
    problem = _string_field(row, "problem")
    solution = _string_field(row, "solution")
    answer = last_boxed(solution)
    if answer is None or not answer.strip():
        raise BadRow("'solution' has no complete \\boxed{...}")
    meta = {"solution": solution}
    for key in ("level", "type"):
        if key in row:
            if not isinstance(row[key], str):
                raise BadRow(f"{key!r} is {type(row[key]).__name__}, not str")
            meta[key] = row[key]
    return problem.strip(), answer.strip(), meta


def _io_case(test: object) -> bool:
    return (isinstance(test, dict) and set(test) == {"input", "output"}
            and all(isinstance(v, str) for v in test.values()))


def parse_code(row: dict) -> tuple[str, str, dict[str, Any]]:
    """Code row -> (prompt, "", metadata with tests and any of compare, float_tol, setup).

    Each assertion test must parse with the sandbox's own parser (`parse_test`: the shape the
    `code` reward accepts); nothing runs here. Raises BadRow.
    """
    prompt = _string_field(row, "prompt")
    tests = row.get("tests")
    if tests is None:
        raise BadRow("missing 'tests'")
    if not isinstance(tests, list) or not tests:
        raise BadRow(f"'tests' must be a non-empty list, got {tests!r:.60}")
    if not all(_io_case(t) for t in tests):
        if not all(isinstance(t, str) for t in tests):
            raise BadRow("'tests' must be all assertion strings or all {'input': str, "
                         "'output': str} cases")
        for i, test in enumerate(tests):
            try:
                parse_test(test)
            except ValueError as e:
                raise BadRow(f"'tests'[{i}]: {e}") from None
    meta: dict[str, Any] = {"tests": tests}
    if "compare" in row:
        if row["compare"] not in COMPARE_MODES:
            raise BadRow(f"'compare' must be one of {COMPARE_MODES}, got {row['compare']!r}")
        meta["compare"] = row["compare"]
    if "float_tol" in row:
        tol = row["float_tol"]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (
                math.isfinite(tol) and tol >= 0):
            raise BadRow(f"'float_tol' must be a non-negative number, got {tol!r}")
        meta["float_tol"] = tol
    if "setup" in row:
        if not isinstance(row["setup"], str):
            raise BadRow(f"'setup' is {type(row['setup']).__name__}, not str")
        meta["setup"] = row["setup"]
    for key in ("tests", "setup"):
        if key in meta:  # tests and setup reach the sandbox as UTF-8 text
            _encodable(json.dumps(meta[key], ensure_ascii=False), key)
    return prompt.strip(), "", meta


PARSERS: dict[str, Callable[[dict], tuple[str, str, dict[str, Any]]]] = {
    "gsm8k": parse_gsm8k,
    "math": parse_math,
    "code": parse_code,
}


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRow(f"not UTF-8: byte {raw[e.start:e.start + 1]!r} at offset {e.start} "
                     f"({e.reason})") from None


def _encodable(text: str, key: str) -> None:
    """Raises BadRow for text the UTF-8 records cannot hold (a lone surrogate from a JSON
    escape such as "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRow(f"{key!r} has {text[e.start:e.end]!r}, not encodable as UTF-8") from None


def read_jsonl(path: str, fmt: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Parses a JSONL file into unified records, skipping bad rows.

    Returns:
      records: dicts with prompt, answer, metadata (JSON str), source, row_index.
      stats: {'num_rows': kept, 'skipped': count, 'skipped_rows': [[row, reason], ...]}.

    Raises:
      ValueError: unknown `fmt`, or no row of the file is usable (naming the file).
    """
    if fmt not in PARSERS:
        raise ValueError(f"unknown JSONL format {fmt!r}; valid: {sorted(PARSERS)}")
    parse = PARSERS[fmt]
    source = f"{fmt}:{epath.Path(path).stem}"
    records, skipped = [], []
    # Rows are the '\n'-separated lines (JSON Lines), each decoded on its own: a byte that is
    # not UTF-8 costs its row, not the file. (str.splitlines would also cut a row at the
    # \u2028, \x85 or \x0c a JSON string may hold unescaped.)
    lines = epath.Path(path).read_bytes().split(b"\n")
    lines[0] = lines[0].removeprefix(codecs.BOM_UTF8)
    for row_index, raw in enumerate(lines):
        if not raw.strip():
            continue  # Blank lines (e.g. a trailing newline) are not rows.
        try:
            row = json.loads(_decode(raw))
            if not isinstance(row, dict):
                raise BadRow(f"row is a JSON {type(row).__name__}, not an object")
            prompt, answer, meta = parse(row)
            for key, text in (("prompt", prompt), ("answer", answer)):
                _encodable(text, key)
        except (json.JSONDecodeError, BadRow) as e:
            reason = f"invalid JSON: {e}" if isinstance(e, json.JSONDecodeError) else str(e)
            log.warning("%s: skipping row %d (line %d): %s", path, row_index, row_index + 1,
                        reason)
            skipped.append([row_index, reason])
            continue
        meta["uid"] = f"{source}:{row_index}"
        records.append({"prompt": prompt, "answer": answer, "metadata": json.dumps(meta),
                        "source": source, "row_index": row_index})
    if not records:
        raise ValueError(f"{path}: no usable {fmt} row ({len(skipped)} skipped, e.g. "
                         f"{skipped[:3]})")
    if skipped:
        log.warning("%s: skipped %d of %d rows", path, len(skipped), len(skipped) + len(records))
    stats = {"num_rows": len(records), "skipped": len(skipped),
             "skipped_rows": skipped[:_MAX_LISTED_SKIPS]}
    return records, stats


def task_records(task: str, task_kwargs: dict[str, Any], n: int, seed: int
                 ) -> list[dict[str, Any]]:
    """`n` unified records of a procedural task, deterministic in `seed`."""
    examples = get_task(task, **task_kwargs).sample(np.random.default_rng(seed), n)
    source = f"task:{task}"
    records = []
    for i, ex in enumerate(examples):
        meta = {**ex.metadata, "uid": f"{source}:{seed}:{i}"}
        try:
            meta_json = json.dumps(meta)
        except TypeError as e:
            raise ValueError(f"task {task!r} made metadata that is not JSON: {e}") from e
        records.append({"prompt": ex.prompt, "answer": ex.answer, "metadata": meta_json,
                        "source": source, "row_index": i})
    return records


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "prompt": tfds.features.Text(), "answer": tfds.features.Text(),
        "metadata": tfds.features.Text(), "source": tfds.features.Text(),
        "row_index": np.int64,
    })


def _config_name(label: str, payload: bytes) -> str:
    """A valid TFDS config name: sanitized label + content hash."""
    clean = re.sub(r"[^a-z0-9_]", "_", label.lower()).strip("_") or "data"
    return f"{clean[:40]}_{hashlib.sha1(payload).hexdigest()[:12]}"


@dataclasses.dataclass
class JsonlConfig(tfds.core.BuilderConfig):
    path: str = ""
    fmt: str = "gsm8k"


@dataclasses.dataclass
class TaskConfig(tfds.core.BuilderConfig):
    task: str = ""
    task_kwargs: dict = dataclasses.field(default_factory=dict)
    n: int = 0
    seed: int = 0


class LrmjaxJsonlPrompts(tfds.core.GeneratorBasedBuilder):
    """Prompts from a local GSM8K-, MATH- or code-format JSONL file."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(), disable_shuffling=True,
                                     metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        # Parse everything before writing anything, so an all-bad file fails cleanly.
        records, stats = read_jsonl(self.builder_config.path, self.builder_config.fmt)
        self.info.metadata.update(stats)
        return {SPLIT: self._generate_examples(records)}

    def _generate_examples(self, records):
        for record in records:
            yield record["row_index"], record


class LrmjaxTaskPrompts(tfds.core.GeneratorBasedBuilder):
    """`n` prompts of a procedural task, generated from a seed."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(), disable_shuffling=True,
                                     metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        c = self.builder_config
        records = task_records(c.task, c.task_kwargs, c.n, c.seed)
        self.info.metadata.update({"num_rows": len(records), "skipped": 0, "skipped_rows": []})
        return {SPLIT: self._generate_examples(records)}

    def _generate_examples(self, records):
        for record in records:
            yield record["row_index"], record


def jsonl_builder(path: str, fmt: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The (prepared) builder for a JSONL file; builds it on first use."""
    if fmt not in PARSERS:
        raise ValueError(f"unknown JSONL format {fmt!r}; valid: {sorted(PARSERS)}")
    p = epath.Path(path)
    if not p.exists():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    name = _config_name(f"{fmt}_{p.stem}", fmt.encode() + b"\0" + p.read_bytes())
    builder = LrmjaxJsonlPrompts(config=JsonlConfig(name=name, path=str(p), fmt=fmt),
                                 data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder


def task_builder(task: str, n: int, seed: int, data_dir: str,
                 task_kwargs: dict[str, Any] | None = None) -> tfds.core.DatasetBuilder:
    """The (prepared) builder for `n` examples of a procedural task from `seed`."""
    task_kwargs = dict(task_kwargs or {})
    if n < 1:
        raise ValueError(f"task dataset needs n >= 1, got {n}")
    get_task(task, **task_kwargs)  # Validate name and kwargs before naming anything.
    settings = json.dumps({"task": task, "kwargs": task_kwargs, "n": n, "seed": seed},
                          sort_keys=True)
    name = _config_name(f"{task}_{n}", settings.encode())
    config = TaskConfig(name=name, task=task, task_kwargs=task_kwargs, n=n, seed=seed)
    builder = LrmjaxTaskPrompts(config=config, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder
