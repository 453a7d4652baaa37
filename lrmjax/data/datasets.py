"""Prompt datasets: TFDS array_record sources read through grain, batched into `Example`s.

    source = make_source("gsm8k_jsonl", path="train.jsonl", data_dir=workdir + "/tfds")
    data = PromptDataset(source, batch_size=32, seed=0, shard_index=host, shard_count=hosts)
    it = iter(data)
    batch = next(it)              # list[Example]; the trainer tokenizes
    state = it.get_state()        # JSON-serializable; save it in the checkpoint
    it = iter(data); it.set_state(state)   # continues exactly where it left off

Order: the source is shuffled with `seed` (a new permutation every epoch) and cut into global
batches of `batch_size * shard_count` rows; host `shard_index` takes the shard_index-th block
of each (a last partial batch is split as evenly as possible). The hosts' batches of a step
are thus exactly the batch one host would read with `batch_size * shard_count`, every host's
iterator is at the same position, and the epochs repeat `num_epochs` times (None: forever).
Per-prompt curricula and online procedural streams live in `lrmjax.data.curriculum`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from lrmjax.data import tfds_builders
from lrmjax.data.tasks import Example

DEFAULT_DATA_DIR = os.path.join("~", ".cache", "lrmjax", "tfds")


class PromptSource:
    """Random-access prompts (grain's data-source protocol: `len`, `[i] -> Example`).

    `metadata` of each example is the stored JSON plus `source`, `row_index` and `uid`.
    `stats` holds the build statistics: num_rows, skipped, skipped_rows ([[row, reason]]).
    """

    def __init__(self, builder: tfds.core.DatasetBuilder):
        self.builder = builder
        self._records = builder.as_data_source()[tfds_builders.SPLIT]
        self.stats: dict[str, Any] = dict(builder.info.metadata)
        self.name = builder.builder_config.name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Example:
        record = self._records[index]
        meta = json.loads(record["metadata"])
        source = record["source"].decode("utf-8")
        row_index = int(record["row_index"])
        meta.update(source=source, row_index=row_index)
        meta.setdefault("uid", f"{source}:{row_index}")
        return Example(prompt=record["prompt"].decode("utf-8"),
                       answer=record["answer"].decode("utf-8"), metadata=meta)

    def __repr__(self) -> str:
        return f"PromptSource({self.name!r}, {len(self)} rows, skipped={self.stats.get('skipped')})"


class SubsetSource:
    """Rows `indices` of a random-access source, in that order (grain's data-source protocol),
    e.g. a source without its over-long prompts. `name` is what a `PromptDataset`'s
    fingerprint records, so name the subset (a data position saved over one subset is then
    not restored into another); `stats` are the source's build statistics."""

    def __init__(self, source: Any, indices: Sequence[int], name: str):
        self.source = source
        self.name = name
        self.stats: dict[str, Any] = dict(getattr(source, "stats", {}))
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> Example:
        return self.source[int(self._indices[index])]

    def __repr__(self) -> str:
        return f"SubsetSource({self.name!r}, {len(self)} of {len(self.source)} rows)"


def _gsm8k(data_dir: str, path: str) -> tfds.core.DatasetBuilder:
    return tfds_builders.jsonl_builder(path, "gsm8k", data_dir)


def _math(data_dir: str, path: str) -> tfds.core.DatasetBuilder:
    return tfds_builders.jsonl_builder(path, "math", data_dir)


def _code(data_dir: str, path: str) -> tfds.core.DatasetBuilder:
    return tfds_builders.jsonl_builder(path, "code", data_dir)


def _task(data_dir: str, task: str, n: int, seed: int = 0,
          task_kwargs: dict[str, Any] | None = None) -> tfds.core.DatasetBuilder:
    return tfds_builders.task_builder(task, n, seed, data_dir, task_kwargs)


SOURCES: dict[str, Callable[..., tfds.core.DatasetBuilder]] = {
    "gsm8k_jsonl": _gsm8k,   # path=
    "math_jsonl": _math,     # path=
    "code_jsonl": _code,     # path=
    "task": _task,           # task=, n=, seed=, task_kwargs=
}


def make_source(kind: str, data_dir: str | None = None, **kwargs: Any) -> PromptSource:
    """Builds (once; later calls reuse the files) and opens a prompt source.

    Args:
      kind: 'gsm8k_jsonl' (path=), 'math_jsonl' (path=), 'code_jsonl' (path=; rows scored by
        the `code` reward) or 'task' (task=, n=, seed=, task_kwargs=).
      data_dir: where TFDS writes array_record files (default ~/.cache/lrmjax/tfds).
    """
    if kind not in SOURCES:
        raise ValueError(f"unknown source kind {kind!r}; valid: {sorted(SOURCES)}")
    data_dir = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
    return PromptSource(SOURCES[kind](data_dir, **kwargs))


def split_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Splits `total` items in proportion to `weights` (largest remainders): the counts sum
    to exactly `total`, and each is within one of total x weight / sum(weights). Ties in
    the remainder go to the earlier entry."""
    if total < 0 or not weights or any(not w > 0 for w in weights):
        raise ValueError(f"split_counts needs total >= 0 and positive weights, got {total}, "
                         f"{list(weights)}")
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


class EpochShuffle(grain.MapDataset):
    """grain's global shuffle (`MapDataset.shuffle`: element i of epoch e is element
    perm_e[i] of the parent, a new permutation every epoch), with each epoch's permutation
    drawn once by numpy (`default_rng([seed, e])`) instead of grain's per-index
    `index_shuffle`, which costs a Python-level call per element (a real share of a
    512-prompt RL step). Holds the permutations of the last two epochs read."""

    def __init__(self, parent: grain.MapDataset, *, seed: int):
        super().__init__(parent)
        self._seed = int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed})"

    def _index(self, index: int) -> int:
        length = len(self._parent)
        epoch, within = divmod(index, length)
        if epoch not in self._perms:
            if len(self._perms) >= 2:
                del self._perms[min(self._perms)]
            self._perms[epoch] = np.random.default_rng([self._seed, epoch]).permutation(length)
        return epoch * length + int(self._perms[epoch][within])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._index(index)]


def _host_block(batch: list, index: int, count: int) -> list:
    """Host `index`'s block of a global batch (np.array_split sizes for a partial batch)."""
    per, extra = divmod(len(batch), count)
    start = index * per + min(index, extra)
    return batch[start:start + per + (index < extra)]


def shard_indices(num_examples: int, shard_index: int, shard_count: int) -> range:
    """Rows of one host's shard: equal-size strided slices (the last len % count rows dropped).

    Raises ValueError for a bad shard spec or a shard that would be empty."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    per_shard = num_examples // shard_count
    if per_shard == 0:
        raise ValueError(f"{num_examples} examples cannot fill {shard_count} shards")
    return range(shard_index, per_shard * shard_count, shard_count)


class PromptIterator:
    """Iterator over `list[Example]` batches with JSON-serializable `get_state`/`set_state`."""

    def __init__(self, dataset: PromptDataset):
        self._dataset = dataset
        read = grain.ReadOptions(num_threads=dataset.read_threads,
                                 prefetch_buffer_size=dataset.read_threads * 4)
        self._it = dataset.grain_dataset.to_iter_dataset(read).__iter__()

    def __iter__(self) -> PromptIterator:
        return self

    def __next__(self) -> list[Example]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        """{'position': grain's state, 'fingerprint': the settings it is valid for}."""
        return {"position": self._it.get_state(), "fingerprint": self._dataset.fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a position from `get_state`. Raises ValueError if it was saved by a dataset
        with other settings (source, size, batch size, seed, shuffle, sharding)."""
        expected = self._dataset.fingerprint
        saved = state.get("fingerprint")
        if saved != expected:
            diff = {k: (saved.get(k) if isinstance(saved, dict) else None, v)
                    for k, v in expected.items()
                    if not isinstance(saved, dict) or saved.get(k) != v}
            raise ValueError(f"data state was saved with other settings (saved, now): {diff}")
        self._it.set_state(state["position"])


class PromptDataset:
    """Batches of prompts from a `PromptSource` via grain, shuffled, repeated and sharded.

    Args:
      source: any random-access source of `Example`s (a `PromptSource`, or a list).
      batch_size: examples per batch (per host).
      seed: shuffle seed; each epoch draws a new permutation from it.
      shuffle: False keeps source order (e.g. for evaluation).
      shard_index, shard_count: this host's shard (see `shard_indices`).
      num_epochs: passes over the shard; None repeats forever.
      drop_remainder: drop each epoch's last partial batch (default True: RL batches keep a
        static shape); set False for evaluation to see every example once.
      read_threads: grain reader threads (0 reads in the calling thread).
    """

    def __init__(self, source: Any, batch_size: int, seed: int = 0, shuffle: bool = True,
                 shard_index: int = 0, shard_count: int = 1, num_epochs: int | None = None,
                 drop_remainder: bool = True, read_threads: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
        shard_indices(len(source), shard_index, shard_count)  # validates the shard spec
        global_batch = batch_size * shard_count
        if drop_remainder and len(source) < global_batch:
            raise ValueError(f"{len(source)} examples cannot fill one batch of {batch_size} x "
                             f"{shard_count} hosts with drop_remainder=True")
        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = EpochShuffle(ds, seed=seed)
        ds = ds.batch(global_batch, drop_remainder=drop_remainder, batch_fn=list)
        if shard_count > 1:
            ds = ds.map(functools.partial(_host_block, index=shard_index, count=shard_count))
        self.grain_dataset = ds.repeat(num_epochs)
        self.read_threads = read_threads
        self.fingerprint = {
            "source": getattr(source, "name", type(source).__name__),
            "num_examples": len(source), "batch_size": batch_size, "seed": seed,
            "shuffle": shuffle, "shard_index": shard_index, "shard_count": shard_count,
            "num_epochs": num_epochs, "drop_remainder": drop_remainder,
        }

    def __iter__(self) -> Iterator[list[Example]]:
        return PromptIterator(self)

    def __len__(self) -> int:
        """Batches in all epochs (raises for an endless dataset)."""
        if self.fingerprint["num_epochs"] is None:
            raise TypeError("an endlessly repeating PromptDataset has no length")
        return len(self.grain_dataset)
