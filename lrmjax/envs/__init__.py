"""Environments and tools for multi-turn episodes.

`make_env(name, **kwargs)` builds a registered environment (`base.register_env`); importing
this package registers the shipped ones: `tools` (tool use until an answer) and
`guess_number` (higher/lower replies).
"""

from __future__ import annotations

from typing import Any

from lrmjax.envs import guess, tool_env  # noqa: F401 - registers the shipped environments
from lrmjax.envs.base import ENVIRONMENTS, Environment


def make_env(name: str, **kwargs: Any) -> Environment:
    """A fresh environment `name` built with `kwargs`; ValueError naming the registered
    ones, or the bad arguments."""
    if name not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; registered: {sorted(ENVIRONMENTS)}")
    try:
        return ENVIRONMENTS[name](**kwargs)
    except TypeError as e:
        raise ValueError(f"environment {name!r}: bad arguments {kwargs}: {e}") from e
